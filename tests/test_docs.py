"""The docs cannot drift from the code: docs/cli.md is what freshrec.cli_reference renders, every
`freshrec ...` command line in README.md and docs/ parses with the CLI's own parser, and every
relative link points to a file (and heading) that exists."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from freshrec import cli_reference
from freshrec.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

# `$ freshrec ...`, `freshrec ...`, `.venv/bin/freshrec ...`: a path before the name is the
# command as `make` echoes it, and always a command line
_COMMAND = re.compile(r"^(?P<prompt>\$\s+)?(?P<path>\S*/)?freshrec\s+(?P<rest>.*)$")
_INLINE = re.compile(r"`((?:\S*/)?freshrec\s[^`]*)`")
# an example value still spelled as a placeholder: <PATH>, [--to N], URL, HOST:PORT, ...
_PLACEHOLDER = re.compile(r"^\[|\]$|<[^>]*>|\.\.\.|^[A-Z][A-Z_]*(:[A-Z_]+)?$")


@dataclass(frozen=True)
class CommandLine:
    path: Path
    line: int
    text: str
    inline: bool = False  # an inline code span of prose, not a line of a code block

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def command_lines(path: Path) -> list[CommandLine]:
    """The `freshrec` command lines of one page: in fenced code blocks, the lines that start with
    the command (behind `$ ` where the block uses prompts: unprompted lines there are output,
    `freshrec ready in ...`), with backslash continuations joined; in prose, the inline code
    spans that start with it. Blocks marked ```` ```text ```` hold diagrams or a program's
    printed output (`freshrec online vs ...` rows of bench.quality) and are not read."""
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    in_block, block, output = False, [], False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if in_block and not output:
                found += _block_commands(path, block)
            output = not in_block and line.strip() == "```text"
            in_block, block = not in_block, []
            continue
        if in_block:
            block.append((number, line))
        else:
            found += [CommandLine(path, number, span, inline=True) for span in _INLINE.findall(line)]
    return found


def _block_commands(path: Path, block: list[tuple[int, str]]) -> list[CommandLine]:
    prompted = any(line.lstrip().startswith("$ ") for _, line in block)
    found, pending = [], None
    for number, line in block:
        if pending is not None:
            start, text = pending
            text += " " + line.strip().rstrip("\\")
            pending = (start, text) if line.rstrip().endswith("\\") else None
            if pending is None:
                found.append(CommandLine(path, start, text))
            continue
        match = _COMMAND.match(line.strip())
        if match is None or (prompted and not (match["prompt"] or match["path"])):
            continue
        text = "freshrec " + match["rest"].rstrip("\\")
        if line.rstrip().endswith("\\"):
            pending = (number, text)
        else:
            found.append(CommandLine(path, number, text))
    return found


def parse_error(parser: argparse.ArgumentParser, text: str) -> str | None:
    """argparse's message for one command line, or None when it parses. argparse reports an
    error by printing usage and the message on stderr and raising SystemExit(2)."""
    try:
        words = shlex.split(text, comments=True)[1:]
    except ValueError as exc:  # No closing quotation
        return f"not a shell command line: {exc}"
    placeholders = [w for w in words if _PLACEHOLDER.search(w)]
    if placeholders:
        return f"placeholder {placeholders[0]!r}: write a real example value"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(words)
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help, a valid line
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def _subcommand_error(parser: argparse.ArgumentParser, text: str) -> str | None:
    """For an inline mention with no option (`freshrec status`, `freshrec build`): only the
    subcommand words must exist, since the mention names a command rather than runs one."""
    for word in text.split()[1:]:
        sub = cli_reference.subcommands(parser)
        if sub is None or word.startswith("-"):
            return None
        if word not in sub.choices:
            return f"no subcommand {word!r} (choose from {', '.join(sub.choices)})"
        parser = sub.choices[word]
    return None


def test_cli_reference_is_current():
    want = cli_reference.render(build_parser())
    have = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert have == want, (f"docs/cli.md is out of date with freshrec.cli's parsers; regenerate it "
                          f"from the repository root: {cli_reference.REGENERATE}")


def test_cli_reference_has_every_subcommand_and_option():
    parser = build_parser()
    page = cli_reference.render(parser)
    commands = list(cli_reference.walk(parser))
    assert ("items", "add") in {cmd.words for cmd in commands}  # nested subcommands are walked
    for cmd in commands:
        assert f"\n## {' '.join(('freshrec', *cmd.words))}\n" in page
        section = page.split(f"\n## {' '.join(('freshrec', *cmd.words))}\n", 1)[1].split("\n## ")[0]
        for action in cmd.parser._actions:
            for name in action.option_strings:
                if name not in ("-h", "--help"):
                    assert f"`{name}" in section, (cmd.words, name)


def test_the_docs_hold_command_lines_to_check():
    """The finder itself: the tour's commands are found, output lines are not."""
    lines = {c.text for c in command_lines(ROOT / "README.md")}
    assert "freshrec recommend --user 1" in lines
    assert not any(text.startswith("freshrec ready") for text in lines)
    assert sum(len(command_lines(page)) for page in PAGES) >= 30


@pytest.mark.parametrize("text, error", [
    ("freshrec recommend --user 1 --k 5   # a comment", None),
    ("freshrec rollback --to 5", None),
    ("freshrec rollback [--to 5]", "placeholder '[--to'"),
    ("freshrec build --data <PATH> --out var/x", "placeholder '<PATH>'"),
    ("freshrec serve --redis URL", "placeholder 'URL'"),
    ("freshrec status --updater HOST:PORT", "placeholder 'HOST:PORT'"),
    ("freshrec recommend --usr 1", "unrecognized arguments: --usr 1"),
    ("freshrec feedback --user 7", "the following arguments are required: --item"),
    ("freshrec build --help", None),
])
def test_parse_error_reports_argparse_message(text, error):
    got = parse_error(build_parser(), text)
    assert (got is None) if error is None else (error in got), got


def test_every_freshrec_command_line_in_the_docs_parses():
    parser = build_parser()
    failures = []
    for page in PAGES:
        for command in command_lines(page):
            mention = command.inline and " -" not in command.text
            check = _subcommand_error if mention else parse_error
            error = check(parser, command.text)
            if error is not None:
                failures.append(f"{command.where()}: {command.text}\n    {error}")
    assert not failures, "command lines the CLI's parser refuses:\n" + "\n".join(failures)


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but hyphens dropped, spaces to hyphens,
    repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    in_block = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
        if in_block or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_relative_links_point_to_existing_files_and_headings():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)
