"""One spelling for JSON output: a bare ``--json`` prints only JSON; ``--json OUT`` writes it and keeps the text."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from finsent.core.errors import InputError
from finsent.core.jsonout import add_json_option, emit_json, to_stdout


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_json_option(p, "x")
    return p.parse_args(argv)


def test_the_three_forms() -> None:
    assert _parse([]).json is None
    assert _parse(["--json"]).json == "-" and to_stdout("-")
    assert _parse(["--json", "-"]).json == "-"
    assert _parse(["--json", "out.json"]).json == "out.json" and not to_stdout("out.json")


def test_emit_json_prints_or_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emit_json("-", {"a": 1})
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    emit_json(tmp_path / "sub" / "o.json", {"b": [1, 2]})
    assert json.loads((tmp_path / "sub" / "o.json").read_text()) == {"b": [1, 2]}
    assert capsys.readouterr().out == ""
    emit_json(None, {"c": 3})
    assert capsys.readouterr().out == ""
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="cannot write"):
        emit_json(tmp_path / "dir", {})


def test_every_json_flag_takes_an_optional_out() -> None:
    """No command keeps a store_true --json or a mandatory --json OUT (read from the real parsers)."""
    from finsent.cli import command_table

    bad = [
        c.name
        for c in command_table().values()
        for action in c.parser._actions
        if "--json" in action.option_strings and (action.nargs != "?" or action.const != "-")
    ]
    assert not bad, f"--json must be `--json [OUT]` everywhere: {bad}"


@pytest.mark.integration
def test_query_count_json_on_stdout_or_to_a_file(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    base = [sys.executable, "-m", "finsent", "--store", store, "query", "count"]
    out = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"rows": 0, "unique_ids": 0}
    target = tmp_path / "count.json"
    out = subprocess.run([*base, "--json", str(target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "0 items" in out.stdout and json.loads(target.read_text()) == {"rows": 0, "unique_ids": 0}
