"""How a ``finsent`` command is added, and the table of every command added.

One rule for the whole command line (the anchor: pip's ``pip/_internal/commands/__init__.py``, one
module per command and one table of them that tests read instead of argparse's internals):

* each command group has one module ``finsent/cli/<group>.py`` with one ``register(sub)``;
* ``register`` adds each leaf with :meth:`Subcommands.leaf` and each nested group with
  :meth:`Subcommands.group`, nothing else, so every leaf has a handler and an entry in the table;
* a leaf's handler is ``run_<leaf>(args, settings) -> int`` in the module that registers it (the leaf
  name with ``-`` as ``_``: ``finsent query count`` runs ``finsent.cli.query.run_count``); it raises a
  :class:`~finsent.core.errors.FinsentError` for anything the user must fix, never prints an error
  line itself: :func:`finsent.cli.main` is the one boundary that turns it into a line and an exit code.

Nothing here subclasses or names argparse's private classes: a group is what
``ArgumentParser.add_subparsers`` returns, used through its documented ``add_parser``; the one group
whose unknown words are an item id (``finsent label ITEM_ID``) is a plain :class:`argparse.Action`.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finsent.core.errors import FinsentError
from finsent.core.settings import Settings

#: what every leaf runs: the parsed flags and the one settings object in, the exit code out
Handler = Callable[[argparse.Namespace, Settings], int]
RAW = argparse.RawDescriptionHelpFormatter


class UsageError(FinsentError):
    """A command given what it cannot run with, found after parsing (training data files missing,
    ``--export-only`` before any run): argparse's usage exit code, 2, and one line like every error."""

    exit_code = 2
    hint = "see the command's --help"


@dataclass(frozen=True)
class Command:
    """One node of the command tree: a group, or a leaf whose handler is :attr:`run`."""

    path: tuple[str, ...]  # ("query", "count"); () for ``finsent`` itself
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        """The command as typed: ``finsent query count``."""
        return " ".join(("finsent", *self.path))

    @property
    def run(self) -> Handler | None:
        """The leaf's handler (what ``args.func`` is after parsing it); None for a group."""
        return self.parser.get_default("func")


@dataclass(frozen=True)
class Leaf:
    """One leaf as a row of its group's table (:meth:`Subcommands.leaves`): the name, handler and help texts that
    :meth:`Subcommands.leaf` takes, and ``arguments``, the function that adds the leaf's own flags. A group whose
    leaves differ only in these rows declares them as one table instead of one copy of ``leaf(...)`` each."""

    name: str
    run: Handler
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    epilog: str | None = None


class Subcommands:
    """The subcommands of one parser: where ``register`` adds leaves and groups, recorded in ``table``."""

    def __init__(self, parser: argparse.ArgumentParser, path: tuple[str, ...], table: dict[str, Command], **kw: Any):
        self.path, self.table = path, table
        self._sub = parser.add_subparsers(required=True, **kw)

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        """argparse's ``add_parser``, recorded in the table (the benchmarks of :mod:`finsent.bench` use it)."""
        parser = self._sub.add_parser(name, **kw)
        command = Command((*self.path, name), parser)
        self.table[command.name] = command
        return parser

    def leaf(self, name: str, run: Handler, **kw: Any) -> argparse.ArgumentParser:
        """Add the leaf ``name`` that runs ``run``; ``kw`` are ``add_parser``'s (help, description, epilog...)."""
        parser = self.add_parser(name, **{"formatter_class": RAW, **kw})
        parser.set_defaults(func=run)
        return parser

    def leaves(self, *rows: Leaf) -> None:
        """Add each row's leaf, in order (the order ``--help`` lists them in), then its arguments."""
        for row in rows:
            parser = self.leaf(row.name, row.run, help=row.help, description=row.description, epilog=row.epilog)
            if row.arguments is not None:
                row.arguments(parser)

    def group(self, name: str, *, dest: str, metavar: str, **kw: Any) -> Subcommands:
        """Add the group ``name``; its subcommands go into ``args.<dest>`` and show as ``metavar``."""
        parser = self.add_parser(name, **kw)
        return Subcommands(parser, (*self.path, name), self.table, dest=dest, metavar=metavar)

    def item_group(self, name: str, *, item: str, dest: str, **kw: Any) -> ItemOrSubcommand:
        """Add the group ``name`` whose words are its subcommands, and any other word the one-item form: the
        leaf named ``item`` runs with the word in ``args.<dest>`` (``finsent label 3f9a... --sentiment S``)."""
        parser = self.add_parser(name, **{"formatter_class": RAW, **kw})
        return ItemOrSubcommand.attach(parser, (*self.path, name), self.table, item=item, dest=dest)


class ItemOrSubcommand(argparse.Action):
    """A positional that hands the rest of the command line to a sub-parser chosen by its first word.

    A known word picks that subcommand; any other word picks the ``item`` leaf and is stored in ``dest``.
    The chosen parser parses the rest into the same namespace, as argparse's own subcommands do.
    """

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=argparse.PARSER, **kw)
        self.item_dest = dest
        self.item = ""
        self.path: tuple[str, ...] = ()
        self.table: dict[str, Command] = {}
        self.children: dict[str, argparse.ArgumentParser] = {}
        self.helps: dict[str, str] = {}

    @classmethod
    def attach(
        cls, parser: argparse.ArgumentParser, path: tuple[str, ...], table: dict[str, Command], *, item: str, dest: str
    ) -> ItemOrSubcommand:
        action = parser.add_argument(dest, action=cls, metavar="WORDS")
        assert isinstance(action, cls)
        action.item, action.path, action.table, action.parent = item, path, table, parser
        return action

    def leaf(self, name: str, run: Handler, *, help: str, **kw: Any) -> argparse.ArgumentParser:
        """Add a subcommand (or, named ``item``, the one-item form), listed in the group's help."""
        prog = " ".join((self.parent.prog, name))
        parser = argparse.ArgumentParser(prog=prog, formatter_class=RAW, **kw)
        parser.set_defaults(func=run)
        self.children[name] = parser
        self.helps[name] = help
        command = Command((*self.path, name), parser)
        self.table[command.name] = command
        words = [self.item, *(n for n in self.children if n != self.item)]
        self.metavar = " | ".join(words)
        self.help = f"a subcommand, or the id of a stored item ({self.item})"
        self.parent.epilog = "commands:\n" + "\n".join(
            textwrap.fill(self.helps[w], width=98, initial_indent=f"  {w:<18}", subsequent_indent=" " * 20)
            for w in words
            if w in self.helps
        )
        return parser

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, *_: Any) -> None:
        word, rest = values[0], list(values[1:])
        child = self.children.get(word) if word != self.item else None
        if child is None:
            if word.startswith("-"):
                parser.error(f"unrecognized arguments: {' '.join(values)}")
            child = self.children[self.item]
        setattr(namespace, self.item_dest, word)
        parsed, extras = child.parse_known_args(rest)
        if extras:
            child.error(f"unrecognized arguments: {' '.join(extras)}")
        for key, value in vars(parsed).items():
            setattr(namespace, key, value)
