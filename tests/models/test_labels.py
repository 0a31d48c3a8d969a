"""Human labels on real stores (clickhouse-server 18.16 and chdb): ``finsent label`` ITEM_ID / import / queue.

Every behaviour the CLI documents is checked on both engines: the old label read from the store, unknown
ids and labels, duplicate rows (last wins), re-imports that change nothing, text that is not stored,
the queue's order and exclusions, and the one-line error while another process holds the chdb store.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from finsent.cli import main
from finsent.core.errors import InputError, StoreInUse
from finsent.core.events import RawItem, ScoredItem, stable_id, utcnow
from finsent.core.store import Label
from finsent.stream.store import open_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels are checked against the shipped model's labels.json, not a registry on this machine."""
    monkeypatch.setenv("FINSENT_REGISTRY", "")
    monkeypatch.delenv("FINSENT_MODEL_DIR", raising=False)


@pytest.fixture(params=["clickhouse", "chdb"])
def store_url(request: pytest.FixtureRequest) -> str:  # as in test_store_engines: both engines, a fresh database
    return request.getfixturevalue(f"{request.param}_db_url")


@pytest.fixture
def store(store_url: str) -> Iterator:
    s = open_store(store_url)
    s.ensure_schema()
    yield s
    s.close()


def scored(
    i: int,
    p_neg: float,
    p_neu: float,
    topic: str = "Macro",
    topic_prob: float = 0.9,
    age: timedelta = timedelta(minutes=5),
    model_version: str = "m1",
) -> ScoredItem:
    probs = {"negative": p_neg, "neutral": p_neu, "positive": round(1 - p_neg - p_neu, 6)}
    item = RawItem(
        id=f"item-{i}", source="test-feed", source_type="news", text=f"headline number {i}", ingested_at=utcnow() - age
    )
    return ScoredItem(
        item=item,
        sentiment=max(probs, key=probs.__getitem__),
        sentiment_probs=probs,
        topic=topic,
        topic_prob=topic_prob,
        model_version=model_version,
        scored_at=utcnow(),
    )


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    rc = main(["--store", url, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def physical_labels(store) -> int:
    return int(store.query(f"SELECT count() FROM {store.database}.labels")[0][0])


def write_csv(path: Path, rows: list[list[str]]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


# --- the store methods ----------------------------------------------------------------------------


def test_store_keeps_the_newest_label_per_task_and_id(store) -> None:
    t0 = utcnow()
    store.insert_labels(
        [
            Label("a", "sentiment", "negative", text="t a", old_label="neutral", by="x", at=t0),
            Label("a", "topic", "Macro", text="t a", by="x", at=t0),
        ]
    )
    store.insert_labels(
        [Label("a", "sentiment", "positive", text="t a", by="y", at=t0 + timedelta(seconds=1), note="second look")]
    )
    rows = store.labels()
    assert [(r.id, r.task, r.label, r.by) for r in rows] == [
        ("a", "sentiment", "positive", "y"),
        ("a", "topic", "Macro", "x"),
    ]
    assert rows[0].note == "second look" and rows[0].text == "t a"
    assert abs((rows[0].at - (t0 + timedelta(seconds=1))).total_seconds()) < 0.002  # ms kept
    assert [r.task for r in store.labels(task="topic")] == ["topic"]
    assert {(r.task, r.id) for r in store.labels(ids=["a", "b"])} == {("sentiment", "a"), ("topic", "a")}
    with pytest.raises(ValueError, match="task"):
        store.insert_labels([Label("a", "mood", "happy")])


# --- finsent label ITEM_ID --------------------------------------------------------------------------


def test_label_one_item_reads_the_old_label_and_text(store, store_url, capsys) -> None:
    store.insert_scored([scored(1, 0.7, 0.2, topic="Earnings")])
    rc, out, err = cli(
        capsys,
        store_url,
        "label",
        "item-1",
        "--sentiment",
        "Positive",
        "--topic",
        "macro",
        "--by",
        "alice",
        "--note",
        "beat estimates",
    )
    assert rc == 0, err
    assert "item-1: sentiment positive (model said negative); topic Macro (model said Earnings); by alice" in out
    rows = {r.task: r for r in store.labels()}
    assert rows["sentiment"].label == "positive" and rows["sentiment"].old_label == "negative"
    assert rows["topic"].label == "Macro" and rows["topic"].old_label == "Earnings"
    assert rows["topic"].text == "headline number 1" and rows["topic"].by == "alice"
    assert rows["topic"].note == "beat estimates" and rows["topic"].origin == "cli"

    # the same correction again writes nothing; a different one replaces the first
    rc, out, _ = cli(capsys, store_url, "label", "item-1", "--sentiment", "positive", "--note", "beat estimates")
    assert rc == 0 and "unchanged" in out and physical_labels(store) == 2
    rc, _, _ = cli(capsys, store_url, "label", "item-1", "--sentiment", "neutral", "--by", "bob")
    assert rc == 0 and physical_labels(store) == 3
    assert [(r.task, r.label, r.by) for r in store.labels()] == [
        ("sentiment", "neutral", "bob"),
        ("topic", "Macro", "alice"),
    ]


def test_label_unknown_id_unknown_label_or_no_label_is_one_line(store, store_url, capsys) -> None:
    store.insert_scored([scored(1, 0.7, 0.2)])
    rc, _, err = cli(capsys, store_url, "label", "item-404", "--sentiment", "negative")
    assert rc == InputError.exit_code
    assert err.startswith("finsent: error: no stored item has the id 'item-404'") and "hint:" in err
    assert "label import" in err and len(err.strip().splitlines()) == 1

    rc, _, err = cli(capsys, store_url, "label", "item-1", "--sentiment", "bearish")
    assert rc == InputError.exit_code
    assert "unknown sentiment label 'bearish'" in err and "valid sentiment labels: negative, neutral, positive" in err
    rc, _, err = cli(capsys, store_url, "label", "item-1", "--topic", "Crypto")
    assert rc == InputError.exit_code and "Fed | Central Banks" in err  # the model's topic labels are listed

    rc, _, err = cli(capsys, store_url, "label", "item-1")
    assert rc == InputError.exit_code and "--sentiment" in err
    assert store.labels() == []


# --- finsent label import -----------------------------------------------------------------------


def test_import_ids_reports_bad_rows_last_duplicate_wins_and_reimport_changes_nothing(
    store, store_url, capsys, caplog, tmp_path: Path
) -> None:
    store.insert_scored([scored(i, 0.7, 0.2, topic="Earnings") for i in range(1, 5)])
    path = write_csv(
        tmp_path / "labels.csv",
        [
            ["id", "sentiment", "topic", "comment"],
            ["item-1", "negative", "Macro", "both labels"],  # line 2
            ["item-2", "Neutral", "", "sentiment only"],  # 3
            ["item-404", "negative", "", "unknown id"],  # 4
            ["item-3", "bearish", "", "unknown label"],  # 5
            ["item-4", "", "", "nothing to import"],  # 6
            ["", "positive", "", "empty id"],  # 7
            ["item-2", "positive", "", "duplicate: wins over line 3"],  # 8
        ],
    )
    rc, out, err = cli(capsys, store_url, "label", "import", path, "--by", "desk")
    assert rc == InputError.exit_code
    report = json.loads(out)
    assert (report["rows"], report["imported"], report["unchanged"], report["empty"]) == (7, 3, 0, 1)
    assert [(e["line"], e["reason"]) for e in report["errors"]] == [
        (4, "unknown_id"),
        (5, "unknown_label"),
        (7, "empty_id"),
    ]
    assert report["error_count"] == 3
    assert report["duplicates"] == [{"line": 3, "replaced_by": 8, "id": "item-2", "task": "sentiment"}]
    assert f"{path}:4: not imported: unknown_id" in caplog.text
    assert f"{path}:5: not imported: unknown_label" in caplog.text
    assert f"{path}:3: sentiment of item-2 given again on line 8" in caplog.text
    assert err.strip().splitlines()[-1].startswith(f"finsent: error: {path}: 3 row(s) not imported")
    got = {(r.id, r.task): (r.label, r.old_label, r.by, r.origin) for r in store.labels()}
    assert got == {
        ("item-1", "sentiment"): ("negative", "negative", "desk", "import:labels.csv"),
        ("item-1", "topic"): ("Macro", "Earnings", "desk", "import:labels.csv"),
        ("item-2", "sentiment"): ("positive", "negative", "desk", "import:labels.csv"),
    }

    # the same file again: the same errors, nothing written
    written = physical_labels(store)
    rc, out, _ = cli(capsys, store_url, "label", "import", path)
    report = json.loads(out)
    assert rc == InputError.exit_code and (report["imported"], report["unchanged"]) == (0, 3)
    assert physical_labels(store) == written

    # a clean file imports with exit 0, and twice changes nothing
    clean = write_csv(tmp_path / "clean.csv", [["id", "topic", "note"], ["item-3", "Dividend", "payout"]])
    rc, out, _ = cli(capsys, store_url, "label", "import", clean)
    assert rc == 0 and json.loads(out)["imported"] == 1
    rc, out, _ = cli(capsys, store_url, "label", "import", clean)
    assert rc == 0 and (json.loads(out)["imported"], json.loads(out)["unchanged"]) == (0, 1)
    assert physical_labels(store) == written + 1


def test_import_text_that_is_not_stored(store, store_url, capsys, tmp_path: Path) -> None:
    store.insert_scored([scored(1, 0.7, 0.2)])
    path = write_csv(
        tmp_path / "new.csv",
        [
            ["text", "label", "topic"],
            ["Fed signals a pause in rate hikes", "neutral", "Fed | Central Banks"],
            ["Acme beats on revenue", "positive", ""],
            ["", "negative", ""],  # line 4: empty text
            ["Acme beats on revenue", "", "Earnings"],  # same text: the same id, another task
        ],
    )
    rc, out, err = cli(capsys, store_url, "label", "import", path)
    report = json.loads(out)
    assert rc == InputError.exit_code and [(e["line"], e["reason"]) for e in report["errors"]] == [(4, "empty_text")]
    assert report["imported"] == 4 and report["duplicates"] == []
    fed, acme = stable_id("Fed signals a pause in rate hikes"), stable_id("Acme beats on revenue")
    got = {(r.id, r.task): (r.label, r.old_label, r.text) for r in store.labels()}
    assert got == {
        (fed, "sentiment"): ("neutral", "", "Fed signals a pause in rate hikes"),
        (fed, "topic"): ("Fed | Central Banks", "", "Fed signals a pause in rate hikes"),
        (acme, "sentiment"): ("positive", "", "Acme beats on revenue"),
        (acme, "topic"): ("Earnings", "", "Acme beats on revenue"),
    }


def test_import_refuses_a_file_that_cannot_hold_labels(store_url, capsys, tmp_path: Path) -> None:
    rc, _, err = cli(capsys, store_url, "label", "import", write_csv(tmp_path / "a.csv", [["id", "note"], ["x", "y"]]))
    assert rc == InputError.exit_code and "no label column" in err
    rc, _, err = cli(capsys, store_url, "label", "import", write_csv(tmp_path / "b.csv", [["headline", "label"]]))
    assert rc == InputError.exit_code and "needs an id column" in err
    rc, _, err = cli(capsys, store_url, "label", "import", str(tmp_path / "missing.csv"))
    assert rc == InputError.exit_code and "cannot read" in err


# --- finsent label queue ----------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_queue_least_confident_first_without_labelled_or_old_items_and_imports_back(
    store, store_url, capsys, tmp_path: Path
) -> None:
    # top sentiment probability: item-1 0.9, item-2 0.4, item-3 0.6, item-4 0.35, item-5 0.5, item-6 0.8
    store.insert_scored(
        [
            scored(1, 0.9, 0.05, topic_prob=0.3),
            scored(2, 0.4, 0.35, topic_prob=0.95),
            scored(3, 0.2, 0.6, topic_prob=0.5),
            scored(4, 0.35, 0.33, topic_prob=0.9),
            scored(5, 0.5, 0.3, topic_prob=0.8),
            scored(6, 0.1, 0.1, topic_prob=0.2),
            scored(7, 0.34, 0.33, age=timedelta(days=3)),  # the least confident of all, but older than --since
        ]
    )
    store.insert_labels([Label("item-4", "sentiment", "neutral", text="x")])  # labelled: left out
    out_csv = tmp_path / "queue.csv"
    rc, out, err = cli(capsys, store_url, "label", "queue", "--n", "3", "--since", "1d", "--csv", str(out_csv))
    assert rc == 0, err
    assert json.loads(out) == {
        "written": 3,
        "csv": str(out_csv),
        "strategy": "uncertain",
        "task": "sentiment",
        "since_s": 86400,
    }
    rows = read_csv(out_csv)
    assert [r["id"] for r in rows] == ["item-2", "item-5", "item-3"]
    assert list(rows[0])[:3] == ["id", "sentiment", "topic"] and rows[0]["sentiment"] == rows[0]["topic"] == ""
    assert rows[0]["predicted_sentiment"] == "negative" and float(rows[0]["uncertainty"]) == pytest.approx(0.6)
    assert rows[0]["text"] == "headline number 2" and float(rows[0]["p_neutral"]) == pytest.approx(0.35)

    # the topic head ranks by 1 - topic_prob; a topic label does not hide an item from the sentiment queue
    store.insert_labels([Label("item-6", "topic", "Macro", text="x")])
    rc, _, _ = cli(
        capsys, store_url, "label", "queue", "--n", "2", "--task", "topic", "--since", "1d", "--csv", str(out_csv)
    )
    assert rc == 0 and [r["id"] for r in read_csv(out_csv)] == ["item-1", "item-3"]

    # the default window (7d) holds item-7; the CSV imports as it is (nothing filled in: nothing
    # imported), then with one row filled in
    rc, _, _ = cli(capsys, store_url, "label", "queue", "--n", "10", "--csv", str(out_csv))
    rows = read_csv(out_csv)
    assert rc == 0 and [r["id"] for r in rows] == ["item-7", "item-2", "item-5", "item-3", "item-6", "item-1"]
    rc, out, _ = cli(capsys, store_url, "label", "import", str(out_csv))
    assert rc == 0 and (json.loads(out)["empty"], json.loads(out)["imported"]) == (6, 0)
    rows[0]["sentiment"] = "neutral"
    with open(out_csv, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc, out, _ = cli(capsys, store_url, "label", "import", str(out_csv))
    assert rc == 0 and json.loads(out)["imported"] == 1
    rc, _, _ = cli(capsys, store_url, "label", "queue", "--n", "10", "--csv", str(out_csv))
    assert [r["id"] for r in read_csv(out_csv)] == ["item-2", "item-5", "item-3", "item-6", "item-1"]


def test_random_queue_is_reproducible_for_a_seed(store, store_url, capsys, tmp_path: Path) -> None:
    store.insert_scored([scored(i, 0.5, 0.3) for i in range(30)])
    store.insert_labels([Label("item-0", "sentiment", "neutral", text="x")])

    def queue(seed: int) -> list[str]:
        rc, out, _ = cli(
            capsys,
            store_url,
            "label",
            "queue",
            "--n",
            "10",
            "--strategy",
            "random",
            "--seed",
            str(seed),
            "--csv",
            str(tmp_path / "r.csv"),
        )
        assert rc == 0 and json.loads(out)["seed"] == seed
        return [r["id"] for r in read_csv(tmp_path / "r.csv")]

    first = queue(7)
    assert queue(7) == first and len(set(first)) == 10 and "item-0" not in first
    assert queue(8) != first
    # the same seed gives the same sample on both engines: the order is a hash of the id and the seed
    assert first == [r["id"] for r in store.label_queue(10, since=timedelta(days=1), strategy="random", seed=7)]


# --- the embedded store held by a worker ----------------------------------------------------------


ENV = {**os.environ, "PYTHONPATH": str(REPO), "FINSENT_REGISTRY": ""}


@contextmanager
def chdb_held_by_another_process(url: str) -> Iterator[None]:
    """A second process that opens the chdb store at ``url`` and keeps it, as a running worker does."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from finsent.stream.store import open_store; s = open_store(sys.argv[1]); "
            "s.ensure_schema(); print('held', flush=True); sys.stdin.read()",
            url,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("", timeout=30)


def finsent_subprocess(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", *argv], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60
    )


def test_label_commands_while_another_process_holds_the_chdb_store(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'held'}"
    csv_path = write_csv(tmp_path / "l.csv", [["id", "sentiment"], ["item-1", "negative"]])
    with chdb_held_by_another_process(url):
        for argv in (
            ["item-1", "--sentiment", "negative"],
            ["import", csv_path],
            ["queue", "--n", "5", "--csv", str(tmp_path / "q.csv")],
        ):
            proc = finsent_subprocess("--store", url, "label", *argv)
            last = proc.stderr.splitlines()[-1]
            assert proc.returncode == StoreInUse.exit_code, proc.stderr
            assert "Traceback" not in proc.stderr
            assert last.startswith("finsent: error: finsent label ") and "in use by process" in last
            assert "API is read-only" in last
