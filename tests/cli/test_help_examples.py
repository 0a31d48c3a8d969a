"""Every leaf command's ``--help`` ends with examples that work.

Walks the real command tree of ``finsent`` (the table :func:`finsent.cli.build` returns, no list to keep up
to date): each leaf command's help must contain an "examples:" block; every example line must parse with the
real parser and select that same command; a repository path an example names must exist, and a module
``pydoc`` is pointed at must import. Also: no help shows a path resolved on this machine (a site-packages or checkout
path) as a default.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from finsent.cli import build

ROOT = Path(__file__).resolve().parents[2]
#: top-level folders of the checkout: an example argument starting with one of these is a file that must exist
SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", ">", ">>", "<"})
REPO_DIRS = ("finsent/", "models/", "bench/", "deploy/", "ingest/", "stream/", "alerts/", "docs/", "tests/")


PARSER, TABLE = build()
#: every leaf command by its full name, from the table the CLI exposes (each parser once, aliases not repeated)
LEAVES = {c.name: c.parser for c in TABLE.values() if c.run is not None}


def example_commands(help_text: str) -> list[list[str]]:
    """The argv of each ``finsent ...`` line in the help's "examples:" block(s), without env assignments,
    the description column, comments and what follows a shell operator."""
    out: list[list[str]] = []
    inside = False
    for line in help_text.splitlines():
        if re.match(r"^\s*examples?\b[^:]*:\s*$", line, re.IGNORECASE):
            inside = True
            continue
        if inside and line.strip() and not line[0].isspace():
            inside = False
        if not inside or not line.strip():
            continue
        words = shlex.split(re.split(r"\s{3,}|\s#", line.strip())[0])
        cut = next((i for i, w in enumerate(words) if w in SHELL_OPERATORS), len(words))
        words = words[:cut]
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words.pop(0)
        if words and words[0] == "finsent":
            out.append(words[1:])
    return out


def test_the_tree_is_walked() -> None:
    assert len(LEAVES) >= 39, sorted(LEAVES)
    assert {"finsent demo", "finsent query count", "finsent ingest replay", "finsent bench results"} <= set(LEAVES)


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_leaf_command_has_examples_that_run_it(name: str) -> None:
    leaf = LEAVES[name]
    text = leaf.format_help()
    assert "example" in text.lower(), f"`{name} --help` has no example"
    examples = example_commands(text)
    assert examples, f"`{name} --help` has no 'examples:' block with a `finsent ...` line"
    handler = leaf.get_default("func")
    for argv in examples:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                args = PARSER.parse_args(argv)
            except SystemExit:
                pytest.fail(
                    f"`{name} --help`: the example `finsent {shlex.join(argv)}` does not parse: "
                    f"{err.getvalue().strip()}"
                )
        if args.func is not handler:
            continue  # an example may show a related command (e.g. the worker that uses a distilled model)
        for word in argv:
            if word.startswith(REPO_DIRS):
                assert (ROOT / word).exists(), f"`{name} --help`: the example names {word}, which does not exist"
    assert any(PARSER.parse_args(argv).func is handler for argv in examples), (
        f"`{name} --help`: no example runs {name} itself"
    )


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_help_points_at_modules_that_exist_and_paths_nobody_resolved(name: str) -> None:
    text = LEAVES[name].format_help()
    for module in re.findall(r"pydoc\s+([\w.]+\w)", text):
        # finsent's modules are imported as finsent.* (the folders are not packages of their own)
        assert module.startswith("finsent.") and importlib.util.find_spec(module), (
            f"`{name} --help` points pydoc at {module}, which is not a finsent module"
        )
    assert "site-packages" not in text and str(ROOT.parent) not in text, (
        f"`{name} --help` shows a path resolved on this machine: state the rule instead"
    )


def test_the_example_reader_reads_the_shapes_help_texts_use() -> None:
    text = (
        "usage: x\n\nexamples:\n"
        "  finsent demo                                   the whole pipeline\n"
        "  FINSENT_MODEL_DIR=runs/m/model finsent worker   # score with it\n"
        "  finsent alerts rules --out - | less\n"
        "  pip install matplotlib\n"
        "exit codes:\n  finsent not an example\n"
    )
    assert example_commands(text) == [["demo"], ["worker"], ["alerts", "rules", "--out", "-"]]
