"""``finsent bench soak``: does a worker stay correct and flat over a long run?

A real ``finsent worker`` process (the service a user runs) against the embedded Tansu broker and
its embedded chdb store, fed at a fixed fraction (default 80%) of its capacity measured at the
start of the same run, for ``--minutes``. Every ``--sample-s`` the benchmark records the worker's
resident memory (``/proc/<pid>/status`` VmRSS), the rows stored (the worker's ``/v1/count``), the
items acknowledged by the broker, the dead letters and the store retries (its ``/metrics``).

Latency is exact per item: a consumer of the scored topic takes ``receive time - ingested_at``
(the scored topic is written after the row is stored, so this bounds ingest -> stored from above).

Faults, on request (issue 22's "prove it"): ``--disk-full-at MIN`` puts the store on a tmpfs of its
own (needs root), fills it completely at that minute and frees it ``--disk-full-s`` later;
``--kill9-at MIN`` kills the worker with SIGKILL at that minute and starts it again at once. The
producer never stops, so both happen under load; the report says what ``/readyz`` answered while the
disk was full and how long the worker took to be ready again.

At the end the producer stops, the backlog drains, and the run passes only if the rows stored
equal the items the broker acknowledged (``stored == produced``, each id once) and no item was
dead-lettered. ``--png`` plots RSS and throughput over time; ``--json`` writes every sample;
``--write-results`` replaces the "Soak" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finsent.bench.common import hardware, load_average, percentile, plain_help, write_section
from finsent.bench.worker_pool import WorkerProcess
from finsent.core.errors import FinsentError
from finsent.core.events import RawItem, stable_id, utcnow
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings
from finsent.core.wait import WaitTimeout, wait_until


class SoakFailed(FinsentError):
    """The soak's end condition did not hold (rows lost, doubled, or dead-lettered)."""

    exit_code = 1


@dataclass
class Counters:
    """What the producer and the scored-topic reader saw, shared with the sampler."""

    acked: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    scored_seen: int = 0
    scored_ids: set[str] = field(default_factory=set)
    #: only items ingested from this epoch second on are the soak's (the capacity backlog came before)
    since: float = float("inf")
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def _metric(text: str | None, name: str) -> float:
    if not text:
        return float("nan")
    return sum(
        float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith(name + " ") or ln.startswith(name + "{")
    )


def _fill_disk(disk: Path) -> Path:
    """Write a filler file on ``disk`` until the disk is full (ENOSPC); returns it."""
    filler = disk / "filler.bin"
    block = b"\xa5" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
    return filler


def _mount_tmpfs(path: Path, size_mb: int) -> None:
    import os
    import subprocess

    if os.geteuid() != 0:
        raise FinsentError(
            "--disk-full-at needs root (it mounts a tmpfs for the store)",
            hint="run as root, or leave out --disk-full-at",
        )
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise FinsentError(
            f"cannot mount a tmpfs at {path}: {done.stderr.strip()}", hint="leave out --disk-full-at on this machine"
        )


def _readyz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"unreachable ({exc})"


def _stored(port: int) -> tuple[int, int]:
    body = _get(f"http://127.0.0.1:{port}/v1/count")
    if body is None:
        return -1, -1
    d = json.loads(body)
    return int(d["rows"]), int(d.get("unique_ids", d["rows"]))


def _producer(
    settings: Settings,
    texts: list[str],
    rate: float,
    run: str,
    stop: threading.Event,
    c: Counters,
    prefix: str,
    limit: int | None = None,
) -> threading.Thread:
    """Publish at ``rate`` items/s until ``stop`` (or ``limit`` items); count what the broker acknowledged."""
    from finsent.stream.kafka import make_producer

    def ok(_: Any) -> None:
        with c.lock:
            c.acked += 1

    def bad(_: Any) -> None:
        with c.lock:
            c.failed += 1

    def loop() -> None:
        producer = make_producer(settings.kafka, client_id="finsent-soak", linger_ms=5)
        t0 = time.monotonic()
        i = 0
        try:
            while not stop.is_set():
                due = int((time.monotonic() - t0) * rate)
                if limit is not None:
                    due = min(due, limit)
                    if i >= limit:
                        break
                while i < due:
                    it = RawItem(
                        id=stable_id("soak", run, prefix, str(i)),
                        source="soak",
                        source_type="social",
                        text=texts[i % len(texts)],
                        ingested_at=utcnow(),
                    )
                    producer.send(settings.kafka.topic_raw, key=it.id.encode(), value=it.to_json()).add_callback(
                        ok
                    ).add_errback(bad)
                    i += 1
                time.sleep(0.01)
            producer.flush(timeout=60)
        finally:
            producer.close()

    th = threading.Thread(target=loop, name="finsent-soak-producer", daemon=True)
    th.start()
    return th


def _scored_reader(settings: Settings, stop: threading.Event, c: Counters) -> threading.Thread:
    """Read the scored topic: per-item latency (now - ingested_at) and duplicates on the topic."""
    from datetime import datetime

    from finsent.stream.kafka import make_consumer

    def loop() -> None:
        consumer = make_consumer(settings.kafka, settings.kafka.topic_scored, group_id=None, auto_offset_reset="latest")
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    now = time.time()
                    for r in records:
                        try:
                            d = json.loads(r.value)
                            ing = d.get("ingested_at") or (d.get("item") or {}).get("ingested_at")
                            t = datetime.fromisoformat(str(ing).replace("Z", "+00:00")).timestamp()
                            sid = str(d.get("id") or (d.get("item") or {}).get("id"))
                        except (ValueError, TypeError, AttributeError):
                            continue
                        if t < c.since:
                            continue
                        with c.lock:
                            c.scored_seen += 1
                            c.scored_ids.add(sid)
                            c.latencies.append(max(now - t, 0.0))
        finally:
            consumer.close()

    th = threading.Thread(target=loop, name="finsent-soak-reader", daemon=True)
    th.start()
    return th


def _drain(stored: Any, target: int, stall_s: float, cap_s: float) -> bool:
    """Wait until ``stored() >= target``: as long as the count keeps growing (a loaded machine drains a
    long backlog slowly), giving up only after ``stall_s`` without progress or ``cap_s`` in all."""
    t0 = last_t = time.monotonic()
    last = stored()
    while time.monotonic() - t0 < cap_s:
        now_n = stored()
        if now_n >= target:
            return True
        if now_n > last:
            last, last_t = now_n, time.monotonic()
        elif time.monotonic() - last_t > stall_s:
            return False
        time.sleep(1.0)
    return False


class _Faults:
    """The faults asked for (``--disk-full-at``, ``--kill9-at``), injected on time by :meth:`step`, and what
    was seen: ``log`` is the report's list, ``before_kill`` the counters of a worker process that was killed
    (a restarted worker's ``/metrics`` start at 0)."""

    def __init__(
        self, disk: Path | None, disk_full_at: float | None, disk_full_s: float, kill9_at: float | None
    ) -> None:
        self.disk = disk
        self.disk_full_at = disk_full_at
        self.disk_full_s = disk_full_s
        self.kill9_at = kill9_at
        self.log: list[dict[str, Any]] = []
        self.before_kill = {"dead_lettered": 0.0, "store_retries": 0.0}
        self.filler: Path | None = None
        self.full_since = 0.0
        self.restarted_at: float | None = None

    def step(self, worker: WorkerProcess, now: float, t_start: float, progress: Any) -> None:
        at_min = (now - t_start) / 60
        if self.disk_full_at is not None:
            self._disk_full(worker.port, now, t_start, at_min, progress)
        if self.kill9_at is not None and not faults_done(self.log, "kill9") and at_min >= self.kill9_at:
            metrics = _get(f"http://127.0.0.1:{worker.port}/metrics")
            self.before_kill["dead_lettered"] += _metric(metrics, "finsent_items_dead_lettered_total") or 0.0
            self.before_kill["store_retries"] += _metric(metrics, "finsent_store_retries_total") or 0.0
            assert worker.proc is not None
            worker.proc.kill()
            worker.proc.wait(30)
            worker.start()
            self.restarted_at = now
            self.log.append({"kind": "kill9", "at_s": round(now - t_start, 1)})
            progress(f"{at_min:5.1f} min: FAULT worker killed with SIGKILL and started again")
        if self.restarted_at is not None and worker.ready():
            kill = next(f for f in self.log if f["kind"] == "kill9")
            kill["ready_again_after_s"] = round(now - self.restarted_at, 1)
            self.restarted_at = None

    def _disk_full(self, mport: int, now: float, t_start: float, at_min: float, progress: Any) -> None:
        assert self.disk_full_at is not None and self.disk is not None
        if self.filler is None and not faults_done(self.log, "disk_full") and at_min >= self.disk_full_at:
            self.filler = _fill_disk(self.disk)
            self.full_since = now
            self.log.append({"kind": "disk_full", "at_s": round(now - t_start, 1), "readyz_while_full": []})
            progress(f"{at_min:5.1f} min: FAULT the store's disk is full")
        if self.filler is not None:
            said = _readyz(mport)
            seen = self.log[-1]["readyz_while_full"]
            if said not in seen and len(seen) < 5:
                seen.append(said)
            if now - self.full_since >= self.disk_full_s:
                self.filler.unlink()
                self.filler = None
                self.log[-1]["freed_at_s"] = round(now - t_start, 1)
                progress(f"{at_min:5.1f} min: FAULT cleared: space freed")


def _capacity(s: Settings, mport: int, texts: list[str], run: str, items: int, progress: Any) -> tuple[float, int]:
    """Items/s of a backlog of ``items`` through the worker, from the first row stored to the last; and the rows
    stored at the end. A busy machine that drains it slowly gives a low capacity, not an error."""
    progress(f"capacity: a backlog of {items} items")
    backlog = Counters()
    th = _producer(s, texts, 1e9, run, threading.Event(), backlog, "cap", limit=items)
    th.join(120)
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: _stored(mport)[0] > 0, 120, 0.5, what="the first row stored")
    t0, n0 = time.monotonic(), _stored(mport)[0]
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: _stored(mport)[0] >= backlog.acked, 600, 0.5, what="the capacity backlog stored")
    n1 = _stored(mport)[0]
    return (n1 - n0) / max(time.monotonic() - t0, 1e-6), n1


def _sample(
    worker: WorkerProcess, c: Counters, now: float, t_start: float, base_rows: int, last: tuple[int, float]
) -> dict[str, Any] | None:
    """One sample of the worker at ``now`` (RSS, rows, rate since ``last`` = (rows, monotonic time), metrics);
    None while its API does not answer (restarting, or busy)."""
    rows, _ = _stored(worker.port)
    if rows < 0:
        return None
    metrics = _get(f"http://127.0.0.1:{worker.port}/metrics")
    with c.lock:
        acked = c.acked
    assert worker.proc is not None
    return {
        "t_s": round(now - t_start, 1),
        "rss_mb": round(_rss_mb(worker.proc.pid), 1),
        "stored": rows - base_rows,
        "acked": acked,
        "stored_per_s": round((rows - last[0]) / max(now - last[1], 1e-6), 1),
        "dead_lettered": _metric(metrics, "finsent_items_dead_lettered_total"),
        "store_retries": _metric(metrics, "finsent_store_retries_total"),
        "lag": _metric(metrics, "finsent_consumer_lag_messages"),
    }


def _paced_run(
    worker: WorkerProcess,
    c: Counters,
    minutes: float,
    sample_s: float,
    base_rows: int,
    faults: _Faults,
    progress: Any,
) -> list[dict[str, Any]]:
    """The soak itself: ``minutes`` of sampling every ``sample_s`` while the producer runs, faults on time."""
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()
    next_sample = t_start
    last = (base_rows, t_start)
    while time.monotonic() - t_start < minutes * 60:
        if not worker.alive():
            raise SoakFailed(
                f"the worker exited with {worker.returncode} during the soak", hint=f"see {worker.log_path}"
            )
        now = time.monotonic()
        faults.step(worker, now, t_start, progress)
        if now >= next_sample:
            sample = _sample(worker, c, now, t_start, base_rows, last)
            if sample is None:  # restarting, or the API is busy: sample next time
                time.sleep(0.5)
                continue
            samples.append(sample)
            last = (sample["stored"] + base_rows, now)
            progress(
                f"{sample['t_s'] / 60:5.1f} min: RSS {sample['rss_mb']:.0f} MB, stored {sample['stored']}"
                f" / acked {sample['acked']}, {sample['stored_per_s']:.0f} items/s, lag {sample['lag']:.0f}"
            )
            next_sample += sample_s
        time.sleep(0.5)
    return samples


def soak(
    settings: Settings,
    minutes: float,
    fraction: float,
    sample_s: float,
    capacity_items: int,
    model_dir: str | None,
    progress: Any = print,
    *,
    disk_full_at: float | None = None,
    disk_full_s: float = 60.0,
    kill9_at: float | None = None,
    disk_mb: int = 2048,
) -> dict[str, Any]:
    from finsent.demo import load_tweets
    from finsent.stack import LocalStack
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    texts = [t["text"] for t in load_tweets()]
    c = Counters()
    stop_produce = threading.Event()
    stop_read = threading.Event()
    load_start = load_average()
    # the worker process holds the embedded store: the stack does not open it
    overrides = {"model_dir": model_dir} if model_dir else {}
    with LocalStack(settings, name="finsent-soak", open_store=False, **overrides) as stack:
        run = stack.run_id
        assert stack.workdir is not None
        disk = None
        if disk_full_at is not None:
            disk = stack.workdir / "disk"
            _mount_tmpfs(disk, disk_mb)
            stack.callback(lambda: _umount(disk))
        s = stack.settings.model_copy(update={"store": f"chdb://{(disk or stack.workdir) / 'chdb'}"})
        worker = stack.start_worker_process("soak", settings=s, log_name="worker.log")
        stack.callback(stop_read.set)  # at exit, the producer and the reader stop before the worker
        stack.callback(stop_produce.set)
        mport = worker.port
        assert worker.proc is not None
        progress(f"worker pid {worker.proc.pid}; waiting for it to serve its API")
        try:
            wait_until(lambda: _stored(mport)[0] >= 0, 120, 0.5, what="the worker's API")
        except WaitTimeout:
            raise SoakFailed("the worker did not start", hint=f"see {worker.log_path}") from None
        capacity, base_rows = _capacity(s, mport, texts, run, capacity_items, progress)
        rate = max(1.0, fraction * capacity)
        progress(f"capacity {capacity:.1f} items/s; offering {rate:.1f} items/s ({fraction:.0%}) for {minutes} min")
        reader = _scored_reader(s, stop_read, c)
        time.sleep(1.0)
        c.since = time.time() - 0.001
        producer = _producer(s, texts, rate, run, stop_produce, c, "soak")
        faults = _Faults(disk, disk_full_at, disk_full_s, kill9_at)
        samples = _paced_run(worker, c, minutes, sample_s, base_rows, faults, progress)
        stop_produce.set()
        producer.join(120)
        progress(f"draining: {c.acked} acknowledged")
        drained = _drain(lambda: _stored(mport)[0] - base_rows, c.acked, stall_s=120, cap_s=3600)
        time.sleep(3)
        rows, unique = _stored(mport)
        metrics = _get(f"http://127.0.0.1:{mport}/metrics")
        stop_read.set()
        reader.join(10)
        worker.stop(30)
        worker_log = worker.log_text()
    return _result(
        c,
        samples,
        faults,
        worker_log,
        metrics,
        minutes=minutes,
        fraction=fraction,
        capacity=capacity,
        rate=rate,
        rows=rows - base_rows,
        unique=unique - base_rows,
        drained=drained,
        load_start=load_start,
    )


def _umount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], check=False)


def _result(
    c: Counters,
    samples: list[dict[str, Any]],
    faults: _Faults,
    worker_log: str,
    metrics: str | None,
    *,
    minutes: float,
    fraction: float,
    capacity: float,
    rate: float,
    rows: int,
    unique: int,
    drained: bool,
    load_start: Any,
) -> dict[str, Any]:
    """The report of a finished soak, and whether it passed: every acknowledged item stored once, none dead."""
    lat = c.latencies
    rss = [x["rss_mb"] for x in samples]
    third = max(1, len(rss) // 3)
    result = {
        "hardware": hardware(),
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
        "minutes": minutes,
        "capacity_items_per_s": round(capacity, 1),
        "offered_items_per_s": round(rate, 1),
        "fraction": fraction,
        "produced_acked": c.acked,
        "produce_failed": c.failed,
        "stored": rows,
        "stored_unique": unique,
        "drained": drained,
        "dead_lettered": _metric(metrics, "finsent_items_dead_lettered_total") + faults.before_kill["dead_lettered"],
        "store_retries": _metric(metrics, "finsent_store_retries_total") + faults.before_kill["store_retries"],
        "faults": faults.log,
        "worker_errors_logged": sum(" ERROR " in ln for ln in worker_log.splitlines()),
        # the log goes with the temporary directory: keep the first error lines for the report
        "worker_error_lines": [ln[:300] for ln in worker_log.splitlines() if " ERROR " in ln][:10],
        "tracebacks_logged": worker_log.count("Traceback"),
        "scored_topic_records": c.scored_seen,
        "scored_topic_duplicates": c.scored_seen - len(c.scored_ids),
        "throughput_items_per_s": round(rows / (minutes * 60), 1),
        "latency_ms": {
            "p50": round(percentile(lat, 0.5) * 1000, 1),
            "p99": round(percentile(lat, 0.99) * 1000, 1),
            "max": round(max(lat) * 1000, 1) if lat else None,
            "samples": len(lat),
        },
        "rss_mb": {
            "first_third_mean": round(sum(rss[:third]) / third, 1) if rss else None,
            "last_third_mean": round(sum(rss[-third:]) / third, 1) if rss else None,
            "max": max(rss) if rss else None,
        },
        "samples": samples,
    }
    result["passed"] = bool(
        drained and result["stored"] == c.acked and result["stored_unique"] == c.acked and not result["dead_lettered"]
    )
    return result


def faults_done(faults: list[dict[str, Any]], kind: str) -> bool:
    return any(f["kind"] == kind for f in faults)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in result["samples"]]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(t, [s["rss_mb"] for s in result["samples"]], color="tab:blue")
    ax1.set_ylabel("worker RSS (MB)")
    ax1.set_ylim(bottom=0)
    ax1.set_title(
        f"finsent soak: {result['minutes']:g} min at {result['offered_items_per_s']:.0f} items/s "
        f"({result['fraction']:.0%} of {result['capacity_items_per_s']:.0f}); stored {result['stored']} "
        f"of {result['produced_acked']} acked"
    )
    ax2.plot(t, [s["stored_per_s"] for s in result["samples"]], color="tab:green", label="stored items/s")
    ax2.axhline(result["offered_items_per_s"], color="grey", linestyle="--", label="offered")
    ax2.set_ylabel("items/s")
    ax2.set_xlabel("minutes")
    for f in result.get("faults", []):  # the injected faults, on both panels
        start = f["at_s"] / 60
        for ax in (ax1, ax2):
            if f["kind"] == "disk_full":
                ax.axvspan(
                    start,
                    f.get("freed_at_s", f["at_s"]) / 60,
                    color="tab:red",
                    alpha=0.15,
                    label="store disk full" if ax is ax2 else None,
                )
            else:
                ax.axvline(start, color="tab:red", linestyle=":", label="worker killed (-9)" if ax is ax2 else None)
    ax2.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_section(r: dict[str, Any], command: str) -> str:
    la0, la1 = r["load_avg_start"], r["load_avg_end"]
    busy = " (busy machine)" if max((la0 or (0,))[0], (la1 or (0,))[0]) > 1.0 else ""
    lat, rss = r["latency_ms"], r["rss_mb"]
    return "\n".join(
        [
            "## Soak",
            "",
            f"`{command}` on {r['hardware']}; load average at start {la0}, at end {la1}{busy}.",
            "",
            "| | |",
            "|---|---|",
            f"| capacity (backlog through the worker, same run) | {r['capacity_items_per_s']} items/s |",
            f"| offered | {r['offered_items_per_s']} items/s ({r['fraction']:.0%}) for {r['minutes']:g} min |",
            f"| acknowledged by the broker / stored / distinct ids | {r['produced_acked']} / {r['stored']} / "
            f"{r['stored_unique']} |",
            f"| dead-lettered / store retries / worker ERROR lines / tracebacks | {r['dead_lettered']:g} / "
            f"{r['store_retries']:g} / {r['worker_errors_logged']} / {r['tracebacks_logged']} |",
            f"| latency ingest -> scored topic (after the store), p50 / p99 / max | {lat['p50']} / {lat['p99']} / "
            f"{lat['max']} ms ({lat['samples']} items) |",
            f"| worker RSS, mean of first third / last third / max | {rss['first_third_mean']} / "
            f"{rss['last_third_mean']} / {rss['max']} MB |",
            f"| duplicates on the scored topic (at-least-once; the store is exact) | {r['scored_topic_duplicates']} |",
            *[
                f"| fault: {f['kind']} at {f['at_s']} s | "
                + ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("kind", "at_s"))
                + " |"
                for f in r.get("faults", [])
            ],
            f"| result | {'PASS' if r['passed'] else 'FAIL'}: stored == produced, each once |",
            "",
            "![soak](soak.png)",
            "",
        ]
    )


def run_soak(args: argparse.Namespace, settings: Settings) -> int:
    r = soak(
        settings,
        args.minutes,
        args.fraction,
        args.sample_s,
        args.capacity_items,
        args.model_dir,
        progress=lambda m: print(f"soak: {m}", file=sys.stderr, flush=True),
        disk_full_at=args.disk_full_at,
        disk_full_s=args.disk_full_s,
        kill9_at=args.kill9_at,
    )
    if args.png:
        plot(r, Path(args.png))
    emit_json(args.json, r)
    if args.write_results:
        write_section(Path(args.write_results), results_section(r, " ".join(["finsent", *sys.argv[1:]])), "Soak")
    if not to_stdout(args.json):
        print(json.dumps({k: v for k, v in r.items() if k != "samples"}, indent=2))
    if not r["passed"]:
        raise SoakFailed(
            f"soak failed: {r['stored']} stored ({r['stored_unique']} distinct) of "
            f"{r['produced_acked']} acknowledged, {r['dead_lettered']:g} dead-lettered",
            hint="see the worker's log above and `finsent bench soak --help`",
        )
    return 0


def register(bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "soak",
        help="a long run at 80%% of capacity: throughput, latency, RSS over time, stored == produced",
        description=plain_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  finsent bench soak --minutes 30 --png bench/soak.png --json bench/soak.json "
        "--write-results bench/RESULTS.md\n  finsent bench soak --minutes 2 --fraction 0.5\n"
        "  finsent bench soak --minutes 30 --disk-full-at 10 --disk-full-s 60 --kill9-at 20   (as root)",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="length of the paced run (default 30)")
    p.add_argument("--fraction", type=float, default=0.8, help="offered load as a fraction of capacity (0.8)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--capacity-items", type=int, default=2000, help="backlog used to measure capacity (2000)")
    p.add_argument("--model-dir", help="model directory (default: the shipped model)")
    p.add_argument(
        "--disk-full-at",
        type=float,
        metavar="MIN",
        help="fill the store's disk (its own tmpfs; needs root) at this minute of the run",
    )
    p.add_argument(
        "--disk-full-s",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the disk stays full before the filler is deleted (default 60)",
    )
    p.add_argument("--kill9-at", type=float, metavar="MIN", help="SIGKILL the worker at this minute, then restart it")
    p.add_argument("--png", metavar="OUT", help="plot RSS and throughput over time to this PNG")
    add_json_option(p, "the results, with every sample")
    p.add_argument("--write-results", metavar="FILE", help="replace the '## Soak' section of FILE")
    p.set_defaults(func=run_soak)
