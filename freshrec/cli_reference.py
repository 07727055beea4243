"""docs/cli.md, generated from the CLI's own parsers (`freshrec.cli.build_parser()`), so the
reference cannot drift from the flags: every subcommand with its help, usage, and every option
with its help and default. Regenerate with

    python -m freshrec.cli_reference > docs/cli.md

tests/test_docs.py fails when the committed page differs from what this module renders.

The usage lines are rendered here rather than by argparse's formatter, whose line wrapping
follows the terminal width (COLUMNS) and whose layout changes between Python versions: the page
must come out the same on every machine that runs the test.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass

REGENERATE = "python -m freshrec.cli_reference > docs/cli.md"


@dataclass(frozen=True)
class Command:
    """One parser of the tree: its words after `freshrec`, its help line, the parser itself."""

    words: tuple[str, ...]
    help: str
    parser: argparse.ArgumentParser


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """The action holding a parser's subcommands (``.choices``: name -> parser), or None."""
    # argparse keeps no public handle on a parser's subcommands; _SubParsersAction is the one
    # documented type of the object add_subparsers() returns
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = (),
         help_text: str = "") -> Iterator[Command]:
    """Every parser of the tree, depth first, subcommands in the order they were added."""
    yield Command(words, help_text or (parser.description or ""), parser)
    sub = subcommands(parser)
    if sub is None:
        return
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        yield from walk(child, (*words, name), helps.get(name, ""))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _value_name(action: argparse.Action) -> str:
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.metavar or action.dest.upper()


def _flag(action: argparse.Action) -> str:
    """The option as one writes it: its long name (else its only name) and its value's name;
    a positional argument, its value's name alone."""
    if not action.option_strings:
        return _value_name(action)
    name = max(action.option_strings, key=len)
    return f"{name} {_value_name(action)}" if _takes_value(action) else name


def usage(command: Command) -> str:
    """`freshrec build (--data DATA | --synthetic) --out OUT [--items ITEMS] ...`: required
    options bare, optional ones in brackets, a mutually exclusive group in one pair."""
    parts = ["freshrec", *command.words]
    grouped = {}
    for group in command.parser._mutually_exclusive_groups:
        for action in group._group_actions:
            grouped[action] = group
    done = set()
    for action in _options(command.parser):
        group = grouped.get(action)
        if group is not None:
            if group in done:
                continue
            done.add(group)
            inner = " | ".join(_flag(a) for a in group._group_actions)
            parts.append(f"({inner})" if group.required else f"[{inner}]")
        elif action.required:
            parts.append(_flag(action))
        else:
            parts.append(f"[{_flag(action)}]")
    sub = subcommands(command.parser)
    if sub is not None:
        parts.append("{" + ",".join(sub.choices) + "} ...")
    return " ".join(parts)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action, *, required: bool) -> str:
    if required:
        return "required"
    if action.default is None or action.default is argparse.SUPPRESS:
        return ""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    return f"`{action.default}`"


def _anchor(words: tuple[str, ...]) -> str:
    """GitHub's id for the heading `freshrec <words>` (lower case, spaces to hyphens)."""
    return "-".join(("freshrec", *words))


def render(parser: argparse.ArgumentParser) -> str:
    """The whole page, as markdown."""
    commands = list(walk(parser))
    lines = [
        "# The `freshrec` command",
        "",
        f"Generated from `freshrec.cli.build_parser()` by `{REGENERATE}`; do not edit it by "
        "hand (`tests/test_docs.py` fails when it is out of date). The tour is in the "
        "[README](../README.md); what the commands do to a running system is in "
        "[operations](operations.md).",
        "",
        commands[0].help,
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`freshrec {' '.join(cmd.words)}`](#{_anchor(cmd.words)}) | {_cell(cmd.help)} |"
              for cmd in commands[1:]]
    for cmd in commands:
        title = " ".join(("freshrec", *cmd.words))
        lines += ["", f"## {title}", ""]
        if cmd.words:
            lines += [_cell(cmd.help), ""]
            if cmd.parser.description and cmd.parser.description != cmd.help:
                lines += [_cell(cmd.parser.description), ""]
        lines += ["```", f"usage: {usage(cmd)}", "```"]
        options = _options(cmd.parser)
        if not options:
            continue
        notes = {}
        for group in cmd.parser._mutually_exclusive_groups:
            names = ", ".join(f"`{max(a.option_strings, key=len)}`" for a in group._group_actions)
            for action in group._group_actions:
                notes[action] = (f" (one of {names} is required)" if group.required
                                 else f" (at most one of {names})")
        lines += ["", "| option | default | what it does |", "|---|---|---|"]
        for action in options:
            value = f" {_value_name(action)}" if _takes_value(action) else ""
            names = (", ".join(f"`{name}{value}`" for name in action.option_strings)
                     or f"`{_value_name(action)}`")
            lines.append(f"| {names} | {_default(action, required=action.required)} | "
                         f"{_cell(action.help or '')}{notes.get(action, '')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from freshrec.cli import build_parser

    sys.stdout.write(render(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
