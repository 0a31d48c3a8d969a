"""The command line's one layout (issue 23), read from the real code: one package, one handler naming rule,
small registrations, no private argparse classes, and the one-item form of ``finsent label`` without them.

The rule (:mod:`finsent.cli.tree`): the handler of ``finsent <group> <leaf>`` is ``run_<leaf>`` (``-`` as ``_``) in
the module that registers it, ``finsent/cli/<group>.py`` (the benchmarks: ``finsent/bench/<leaf>.py``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from finsent.cli import build, command_table
from finsent.cli import labels as labels_cli

ROOT = Path(__file__).resolve().parents[2]
TABLE = command_table()
LEAVES = {name: c for name, c in TABLE.items() if c.run is not None}
#: every folder of Python code that is part of the finsent package
CODE_DIRS = ("finsent", "stream", "models", "ingest", "alerts")
MAX_REGISTRATION_LINES = 60


def _parse(argv: list[str]) -> tuple[int | None, str, object]:
    """(exit code or None, stderr, namespace or None) of parsing ``argv`` with the real parser."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return None, "", build()[0].parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0), err.getvalue(), None


def test_the_table_has_every_leaf_and_group_once() -> None:
    assert len(LEAVES) >= 45, sorted(LEAVES)
    assert {"finsent", "finsent query", "finsent label", "finsent bench"} <= set(TABLE) - set(LEAVES)
    assert {"finsent label ITEM_ID", "finsent label import", "finsent query count", "finsent bench soak"} <= set(LEAVES)
    assert len({id(c.parser) for c in TABLE.values()}) == len(TABLE)


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_leaf_handler_is_run_leaf_in_its_groups_module(name: str) -> None:
    command = LEAVES[name]
    leaf = command.path[-1].replace("-", "_")
    run = command.run
    assert run is not None
    expected = "item" if leaf == labels_cli.ITEM_FORM else leaf.lower()
    assert run.__name__ == f"run_{expected}", f"`{name}` runs {run.__module__}.{run.__name__}"
    package = "finsent.bench" if command.path[0] == "bench" else "finsent.cli"
    assert run.__module__ == package or run.__module__.startswith(package + "."), (
        f"`{name}` runs {run.__module__}.{run.__name__}"
    )


def _code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if "shipped" not in p.parts]


def test_no_code_names_argparse_private_classes_or_attributes() -> None:
    private = re.compile(r"argparse\._\w+|_SubParsersAction|_negative_number_matcher|\._actions\b|_name_parser_map")
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _code_files()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not found, found


def test_the_cli_is_one_package() -> None:
    strays = [p.relative_to(ROOT) for p in _code_files() if p.stem.endswith("cli") or p.name == "commands.py"]
    assert not strays, f"command-line modules outside finsent/cli/: {strays}"
    assert (ROOT / "finsent" / "cli" / "__init__.py").is_file()


@pytest.mark.parametrize("path", sorted((ROOT / "finsent" / "cli").glob("*.py")), ids=lambda p: p.name)
def test_registrations_are_small(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and (node.name == "register" or node.name.startswith("_add_"))
        and node.end_lineno - node.lineno + 1 > MAX_REGISTRATION_LINES
    ]
    assert not long, f"{path.name}: registration functions over {MAX_REGISTRATION_LINES} lines: {long}"


def test_label_takes_an_item_id_or_a_subcommand() -> None:
    code, _, args = _parse(["label", "3f9a0c1d", "--sentiment", "negative", "--store", "chdb:///x"])
    assert code is None
    assert (args.func, args.item_id, args.sentiment, args.store) == (
        labels_cli.run_item,
        "3f9a0c1d",
        "negative",
        "chdb:///x",
    )
    code, _, args = _parse(["--store", "chdb:///y", "label", "import", "todo.csv", "--by", "desk"])
    assert code is None
    assert (args.func, args.csv, args.by, args.store) == (labels_cli.run_import, "todo.csv", "desk", "chdb:///y")
    code, _, args = _parse(["label", "queue", "--n", "5", "--csv", "-"])
    assert code is None and args.func is labels_cli.run_queue and args.n == 5
    assert args.finsent_prog == "finsent label queue"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["label"], "finsent label: error: the following arguments are required: ITEM_ID | import | queue"),
        (["label", "abc", "--bogus"], "finsent label ITEM_ID: error: unrecognized arguments: --bogus"),
        (["label", "import"], "finsent label import: error: the following arguments are required: CSV"),
        (["label", "--bogus"], "finsent label: error: the following arguments are required: ITEM_ID | import"),
    ],
)
def test_label_usage_errors_are_argparse_errors(argv: list[str], message: str) -> None:
    code, err, _ = _parse(argv)
    assert code == 2 and message in err, err


def test_label_help_lists_its_forms() -> None:
    text = TABLE["finsent label"].parser.format_help()
    assert "ITEM_ID | import | queue ..." in text
    for word in ("ITEM_ID", "import", "queue"):
        assert re.search(rf"^  {word}\s+\S", text, re.M), text


def test_a_handler_error_is_one_line_from_the_boundary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Handlers raise; only :func:`finsent.cli.main` prints (train without data was a print and `return 2`)."""
    from finsent.cli import main

    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finsent: error: finsent train: missing data file"), err
    assert "(hint: give --data-dir or the CSV flags" in err[0]
