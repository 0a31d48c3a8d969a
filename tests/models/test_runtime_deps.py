"""The runtime needs no training stack: transformers and torch are the ``train`` extra (issue 23).

A plain ``pip install finsent`` (the README's demo command) installs neither. This test runs the
worker's scoring path in a child process where importing ``transformers`` or ``torch`` raises, so a
stray import on the hot path, in the store, the worker or the CLI fails here instead of on a
newcomer's machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"transformers", "torch"}:
                raise ImportError(f"{name} is blocked: the runtime must not need it", name=name)
            return None

    sys.meta_path.insert(0, _Blocked())

    import finsent.cli  # the whole command line, as `finsent --help` loads it
    import finsent.stream.worker
    from finsent import Classifier
    from finsent.core.settings import load_settings
    from finsent.stream.store import open_store

    clf = Classifier.load(variant="int8", threads=1)
    [p] = clf.predict(["Microsoft shares plunge 28% after profit warning"])
    assert p.sentiment == "negative", p
    assert any(e.entity_id == "MSFT" for e in p.entities), p.entities
    store = open_store(f"chdb://{sys.argv[1]}")
    store.close()
    print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {"transformers", "torch"}))
    """
)


def test_runtime_scores_and_stores_without_transformers_or_torch(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINSENT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ok []"


def test_transformers_and_torch_are_only_in_the_train_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert not base & {"transformers", "torch"}, base
    train = " ".join(project["optional-dependencies"]["train"])
    assert "transformers" in train and "torch" in train
