"""finsent ingesters: everything that turns outside text into ``RawItem`` records on Kafka.

Library API (used by the demo and benchmarks)::

    from finsent.ingest.replay import iter_file_items, replay     # CSV/JSONL -> RawItems (stable ids)
    from finsent.ingest.publisher import Publisher, PublishError  # acked publishing to settings.kafka.topic_raw
    from finsent.ingest.pipeline import Pipeline                  # normalise -> dedup -> publish -> mark
    from finsent.ingest.normalize import make_item                # the one normaliser every source uses

Sources: file replay (CSV/JSONL), RSS/Atom feeds, Mastodon, Reddit, Bluesky and the HTTP push endpoint.

Command line: ``finsent ingest {replay,rss,mastodon,reddit,bluesky,http} --help``.
"""
