"""``finsent score`` with the tiny test model: CSV, JSONL, text/stdin, bad rows, input order, exit codes.

Runs the real command line (``finsent.cli.main``) in-process, and once as a subprocess with a real stdin pipe.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finsent.cli import main
from finsent.models.runtime import Classifier
from finsent.models.testing import make_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def _score(tiny_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    rc = main(["score", "--model-dir", str(tiny_dir), "--variant", "fp32", "--quiet", *args])
    captured = capsys.readouterr()
    return rc, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_csv_with_titles_ids_and_bad_rows(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "news.csv"
    f.write_text(
        "id,title,text,label\n"
        "a1,Tesla shares crash 15%,Deliveries missed estimates.,x\n"
        "a2,,   ,x\n"  # empty text: an error line in its place
        ",,Apple (AAPL) and $MSFT rise,x\n"  # no id: FILE:ROW
        '"multi\nline",,"Bitcoin, ""quoted"" 🚀",x\n',
        encoding="utf-8",
    )
    rc, out, _ = _score(tiny_dir, capsys, str(f))
    assert rc == 0
    assert [o["id"] for o in out] == ["a1", "a2", "news.csv:3", "multi\nline"]
    assert out[1] == {"id": "a2", "error": "empty_text", "detail": "no text to score", "file": "news.csv", "line": 3}
    first = out[0]
    assert set(first) == {"id", "sentiment", "sentiment_probs", "topic", "topic_prob", "truncated", "entities"}
    (tesla,) = first["entities"]
    assert tesla == {
        "text": "Tesla",
        "start": 0,
        "end": 5,
        "sentiment": "neutral",
        "sentiment_probs": {"negative": 0.0, "neutral": 1.0, "positive": 0.0},
        "entity_id": "TSLA",
        "name": "Tesla",
        "relevance": 100,
    }
    scored = "Apple (AAPL) and $MSFT rise"
    assert {(e["entity_id"], scored[e["start"] : e["end"]]) for e in out[2]["entities"]} == {
        ("AAPL", "Apple"),
        ("MSFT", "$MSFT"),
    }
    assert [e["entity_id"] for e in out[3]["entities"]] == ["X:BTC"]


def test_same_scores_as_the_classifier(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": 7, "title": "Fed hikes", "text": "Markets fall."}, {"text": "Gold prices rise"}]
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    rc, out, _ = _score(tiny_dir, capsys, str(f))
    assert rc == 0
    clf = Classifier.load(tiny_dir, variant="fp32", threads=1)
    preds = clf.predict([r["text"] for r in rows], titles=[r.get("title") for r in rows])
    for o, p in zip(out, preds, strict=True):
        assert o["sentiment"] == p.sentiment and o["topic"] == p.topic
        assert o["sentiment_probs"] == pytest.approx(p.sentiment_probs, abs=1e-5)
        assert o["entities"] == [m.to_dict() for m in p.entities]
    assert out[0]["id"] == "7" and out[1]["id"] == "in.jsonl:2"
    assert out[0]["entities"][0]["entity_id"] == "CB:FED"


def test_jsonl_bad_rows_keep_order(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_text(
        '{"text": "oil falls"}\n'
        "not json\n"
        "\n"
        '["a", "list"]\n'
        '{"text": 5}\n'
        '{"text": "ok", "title": 3}\n'
        '{"id": "z", "text": "Apple rises"}\n',
        encoding="utf-8",
    )
    rc, out, _ = _score(tiny_dir, capsys, str(f))
    assert rc == 0
    assert [o.get("error") for o in out] == [None, "not_json", "not_object", "bad_type", "bad_type", None]
    assert [o.get("line") for o in out[1:5]] == [2, 4, 5, 6]
    assert out[-1]["id"] == "z" and out[-1]["entities"][0]["entity_id"] == "AAPL"


def test_stdin_text_lines_in_process(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Ünïcödé Nestlé 📉 falls\n\n$BRK.B up\n"))
    rc, out, _ = _score(tiny_dir, capsys)
    assert rc == 0
    assert [o["id"] for o in out] == ["stdin:1", "stdin:2"]
    e = out[0]["entities"][0]
    assert "Ünïcödé Nestlé 📉 falls"[e["start"] : e["end"]] == "Nestlé"
    assert out[1]["entities"][0]["entity_id"] == "BRK.B"


def test_total_failure_exits_4_and_missing_file(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text("nope\n{}\n", encoding="utf-8")
    rc, out, err = _score(tiny_dir, capsys, str(f))
    assert rc == 4 and [o["error"] for o in out] == ["not_json", "empty_text"]
    assert "no row could be scored" in err
    no_text = tmp_path / "cols.csv"
    no_text.write_text("title,id\nx,1\n", encoding="utf-8")
    rc, out, err = _score(tiny_dir, capsys, str(no_text))
    assert rc == 4 and out == [] and "'text' column" in err
    rc, out, err = _score(tiny_dir, capsys, str(tmp_path / "missing.csv"))
    assert rc == 4 and "cannot read" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    rc, out, err = _score(tiny_dir, capsys, str(empty))
    assert (rc, out) == (0, [])


def test_stdin_pipe_subprocess(tiny_dir: Path) -> None:
    env = {**os.environ, "FINSENT_CACHE_DIR": str(tiny_dir.parent / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finsent",
            "score",
            "-",
            "--format",
            "jsonl",
            "--model-dir",
            str(tiny_dir),
            "--variant",
            "fp32",
        ],
        input=b'{"id": "x", "title": "Bitcoin slides", "text": "ETH too"}\n{bad\n',
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [o["id"] for o in out] == ["x", "stdin:2"] and out[1]["error"] == "not_json"
    scored = "Bitcoin slides\n\nETH too"
    assert [(e["entity_id"], scored[e["start"] : e["end"]]) for e in out[0]["entities"]] == [
        ("X:BTC", "Bitcoin"),
        ("X:ETH", "ETH"),
    ]


def test_eval_finentity_json(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paras = [
        {
            "content": "Apple beats while Microsoft lags.",
            "annotations": [
                {"start": 0, "end": 5, "value": "Apple", "label": "Positive"},
                {"start": 20, "end": 29, "value": "Microsoft", "label": "Negative"},
            ],
        },  # shifted offsets
        {"content": "Zyx collapses.", "annotations": [{"start": 0, "end": 3, "value": "Zyx", "label": "Negative"}]},
    ]
    f = tmp_path / "fe.json"
    f.write_text(json.dumps(paras), encoding="utf-8")
    assert main(["eval", str(f), "--model-dir", str(tiny_dir), "--variant", "fp32", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert (r["task"], r["n"], r["gold_spans"]) == ("entities", 2, 3)
    assert (r["span"]["tp"], r["span"]["fp"], r["span"]["fn"]) == (2, 0, 1)
    assert (r["span"]["precision"], r["span"]["recall"], r["span"]["f1"]) == (1.0, 0.6667, 0.8)
    assert r["span_sentiment"]["f1"] == 0.0  # gazetteer-only spans are neutral; gold says positive/negative
    assert r["linked"] == 0.6667
    bad = tmp_path / "bad.json"
    bad.write_text('[{"content": "x", "annotations": [{"value": 3}]}]', encoding="utf-8")
    assert main(["eval", str(bad), "--model-dir", str(tiny_dir), "--variant", "fp32"]) == 4
