"""``finsent bench entities --through-stack``: the crypto news replayed through broker, worker and clickhouse-server.

The offline bench (:mod:`finsent.bench.entities`) runs linker, novelty and detector in one loop. This mode runs
what a user runs: the CSV is replayed onto the raw topic of a local Tansu broker (``finsent ingest replay``'s
code, with each row's ``published_at``), one in-process worker with the shipped model scores it, links its
entities and stores items and mentions in a private clickhouse-server (the system's 18.16), and the worker's
entity agent (:mod:`finsent.alerts.entity_agent`) raises alerts on *event time* -- 2022 buckets, however fast
the replay. After the last row one closing item, dated ``lateness + 2 buckets`` later and naming no entity,
moves the watermark past the last bucket (a finished replay would otherwise wait for the wall clock).

It reports the stack's entity alerts beside the offline bench's on the same file, and for each known crypto
collapse (FTX, Celsius, Voyager, Three Arrows, Genesis, BlockFi, Tornado Cash) how many headlines name it and
when each mode alerted. The two differ by design where the live worker's entities differ from the offline
linker's (the worker's model gives per-entity sentiment; the offline bench falls back to the headline's).
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from finsent.core.events import RawItem, format_time, utcnow

#: known collapses of 2022-23 and the words that name them in a headline or an entity name
COLLAPSES: dict[str, str] = {
    "FTX (Nov 2022)": r"\bftx\b|bankman|\bsbf\b|alameda",
    "Celsius (Jul 2022)": r"\bcelsius\b",
    "Voyager (Jul 2022)": r"\bvoyager\b",
    "3AC (Jun 2022)": r"three arrows|\b3ac\b",
    "Genesis (Jan 2023)": r"\bgenesis\b",
    "BlockFi (Nov 2022)": r"\bblockfi\b",
    "Tornado Cash (Aug 2022)": r"tornado cash",
}


def _alert_row(a: dict[str, Any]) -> dict[str, Any]:
    ev = a.get("evidence") or {}
    return {
        "at": format_time(a["window_end"]),
        "entity_id": a.get("entity_id"),
        "entity_name": a.get("entity_name"),
        "score": a.get("score"),
        "novel_negative": a.get("negative"),
        "sources": ev.get("sources"),
        "headlines": [h.get("title") for h in ev.get("headlines", [])[:3]],
    }


def collapses(rows: list[Any], offline: list[dict[str, Any]], stack: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per known collapse: headlines in the data naming it, and the alerts of each mode whose entity or first
    headlines name it."""

    def hits(alerts: list[dict[str, Any]], pattern: re.Pattern[str]) -> list[str]:
        out = []
        for a in alerts:
            text = " ".join([str(a.get("entity_name") or ""), str(a.get("entity_id") or ""), *a.get("headlines", [])])
            if pattern.search(text):
                out.append(f"{a['at'][:16]} {a['entity_name']}")
        return out

    out = []
    for name, words in COLLAPSES.items():
        pattern = re.compile(words, re.IGNORECASE)
        out.append(
            {
                "collapse": name,
                "headlines": sum(1 for r in rows if pattern.search(r.title)),
                "offline": hits(offline, pattern),
                "stack": hits(stack, pattern),
            }
        )
    return out


def run_through_stack(args: Any) -> dict[str, Any]:
    """Replay ``args.data`` through a local stack (see the module doc); the stack's alerts and its timings."""
    from finsent.alerts.entity_agent import attach as attach_entities
    from finsent.bench.entities import read_news
    from finsent.core.settings import load_settings
    from finsent.core.wait import wait_until
    from finsent.ingest.replay import replay_to_kafka
    from finsent.models.runtime import Classifier
    from finsent.stack import LocalStack
    from finsent.stream.kafka import make_producer

    rows, _ = read_news(Path(args.data))
    last = max(r.at for r in rows)
    # a replay at full speed is a backlog: one raw partition may be drained weeks of event time ahead of the other.
    # The worker's watermark waits per (scored, raw) partition pair, and a first start no longer restores this run's
    # own stored items (before both: 933-1,160 of 5,340 mentions late with 1 h; after: 0), but an origin that
    # stalls for IDLE_S stops holding it: the bench defaults to a lateness that covers the file's spread, and
    # --stack-default-lateness keeps the worker's own (what a user's backfill gets) to count what comes late
    span_s = int((last - min(r.at for r in rows)).total_seconds())
    settings = load_settings()
    if getattr(args, "stack_default_lateness", False):
        lateness_s = settings.entities.entity_lateness_s
    else:
        lateness_s = args.stack_lateness_s if args.stack_lateness_s is not None else span_s + args.bucket_s
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with LocalStack(
        settings,
        name="finsent-bench-entities",
        clickhouse_server=True,
        partitions=args.partitions,
        entity_bucket_s=args.bucket_s,
        entity_window_buckets=args.window_buckets,
        entity_cooldown_s=args.cooldown_s,
        entity_lateness_s=lateness_s,
    ) as stack:
        started_s = time.perf_counter() - t0
        worker = stack.start_worker(classifier=Classifier.load(), extensions=[attach_entities])
        state = worker.context.extensions.get("entity_alerts")
        t1 = time.perf_counter()
        stats = replay_to_kafka(stack.settings, [args.data])
        closing = last + timedelta(seconds=lateness_s + 2 * args.bucket_s)
        producer = make_producer(stack.settings.kafka, client_id="finsent-bench-entities")
        try:
            end = RawItem(
                id="finsent-bench-entities-end",
                source="finsent-bench",
                source_type="news",
                text="end of the replay.",
                ingested_at=utcnow(),
                published_at=closing,
            )
            producer.send(stack.settings.kafka.topic_raw, key=end.id.encode(), value=end.to_json())
            producer.flush()
        finally:
            producer.close()
        n = stats.produced + 1
        wait_until(lambda: worker.scorer.stats.stored >= n, args.timeout_s, 1.0, what=f"{n} items stored by the worker")
        stored_s = time.perf_counter() - t1

        def released() -> bool:
            cut = last.replace(minute=0, second=0, microsecond=0)
            units = list(state.units.values())
            return bool(units) and all(u.released_upto is not None and u.released_upto > cut for u in units)

        wait_until(released, args.timeout_s, 1.0, what="every entity bucket of the replay closed")
        time.sleep(2.0)  # the last alerts' delivery to the store (the agent's executor)
        alerts = [_alert_row(a) for a in stack.store.alerts(kind="entity")]
        alerts.sort(key=lambda a: (a["at"], str(a["entity_name"])))
        detected_s = time.perf_counter() - t1
        backtest = _backtest_agreement(stack, alerts, min(r.at for r in rows), closing)
        [(mentions,)] = stack.store.query(f"SELECT count() FROM {stack.store.database}.mentions")  # type: ignore[attr-defined]
        version = stack.store.capabilities.version_text  # type: ignore[attr-defined]
    return {
        "engine": f"clickhouse-server {version}",
        "items_replayed": stats.produced,
        "bad_rows": stats.skipped,
        "mentions_stored": int(mentions),
        "mentions_at_owners": state.mentions,
        "late_ignored": state.late,
        "lateness_s": lateness_s,
        "stack_start_s": round(started_s, 1),
        "replay_to_stored_s": round(stored_s, 1),
        "replay_to_alerts_s": round(detected_s, 1),
        "items_per_s": round(stats.produced / stored_s, 1) if stored_s > 0 else None,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "alerts": alerts,
        "backtest": backtest,
        "closing_item_at": format_time(closing),
    }


def _backtest_agreement(stack: Any, live: list[dict[str, Any]], first: datetime, closing: datetime) -> dict[str, Any]:
    """``finsent alerts backtest`` over what the stack stored, against the alerts the worker raised live.

    The same detector settings over the same stored mentions, by event time: the issue asks live and backtest to
    agree on real data, not only on the test's crafted replay. Compared on (entity, window end).
    """
    from finsent.alerts.backtest import backtest
    from finsent.alerts.entity_agent import make_entity_detector

    report = backtest(stack.store, make_entity_detector(stack.settings.entities), first - timedelta(days=1), closing)
    replayed = {(a["at"][:16], str(a["entity_name"])) for a in report["alerts"]}
    raised = {(a["at"][:16], str(a["entity_name"])) for a in live}
    return {
        "alerts": len(replayed),
        "mentions": report["mentions"],
        "agree": sorted(f"{at} {name}" for at, name in raised & replayed),
        "live_only": sorted(f"{at} {name}" for at, name in raised - replayed),
        "backtest_only": sorted(f"{at} {name}" for at, name in replayed - raised),
    }


def compare(report: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
    """The offline report with the stack's beside it and the known collapses of both."""
    stack = report["stack"]
    report["collapses"] = collapses(rows, report["alerts"], stack["alerts"])
    off = {(a["at"][:13], a["entity_name"]) for a in report["alerts"]}
    on = {(a["at"][:13], a["entity_name"]) for a in stack["alerts"]}
    report["both"] = sorted(f"{at} {name}" for at, name in off & on)
    report["offline_only"] = sorted(f"{at} {name}" for at, name in off - on)
    report["stack_only"] = sorted(f"{at} {name}" for at, name in on - off)
    return report


def print_stack(r: dict[str, Any], out: Any) -> None:
    s = r["stack"]
    out.write(
        f"\nthrough the stack ({s['engine']}, Tansu, one worker): {s['items_replayed']} items replayed, "
        f"{s['mentions_stored']} mentions stored, {s['late_ignored']} late; stored in {s['replay_to_stored_s']} s "
        f"({s['items_per_s']} items/s), every bucket closed after {s['replay_to_alerts_s']} s; load "
        f"{s['load_before'][0]} -> {s['load_after'][0]}\n"
    )
    bt = s.get("backtest")
    if bt is not None:
        out.write(
            f"backtest over the stack's store ({bt['mentions']} mentions): {len(bt['agree'])} alerts agree with the "
            f"live ones, {len(bt['live_only'])} live only, {len(bt['backtest_only'])} backtest only\n"
        )
        for line in bt["live_only"]:
            out.write(f"  live only: {line}\n")
        for line in bt["backtest_only"]:
            out.write(f"  backtest only: {line}\n")
    out.write(f"{len(s['alerts'])} entity alerts through the stack:\n")
    for a in s["alerts"]:
        out.write(
            f"  {a['at'][:16]}  {a['entity_name']} [{a['entity_id'] or 'unlinked'}]  index {a['score']:.1f}  "
            f"novel neg {a['novel_negative']} from {len(a['sources'] or [])} sources\n"
        )
        for h in a["headlines"]:
            out.write(f"      - {h}\n")
    out.write("known collapses (headlines naming it; offline alerts | stack alerts):\n")
    for c in r["collapses"]:
        out.write(
            f"  {c['collapse']:<24} {c['headlines']:>4}  {', '.join(c['offline']) or '-'} | "
            f"{', '.join(c['stack']) or '-'}\n"
        )
    out.write(
        f"same hour and entity in both: {len(r['both'])}; offline only: {r['offline_only'] or '-'}; "
        f"stack only: {r['stack_only'] or '-'}\n"
    )


# --- the entity stage's plumbing cost (issue 26: within 15% with entities on) -----------------------------------
#: names the plumbing classifier gives (two per item, as the stored crypto news has about two mentions per item)
PLUMBING_NAMES = [(f"E{i:03d}", f"Company {i}") for i in range(300)]


class EntityConstantClassifier:
    """:class:`finsent.bench.plumbing.ConstantClassifier`'s fixed prediction plus two entities per item (two
    different names of 300, chosen by a hash of the text): costs nothing, gives the entity stage its usual work."""

    version = "plumbing-constant-entities"
    variant = "constant"
    provider = "none"

    def predict(self, texts: Any, titles: Any = None) -> list[Any]:
        import zlib
        from dataclasses import replace

        from finsent.bench.plumbing import CONSTANT_PREDICTION
        from finsent.core.events import EntityMention

        probs = {"negative": 0.1, "neutral": 0.8, "positive": 0.1}
        out = []
        for t in texts:
            h = zlib.crc32(t.encode("utf-8", "surrogatepass"))
            a = h % 300
            b = (a + 1 + (h >> 12) % 299) % 300
            ents = tuple(
                EntityMention(PLUMBING_NAMES[j][1], 0, 5, "neutral", probs, *PLUMBING_NAMES[j], 80) for j in (a, b)
            )
            out.append(replace(CONSTANT_PREDICTION, entities=ents))
        return out


#: the modes of ``bench entities --plumbing``: today's pipeline plumbing (no entities, no entity agent), the same
#: worker storing two mentions per item, and the whole entity stage on
PLUMBING_MODES = ("off", "mentions", "on")


def _plumbing_round(
    stack: Any, settings: Any, store: Any, texts: list[str], run: str, prefix: str, mode: str
) -> dict[str, Any]:
    """One backlog through a fresh worker in ``mode`` (:data:`PLUMBING_MODES`) on its own fresh database: items/s
    and CPU per item over the window from its first batch to every item stored and, with the agent, every mention
    counted at its owner (the item's whole way through the worker)."""
    from finsent.alerts.entity_agent import attach as attach_entities
    from finsent.bench.pipeline import _items, _produce
    from finsent.bench.plumbing import ConstantClassifier, CpuSample
    from finsent.core.wait import wait_until

    on = mode == "on"
    _produce(settings, _items(texts, run, prefix))
    clf = ConstantClassifier() if mode == "off" else EntityConstantClassifier()
    worker = stack.start_worker(
        settings=settings, store=store, classifier=clf, extensions=[attach_entities] if on else []
    )
    try:
        stats = worker.scorer.stats
        state = worker.context.extensions.get("entity_alerts") if on else None
        wait_until(lambda: stats.first_batch_t is not None, 120, 0.005, what="the worker's first batch")
        cpu0, t0 = CpuSample.take(stack.broker_pid, stack.server_pid), time.monotonic()
        wait_until(lambda: stats.stored >= len(texts), 300, 0.005, what=f"{len(texts)} items stored")
        stored_s = time.monotonic() - t0
        if state is not None:
            wait_until(lambda: state.mentions >= 2 * len(texts), 300, 0.005, what="every mention at its owner")
        done_s = time.monotonic() - t0
        cpu = CpuSample.take(stack.broker_pid, stack.server_pid).minus(cpu0)
        restore_s = getattr(state, "restore_s", 0.0) if state is not None else 0.0
    finally:
        worker.stop()
    n = len(texts)
    total = cpu.python_threads + cpu.native_threads + cpu.broker + cpu.server
    return {
        "mode": mode,
        "items": n,
        "stored_s": round(stored_s, 3),
        "done_s": round(done_s, 3),
        "restore_s": round(restore_s, 3),
        "cpu_ms_per_item": round(total * 1000 / n, 4),
        "worker_python_ms_per_item": round(cpu.python_threads * 1000 / n, 4),
    }


def run_entity_plumbing(items: int, rounds: int, progress: Any = print) -> dict[str, Any]:
    """Today's ``bench pipeline --plumbing`` worker (constant classifier, no entities: ``off``), the same worker
    storing two mentions per item (``mentions``) and with the whole entity stage (``on``: mentions stored, re-keyed
    by entity, counted at their owner), interleaved in rotating order on one broker. Each mode has its own topics
    and consumer group, so no round reads another mode's backlog, and every round stores into a fresh database of
    the one chdb session: a worker's restore (before its first entity record) then finds no earlier round's
    mentions, as a worker's first start on an empty store, and no round inserts into a bigger table than another.

    The issue's figure is ``items_per_s_ratio``: items through the worker per second, from its first batch to the
    last item stored and (``on``) its last mention counted, on vs off; and the CPU per item beside it."""
    from finsent.bench.common import cpu_name
    from finsent.core.settings import load_settings
    from finsent.demo import load_tweets
    from finsent.stack import LocalStack
    from finsent.stream.kafka import ensure_topics

    tweets = [t["text"] for t in load_tweets()]
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    with LocalStack(load_settings(), name="finsent-bench-entity-plumbing", partitions=2) as stack:
        modes = {}
        base = stack.settings
        path = stack.store_url.split("?", 1)[0]
        for mode in PLUMBING_MODES:
            modes[mode] = base.model_copy(
                update={
                    "topic_raw": f"{base.kafka.topic_raw}-{mode}",
                    "topic_scored": f"{base.kafka.topic_scored}-{mode}",
                    "topic_dlq": f"{base.kafka.topic_dlq}-{mode}",
                    "topic_alerts": f"{base.kafka.topic_alerts}-{mode}",
                    "consumer_group": f"{base.kafka.consumer_group}-{mode}",
                    "entity_alerts": mode == "on",
                }
            )
            ensure_topics(modes[mode].kafka)

        def fresh_store(tag: str) -> Any:  # outside the window: schema made before the worker starts
            return stack.open_store(f"{path}?database=plumbing_{tag}")

        for mode in PLUMBING_MODES:  # warm-up: group join, imports
            warm = fresh_store(f"warm_{mode}")
            _plumbing_round(stack, modes[mode], warm, tweets[:256], stack.run_id, f"w-{mode}", mode)
        for r in range(rounds):
            texts = [f"{tweets[(r * items + i) % len(tweets)]} #{r}-{i}" for i in range(items)]
            k = r % len(PLUMBING_MODES)
            for mode in PLUMBING_MODES[k:] + PLUMBING_MODES[:k]:
                store = fresh_store(f"r{r}_{mode}")
                res = _plumbing_round(stack, modes[mode], store, texts, stack.run_id, f"r{r}-{mode}", mode)
                results.append(res)
                progress(
                    f"round {r + 1}/{rounds} {mode:8s}: {res['items'] / res['done_s']:.0f} items/s, "
                    f"{res['cpu_ms_per_item']} ms CPU/item"
                )
    out: dict[str, Any] = {"load_before": [round(x, 2) for x in load_before]}
    for mode in PLUMBING_MODES:
        xs = [x for x in results if x["mode"] == mode]
        n = sum(x["items"] for x in xs)
        out[mode] = {
            "cpu_ms_per_item": round(sum(x["cpu_ms_per_item"] * x["items"] for x in xs) / n, 4),
            "items_per_s": round(n / sum(x["done_s"] for x in xs), 1),
            "items_per_s_stored": round(n / sum(x["stored_s"] for x in xs), 1),
            "restore_s": round(sum(x["restore_s"] for x in xs), 3),
        }
    off = out["off"]
    for mode in ("mentions", "on"):
        out[mode]["items_per_s_ratio"] = round(out[mode]["items_per_s"] / off["items_per_s"], 3)
        out[mode]["cpu_ratio"] = round(out[mode]["cpu_ms_per_item"] / off["cpu_ms_per_item"], 3)
    out["items_per_s_ratio"] = out["on"]["items_per_s_ratio"]
    out["cpu_cost"] = round(out["on"]["cpu_ratio"] - 1, 3)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out["items_per_round"] = items
    out["cpu"] = cpu_name()
    out["rounds"] = results
    return out


__all__ = [
    "COLLAPSES",
    "EntityConstantClassifier",
    "PLUMBING_MODES",
    "collapses",
    "compare",
    "print_stack",
    "run_entity_plumbing",
    "run_through_stack",
]
