"""``finsent retrain --entities``: where the entity head's FinEntity data comes from (issue 24)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finsent.cli.registry import _entities_option
from finsent.core.errors import ConfigError


def test_entities_option_maps_default_none_and_a_file(tmp_path: Path) -> None:
    data = tmp_path / "fe.json"
    data.write_text("[]")
    assert _entities_option(None) is None  # the data directory's finentity/train.json when present
    assert _entities_option("none") == "" and _entities_option(" NONE ") == ""  # carry the head unchanged
    assert _entities_option(str(data)) == str(data)
    with pytest.raises(ConfigError, match="no such file"):
        _entities_option(str(tmp_path / "missing.json"))


def test_a_missing_entities_file_is_one_line_before_any_training(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "retrain", "--entities", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"FINSENT_REGISTRY": str(tmp_path / "registry"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == ConfigError.exit_code, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and "missing.json: no such file" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
