"""Replay holds bounded memory whatever the file (issue 22, minor): a 50 MB line took it to 975 MB, a 1 GB
JSON array to 2.5 GB, against a 512 MiB ingest pod limit. Now a line over MAX_LINE_CHARS is a bad row
read in chunks, and a JSON array over MAX_JSON_ARRAY_BYTES is refused with a one-line hint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finsent.ingest import replay
from finsent.ingest.replay import ReplayInputError


def test_a_line_over_the_limit_is_one_bad_row_and_the_rest_flows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(replay, "MAX_LINE_CHARS", 1000)
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "Acme rises"}),
        json.dumps({"id": "long", "text": "x" * 5000}),
        json.dumps({"id": "b", "text": "Acme falls"}),
        json.dumps({"id": "exact", "text": "y" * (1000 - 30)}),
    ]
    path.write_text("\n".join(lines) + "\n")
    got = list(replay._rows(path, "utf-8"))
    assert [(r.line, r.reason or None) for r in got] == [(1, None), (2, "too_long"), (3, None), (4, None)]
    assert got[2].data["id"] == "b"


def test_bounded_lines_never_reads_past_the_limit_in_one_piece(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("ab\n" + "c" * 25 + "\n" + "d" * 10 + "\nlast")
    with path.open() as fh:
        assert list(replay._bounded_lines(fh, 10)) == ["ab\n", None, "d" * 10 + "\n", "last"]


def test_a_json_array_over_the_limit_is_refused_with_a_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(replay, "MAX_JSON_ARRAY_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"id": str(i), "text": "Acme rises"} for i in range(20)]))
    with pytest.raises(ReplayInputError) as err:
        list(replay._rows(path, "utf-8"))
    assert "JSON lines" in str(err.value.hint) and "jq" in str(err.value.hint)


@pytest.mark.integration
def test_replaying_a_50_mb_line_stays_small(tmp_path: Path) -> None:
    """``finsent ingest replay --dry-run`` of a file with one 50 MB line between two good ones: exit 0,
    the two good items out, the long one reported, and the child's peak RSS under 300 MB."""
    path = tmp_path / "huge.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"id": "g1", "text": "Acme shares rise"}) + "\n")
        f.write('{"id": "huge", "text": "' + "z" * (50 * 1024 * 1024) + '"}\n')
        f.write(json.dumps({"id": "g2", "text": "Acme shares fall"}) + "\n")
    # the child reports its own peak RSS at exit: VmHWM of its own memory map. (ru_maxrss would not do: Linux
    # carries it across exec, so a child forked from a big pytest process starts with the parent's peak.)
    code = (
        "import atexit, re, sys\n"
        "atexit.register(lambda: print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', "
        "open('/proc/self/status').read()).group(1), file=sys.stderr))\n"
        "from finsent.cli import main\n"
        f"sys.exit(main(['ingest', 'replay', {str(path)!r}, '--dry-run']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "FINSENT_INGEST_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)},
    )
    peak_mb = int(out.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024
    assert out.returncode == 0, out.stderr[-2000:]
    docs = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert [d["id"] for d in docs if "id" in d] == ["g1", "g2"], out.stdout[-500:]
    summary = docs[-1]
    assert summary["produced"] == 2 and [b["reason"] for b in summary["bad_rows"]] == ["too_long"], summary
    assert peak_mb < 300, peak_mb
