"""Social media sources: public APIs polled in their documented request/response shapes.

* :mod:`finsent.ingest.social.mastodon` -- hashtag timelines (``GET /api/v1/timelines/tag/:hashtag``)
* :mod:`finsent.ingest.social.reddit` -- subreddit listings (``/r/<sub>/new.json``)
"""
