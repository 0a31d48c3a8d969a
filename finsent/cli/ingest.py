"""``finsent ingest ...``: replay files, poll RSS/Atom feeds and social APIs, accept HTTP pushes.

Every subcommand goes through the same pipeline (normalise -> dedup -> publish with acks ->
mark), writes logs to stderr and, with ``--dry-run``, prints the normalised items as JSON lines
on stdout instead of publishing. Exit status: 0 when at least one source succeeded, 1 when all
failed, 2 on bad arguments, 4 on a file that cannot be replayed, 6 when Kafka did not
acknowledge within ``--publish-timeout`` (``FINSENT_PUBLISH_TIMEOUT_S``; what was acknowledged
before stays published and is what ``produced`` counts; the rest is not marked as seen).
A long-running poller does not exit on a failed publish: that poll fails and is retried.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path
from typing import Any

from finsent.cli.tree import Leaf, Subcommands
from finsent.core.argtypes import port, positive_float, positive_int
from finsent.core.errors import ConfigError, InputError, Interrupted
from finsent.core.settings import Settings
from finsent.ingest.publisher import PublishError

log = logging.getLogger("ingest")

EPILOG_COMMON = """\
dedup: items already published (same canonical URL, source GUID or id) are dropped; the state
lives in FINSENT_INGEST_STATE_DIR and is written only after the broker acknowledged the item.
--dry-run prints normalised items as JSON lines on stdout and publishes nothing.
"""

EPILOG_SERVICE = """\
health: with --metrics-port, GET /healthz answers 200 while the process runs, and GET /readyz
answers 200 when ready: the Kafka producer's last contact succeeded (it connected and fetched
metadata, or its last publish was acknowledged) and the service is not stopping; else 503 with
the reason. A dry run is always ready.
SIGTERM/SIGINT: no new work starts, the publish in flight gets 5 s to be acknowledged, what is
not is handed back (not counted as produced, not marked as seen: sent again next run), all
within 10 s in every state, the broker gone included. SIGTERM (a service manager) exits 0;
Ctrl-C (SIGINT) exits 130 with one line saying what was published and how to go on.

"""


def _add_publish_timeout(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--publish-timeout",
        type=positive_float,
        metavar="SECONDS",
        help=f"seconds to wait for Kafka to acknowledge before {what} (default FINSENT_PUBLISH_TIMEOUT_S, 30)",
    )


def _add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print normalised items as JSON lines; publish nothing")


def _add_common(p: argparse.ArgumentParser, *, polling: bool) -> None:
    _add_dry_run(p)
    _add_publish_timeout(p, "that poll fails and is retried later; with --once, exit status 6")
    if polling:
        p.add_argument("--once", action="store_true", help="poll every source once, publish, and exit")
        p.add_argument(
            "--interval",
            type=positive_float,
            metavar="S",
            help="seconds between polls of a source (FINSENT_INGEST_INTERVAL_S)",
        )
        p.add_argument("--metrics-port", type=port, metavar="PORT", help="serve Prometheus /metrics on this port")


def publish_timeout(args: argparse.Namespace, settings: Settings) -> float:
    """``--publish-timeout`` when given, else ``settings.ingest.publish_timeout_s``."""
    return getattr(args, "publish_timeout", None) or settings.ingest.publish_timeout_s


def build_pipeline(
    settings: Settings, *, dry_run: bool, use_dedup: bool = True, publish_timeout_s: float | None = None
):
    """(pipeline, publisher or None): the dedup state is persisted only when really publishing.

    Every publish waits at most ``publish_timeout_s`` (default ``settings.ingest.publish_timeout_s``)
    for the acks, then raises :class:`PublishError`.
    """
    from finsent.ingest.dedup import DedupStore
    from finsent.ingest.pipeline import Pipeline
    from finsent.ingest.publisher import Publisher

    if dry_run:
        return Pipeline(
            publisher=None, dedup=DedupStore(None), max_text_chars=settings.model.max_text_chars, use_dedup=use_dedup
        ), None
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)  # kafka-python: WARNING and above, each kind of complaint once per 30 s
    timeout = publish_timeout_s or settings.ingest.publish_timeout_s
    publisher = Publisher(settings, delivery_timeout_s=min(30.0, timeout), publish_timeout_s=timeout)
    dedup = DedupStore.from_settings(settings.ingest) if use_dedup else DedupStore(None)
    return Pipeline(
        publisher=publisher, dedup=dedup, max_text_chars=settings.model.max_text_chars, use_dedup=use_dedup
    ), publisher


def _summary(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _gave_up(exc: PublishError, acked_total: int) -> PublishError:
    """The error for the CLI boundary: the publisher's message plus what this run got acked in all."""
    return PublishError(
        f"{exc}; {acked_total} item(s) acknowledged before that (counted as produced)",
        exc.acked,
        exc.pending,
    )


# -- replay ------------------------------------------------------------------------------------


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.ingest.replay import ReplayStats, replay
    from finsent.ingest.service import Stopper, readiness
    from finsent.stream.metrics import serve_metrics

    if args.rate is not None and args.speedup is not None:
        raise ConfigError("finsent ingest replay: use either --rate or --speedup, not both")
    for path in args.paths:  # before connecting to Kafka: a wrong path is the likeliest mistake
        try:
            is_dir, is_file = Path(path).is_dir(), Path(path).is_file()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise InputError(f"{path[:200]}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        if is_dir:
            raise InputError(
                f"{path} is a directory, not a file", hint=f"name the files in it, e.g. {Path(path) / '*.csv'}"
            )
        if not is_file:
            raise InputError(f"{path}: no such file", hint="check the path; replay takes CSV and JSONL files")
    pipeline, publisher = build_pipeline(
        settings, dry_run=args.dry_run, use_dedup=args.dedup, publish_timeout_s=publish_timeout(args, settings)
    )
    stopper = Stopper(publisher)
    stopper.install()  # SIGTERM: no new items, the publish in flight is drained, summary, exit
    serve_metrics(settings.worker.metrics_host, args.metrics_port, ready=readiness(publisher, stopper))
    stats = ReplayStats()
    try:
        replay(
            args.paths,
            pipeline,
            rate=args.rate,
            speedup=args.speedup,
            limit=args.limit,
            source=args.source,
            source_type=args.source_type,
            encoding=args.encoding,
            progress=not args.dry_run,
            stats=stats,
            stop=stopper.event,
        )
    except PublishError as exc:
        stopped = {"stopped": stopper.signal_name} if stopper.stopped else {}
        _summary(
            produced=stats.produced, skipped=stats.skipped, bad_rows=stats.bad_rows, unacked=len(exc.pending), **stopped
        )
        if stopper.signal_name == "SIGINT":
            raise _replay_interrupted(stats.produced, len(exc.pending), args.dry_run) from None
        raise _gave_up(exc, stats.produced) from None
    finally:
        if publisher is not None:
            publisher.close()
    stopped = {"stopped": stopper.signal_name} if stopper.stopped else {}
    _summary(produced=stats.produced, skipped=stats.skipped, bad_rows=stats.bad_rows, **stopped)
    if stopper.signal_name == "SIGINT":
        raise _replay_interrupted(stats.produced, 0, args.dry_run)
    return 0


def _replay_interrupted(produced: int, unacked: int, dry_run: bool) -> Interrupted:
    """Ctrl-C during a replay: what Kafka acknowledged, and why running it again is safe."""
    if dry_run:
        return Interrupted(f"replay stopped by Ctrl-C after printing {produced:,} item(s) (dry run)")
    handed_back = f"; {unacked:,} handed back unacknowledged" if unacked else ""
    return Interrupted(
        f"replay stopped by Ctrl-C: {produced:,} item(s) published (acknowledged by Kafka){handed_back}",
        hint="rerun the same command to resume: ids are stable, so a row published twice is stored once "
        "(add --dedup to skip the rows already published)",
    )


# -- pollers ---------------------------------------------------------------------------------


def _poll_sources(sources: list[Any], args: argparse.Namespace, settings: Settings, pipeline, publisher) -> int:
    """Run polling sources once (``--once``) or until SIGINT/SIGTERM; 0 if at least one succeeded.

    SIGTERM: no poll starts, the publish in flight is drained (:mod:`finsent.ingest.service`), exit 0.
    """
    from finsent.ingest.poller import Poller
    from finsent.ingest.service import DRAIN_GRACE_S, Stopper, keep_connecting, readiness
    from finsent.stream.metrics import serve_metrics

    if not sources:
        raise ConfigError("finsent ingest: no sources given", hint="name feeds, tags or subreddits; see --help")
    poller = Poller(sources, pipeline, max_workers=min(8, len(sources)))
    try:
        if args.once:
            ok, failed = poller.run_once()
            log.info("%d source(s) succeeded, %d failed", ok, failed)
            _summary(produced=pipeline.produced, skipped=pipeline.skipped, sources_ok=ok, sources_failed=failed)
            unpublished = [st.publish_error for st in poller.states if st.publish_error is not None]
            if unpublished:  # fetched but not acked: not marked, so the next run fetches them again
                raise _gave_up(unpublished[0], pipeline.produced)
            return 0 if ok else 1
        stopper = Stopper(publisher)
        poller.stop = stopper.event
        stopper.install()
        serve_metrics(settings.worker.metrics_host, args.metrics_port, ready=readiness(publisher, stopper))
        keep_connecting(publisher, stopper.event)
        log.info("polling %d source(s); Ctrl-C to stop", len(sources))
        poller.run_forever(stop_grace_s=DRAIN_GRACE_S + 1.0)
        ok = sum(1 for st in poller.states if st.ok)
        _summary(
            produced=pipeline.produced,
            skipped=pipeline.skipped,
            sources_ok=ok,
            sources_failed=len(poller.states) - ok,
            stopped=stopper.signal_name,
        )
        if stopper.signal_name == "SIGINT":
            raise Interrupted(
                f"polling stopped by Ctrl-C: {pipeline.produced:,} item(s) published from "
                f"{len(poller.states)} source(s)",
                hint="run the same command again: items already published are skipped (dedup)",
            )
        return 0 if ok or stopper.stopped else 1  # a service asked to stop has stopped, not failed
    finally:
        if publisher is not None:
            publisher.close()


def run_rss(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.ingest.feeds import FeedSource, load_feed_list
    from finsent.ingest.fetch import Fetcher

    interval = args.interval or settings.ingest.ingest_interval_s
    feeds: list[tuple[str, float | None]] = [(u, None) for u in args.urls]
    for path in args.feeds or []:
        try:
            feeds.extend(load_feed_list(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"finsent ingest rss: {exc}", hint="a feed list has one URL per line") from None
    feeds = list(dict(feeds).items())  # a feed listed twice is polled once
    pipeline, publisher = build_pipeline(
        settings, dry_run=args.dry_run, publish_timeout_s=publish_timeout(args, settings)
    )
    fetcher = Fetcher.from_settings(settings.ingest)
    sources = [FeedSource(url, fetcher, interval_s=iv or interval) for url, iv in feeds]
    return _poll_sources(sources, args, settings, pipeline, publisher)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def run_mastodon(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.ingest.fetch import Fetcher
    from finsent.ingest.social.mastodon import MastodonTagSource

    pipeline, publisher = build_pipeline(
        settings, dry_run=args.dry_run, publish_timeout_s=publish_timeout(args, settings)
    )
    fetcher = Fetcher.from_settings(settings.ingest)
    interval = args.interval or min(settings.ingest.ingest_interval_s, 60.0)
    langs = tuple(x for x in (args.language or "").split(",") if x)
    sources = [
        MastodonTagSource(
            args.instance,
            tag,
            fetcher,
            token=_secret(settings.ingest.mastodon_token),
            interval_s=interval,
            languages=langs,
        )
        for tag in dict.fromkeys(args.tags)
    ]
    return _poll_sources(sources, args, settings, pipeline, publisher)


def run_reddit(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.ingest.fetch import Fetcher
    from finsent.ingest.social.reddit import RedditSubredditSource

    pipeline, publisher = build_pipeline(
        settings, dry_run=args.dry_run, publish_timeout_s=publish_timeout(args, settings)
    )
    fetcher = Fetcher.from_settings(settings.ingest)
    interval = args.interval or min(settings.ingest.ingest_interval_s, 120.0)
    sources = [
        RedditSubredditSource(
            sub, fetcher, token=_secret(settings.ingest.reddit_token), base_url=args.base_url, interval_s=interval
        )
        for sub in dict.fromkeys(args.subreddits)
    ]
    return _poll_sources(sources, args, settings, pipeline, publisher)


def run_bluesky(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.ingest.fetch import Fetcher
    from finsent.ingest.social.bluesky import BlueskySearchSource

    pipeline, publisher = build_pipeline(
        settings, dry_run=args.dry_run, publish_timeout_s=publish_timeout(args, settings)
    )
    fetcher = Fetcher.from_settings(settings.ingest)
    interval = args.interval or min(settings.ingest.ingest_interval_s, 120.0)
    sources = [
        BlueskySearchSource(
            q,
            fetcher,
            token=_secret(settings.ingest.bluesky_token),
            base_url=args.base_url,
            interval_s=interval,
            language=args.language,
        )
        for q in dict.fromkeys(args.queries)
    ]
    return _poll_sources(sources, args, settings, pipeline, publisher)


def run_http(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from finsent.ingest.http_push import check_bind, create_app, serve_app
    from finsent.ingest.service import DRAIN_GRACE_S, Stopper, keep_connecting, readiness
    from finsent.stream.metrics import serve_metrics

    token = _secret(settings.ingest.http_token)
    problem = check_bind(args.host, token)
    if problem:  # the message says what to set
        raise ConfigError(f"finsent ingest http: {problem}", hint="")
    timeout = publish_timeout(args, settings)
    pipeline, publisher = build_pipeline(settings, dry_run=args.dry_run, publish_timeout_s=timeout)
    stopper = Stopper(publisher)
    ready = readiness(publisher, stopper)
    app = create_app(
        pipeline,
        token=token,
        max_body_bytes=args.max_body_bytes,
        max_items=args.max_items,
        publish_timeout_s=timeout,
        body_timeout_s=args.body_timeout or settings.ingest.http_body_timeout_s,
        ready=ready,
    )
    serve_metrics(settings.worker.metrics_host, args.metrics_port, ready=ready)
    keep_connecting(publisher, stopper.event)

    def started(port: int) -> None:
        log.info(
            "POST http://%s:%d/v1/items (auth: %s); /healthz, /readyz, /metrics",
            args.host,
            port,
            "bearer token" if token else "none, loopback only",
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda s=sig: (stopper(s), stop.set()))
        await serve_app(
            app,
            args.host,
            args.port,
            stop=stop,
            metrics=pipeline.metrics,
            max_connections=args.max_connections or settings.ingest.http_max_connections,
            header_timeout_s=args.header_timeout or settings.ingest.http_header_timeout_s,
            shutdown_timeout_s=DRAIN_GRACE_S + 1.0,
            started=started,
        )

    try:
        asyncio.run(main())
    finally:
        stopper.event.set()
        if publisher is not None:
            publisher.close()
    if stopper.signal_name == "SIGINT":
        raise Interrupted(
            f"push endpoint stopped by Ctrl-C: {pipeline.produced:,} item(s) acknowledged by Kafka",
            hint="start it again; clients retry what got 503, nothing acknowledged is lost",
        )
    log.info("stopped: %d item(s) acknowledged by Kafka", pipeline.produced)
    return 0


# -- registration ------------------------------------------------------------------------------


INGEST_DESCRIPTION = (
    "Ingesters: every item is normalised (clean text, UTC times, canonical URL, tickers), "
    "deduplicated and published to the raw topic with acks=all."
)
REPLAY_DESCRIPTION = (
    "Replay CSV (header with a 'text' column; title, url, published_at, source, source_type, "
    "author, tickers, id used when present) or JSONL files onto the raw topic. Ids are stable: "
    "stable_id('replay', file name, row, text) unless an 'id' column exists. Each bad row is logged as "
    "FILE:LINE: skipped: REASON (not_json, empty_text, bad_time, unterminated_quote...). Ends by printing one "
    'JSON line {"produced": N, "skipped": M, "bad_rows": [{"file", "line", "reason", "detail"}, ...]} on '
    "stdout (the first 100 bad rows; produced counts only what Kafka acknowledged). Exit status 6 when Kafka "
    "does not acknowledge within --publish-timeout."
)
REPLAY_EPILOG = """\
health: with --metrics-port, /healthz (alive) and /readyz (200 when the producer's last contact
with Kafka succeeded: connected with metadata, or last publish acknowledged; 503 otherwise).
SIGTERM/SIGINT: no new rows are read, what was read gets 5 s to be acknowledged, the summary
line says "stopped": "SIGTERM"; exit 0 when all of it was acknowledged, 6 when some was handed
back unacknowledged (not counted in produced). Always within 10 s. Ctrl-C (SIGINT) stops the
same way and exits 130 with one line on stderr: how many were published and how to resume.

examples:
  finsent ingest replay finsent/demo_data/tweets.jsonl --rate 50     the demo's tweets, from a checkout
  finsent ingest replay news.jsonl --brokers kafka:9092 --publish-timeout 60 --metrics-port 9470
"""
RSS_DESCRIPTION = (
    "Poll feeds with conditional GET (ETag/Last-Modified), per-feed interval and exponential "
    "back-off, a whole-request timeout and a size limit; 429/503 Retry-After is honoured. One bad feed "
    "never stops the others (its error names the URL on stderr and is counted in metrics)."
)
RSS_EPILOG = (
    EPILOG_COMMON
    + EPILOG_SERVICE
    + "".join(
        (
            "examples:\n",
            "  finsent ingest rss https://feeds.example.com/markets.xml --interval 300 --metrics-port 9471\n",
            "  finsent ingest rss --feeds ingest/data/feeds.example.txt --once --dry-run\n",
        )
    )
)
MASTODON_DESCRIPTION = (
    "Poll GET /api/v1/timelines/tag/:hashtag on one instance (public, no auth; "
    "FINSENT_MASTODON_TOKEN is sent as a bearer token when set). Pages forward with min_id and the Link "
    "header; X-RateLimit-Remaining/Reset and Retry-After are honoured."
)
MASTODON_EPILOG = (
    EPILOG_COMMON
    + EPILOG_SERVICE
    + "".join(
        (
            "examples:\n",
            "  finsent ingest mastodon stocks investing --instance mastodon.social --language en --metrics-port 9472\n",
        )
    )
)
REDDIT_DESCRIPTION = (
    "Poll /r/<sub>/new.json (public JSON, or oauth.reddit.com with FINSENT_REDDIT_TOKEN). "
    "Pages with 'after' until the newest post seen before; X-Ratelimit-Remaining/Reset and Retry-After "
    "are honoured."
)
REDDIT_EPILOG = (
    EPILOG_COMMON
    + EPILOG_SERVICE
    + "".join(
        (
            "examples:\n",
            "  finsent ingest reddit stocks investing --interval 120 --metrics-port 9473\n",
        )
    )
)
BLUESKY_DESCRIPTION = (
    "Poll GET /xrpc/app.bsky.feed.searchPosts?q=...&sort=latest with a 'since' cursor and page "
    "cursors. The public AppView may require auth for search: set FINSENT_BLUESKY_TOKEN (access JWT) and "
    "--base-url to your PDS. RateLimit-Remaining/Reset and Retry-After are honoured."
)
BLUESKY_EPILOG = (
    EPILOG_COMMON
    + EPILOG_SERVICE
    + "".join(
        (
            "examples:\n",
            "  FINSENT_BLUESKY_TOKEN=... finsent ingest bluesky '$AAPL' '#stocks' --metrics-port 9474\n",
        )
    )
)
HTTP_DESCRIPTION = (
    "Serve POST /v1/items, GET /healthz, /readyz and /metrics. Items are normalised like every "
    "other source; the answer is 202 with the ids only after Kafka acknowledged them, 503 when Kafka cannot "
    "take them in --publish-timeout seconds (nothing is lost: retry), 401 without the bearer token "
    "(FINSENT_HTTP_TOKEN), 413 for bodies over --max-body-bytes, 400/422 with a reason per bad item, 408 "
    "for a body slower than --body-timeout."
)
HTTP_EPILOG = """\
bad clients: a connection that has not sent complete request headers --header-timeout seconds
after it connected (or after its previous response; also the idle keep-alive limit) is closed;
a body that has not arrived --body-timeout seconds after its headers gets 408 and the connection
is closed; beyond --max-connections open connections a new one gets 503 + Retry-After at once.
health: /healthz answers 200 while the process runs; /readyz answers 200 {"ready": true} when
ready: the Kafka producer's last contact succeeded (connected with metadata, or last publish
acknowledged) and the endpoint is accepting requests; else 503 {"ready": false}. Neither needs
the token, so neither says more (the --metrics-port /readyz, on loopback, gives the reason).
FINSENT_HTTP_TOKEN must be a real secret: a template placeholder (CHANGE-ME...) or a token under
16 characters is refused at start.
/metrics needs the bearer token when FINSENT_HTTP_TOKEN is set; --metrics-port serves /metrics,
/healthz and /readyz without it on FINSENT_METRICS_HOST (127.0.0.1 by default) for Prometheus.
SIGTERM/SIGINT: the port closes, idle connections are closed, requests in flight are answered
(202, or 503 when their publish is not acknowledged within 5 s: nothing lost, the client
retries), within 10 s in every state; exit 0 on SIGTERM, 130 on Ctrl-C (with one line).

examples:
  finsent ingest http --port 8088
  FINSENT_HTTP_TOKEN=$(cat /run/secrets/push) finsent ingest http --host 0.0.0.0 --metrics-port 9475
  curl -X POST -H 'Content-Type: application/json' -d '{"text": "ACME beats estimates"}' localhost:8088/v1/items
"""


def register(sub: Subcommands) -> None:
    ingest = sub.group(
        "ingest",
        dest="ingest_command",
        metavar="SOURCE",
        help="publish news/social items to Kafka (replay, rss, mastodon, reddit, bluesky, http)",
        description=INGEST_DESCRIPTION,
        epilog=EPILOG_COMMON,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ingest.leaves(
        Leaf(
            "replay",
            run_replay,
            "replay CSV/JSONL files (demo, backfill, benchmarks)",
            REPLAY_DESCRIPTION,
            _add_replay,
            REPLAY_EPILOG,
        ),
        Leaf("rss", run_rss, "poll RSS 2.0 / RSS 1.0 (RDF) / Atom feeds", RSS_DESCRIPTION, _add_rss, RSS_EPILOG),
        Leaf(
            "mastodon",
            run_mastodon,
            "poll Mastodon hashtag timelines",
            MASTODON_DESCRIPTION,
            _add_mastodon,
            MASTODON_EPILOG,
        ),
        Leaf(
            "reddit",
            run_reddit,
            "poll subreddit listings (/r/<sub>/new.json)",
            REDDIT_DESCRIPTION,
            _add_reddit,
            REDDIT_EPILOG,
        ),
        Leaf(
            "bluesky",
            run_bluesky,
            "poll Bluesky post search (app.bsky.feed.searchPosts)",
            BLUESKY_DESCRIPTION,
            _add_bluesky,
            BLUESKY_EPILOG,
        ),
        Leaf(
            "http",
            run_http,
            "HTTP endpoint: POST /v1/items (JSON object, array or NDJSON)",
            HTTP_DESCRIPTION,
            _add_http,
            HTTP_EPILOG,
        ),
    )


def _add_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="CSV or JSONL (.jsonl/.ndjson) files")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=positive_float, metavar="N", help="items per second (default: as fast as possible)"
    )
    pace.add_argument(
        "--speedup",
        type=positive_float,
        metavar="X",
        help="follow the rows' published_at spacing, X times faster (rows without a time go immediately)",
    )
    p.add_argument("--limit", type=positive_int, metavar="N", help="stop after N items")
    p.add_argument("--source", metavar="NAME", help="source of rows without a 'source' column (default replay:<file>)")
    p.add_argument("--source-type", choices=("news", "social"), default="news", help="default source_type (news)")
    p.add_argument("--encoding", default="utf-8-sig", help="file encoding (default utf-8; e.g. latin-1)")
    p.add_argument("--dedup", action="store_true", help="also drop items already published (off: replays repeat)")
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (FINSENT_METRICS_HOST)",
    )
    _add_dry_run(p)
    _add_publish_timeout(p, "giving up with exit status 6")


def _add_rss(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="*", metavar="URL", help="feed URLs")
    p.add_argument(
        "--feeds",
        action="append",
        metavar="FILE",
        help="OPML file or plain list ('URL [interval_s]' per line, # comments); repeatable",
    )
    _add_common(p, polling=True)


def _add_mastodon(p: argparse.ArgumentParser) -> None:
    p.add_argument("tags", nargs="+", metavar="TAG", help="hashtags without '#', e.g. stocks investing")
    p.add_argument("--instance", default="mastodon.social", help="instance host or URL (default mastodon.social)")
    p.add_argument("--language", metavar="LANGS", help="keep only these languages, comma-separated (e.g. en)")
    _add_common(p, polling=True)


def _add_reddit(p: argparse.ArgumentParser) -> None:
    p.add_argument("subreddits", nargs="+", metavar="SUBREDDIT", help="e.g. stocks investing wallstreetbets")
    p.add_argument(
        "--base-url", metavar="URL", help="API base URL (default www.reddit.com, or oauth.reddit.com with a token)"
    )
    _add_common(p, polling=True)


def _add_bluesky(p: argparse.ArgumentParser) -> None:
    p.add_argument("queries", nargs="+", metavar="QUERY", help="search queries, e.g. '$AAPL' '#stocks'")
    p.add_argument("--base-url", metavar="URL", help="XRPC host (default https://public.api.bsky.app)")
    p.add_argument("--language", metavar="LANG", help="only posts in this language (e.g. en)")
    _add_common(p, polling=True)


def _add_http(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=port, default=8088, help="port (default 8088)")
    p.add_argument(
        "--max-body-bytes", type=positive_int, default=1_000_000, metavar="N", help="request body limit (1 MB)"
    )
    p.add_argument("--max-items", type=positive_int, default=1000, metavar="N", help="items per request limit (1000)")
    p.add_argument(
        "--header-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="complete request headers within this (FINSENT_HTTP_HEADER_TIMEOUT_S, 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="complete request body within this after the headers (FINSENT_HTTP_BODY_TIMEOUT_S, 30)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help="open connections at most; more get 503 (FINSENT_HTTP_MAX_CONNECTIONS, 1000)",
    )
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="also serve /metrics, /healthz, /readyz without the token on this port (loopback)",
    )
    _add_publish_timeout(p, "answering 503")
    _add_dry_run(p)
