"""The README and docs/: a short README, links that resolve, every page reachable from the README, and every
`loramix …` line of a sh block or a table (the README's commands) one that the command line accepts."""

from __future__ import annotations

import contextlib
import re
import shlex
import tempfile
from pathlib import Path

import click
import pytest

from loramix.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250
SNIPPET_MARKER = "<!-- this snippet runs as it is in tests/test_readme.py -->"

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
SHELL = {"sh", "bash", "shell"}
# A word of a command line that names a file or folder: letters, digits, dots, dashes and slashes only (so not a
# FILE:WEIGHT spec or a prompt), with a slash or a file suffix. One ending in a slash, or with no suffix, is a folder.
PATH_WORD = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
SUFFIX = re.compile(r"\.[A-Za-z]\w*$")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def blocks(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """Each fenced block of a markdown text: its language and its (line number, line) pairs."""
    found: list[tuple[str, list[tuple[int, str]]]] = []
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            found.append((opening.group(2).lower(), []))
        elif fence is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = None
        elif fence is not None:
            found[-1][1].append((number, line))
    return found


def outside_blocks(text: str) -> list[tuple[int, str]]:
    """The lines that are neither in a fenced block nor its fences."""
    inside = {number for _, lines in blocks(text) for number, _ in lines}
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1)
            if number not in inside and not FENCE.match(line)]


def links(path: Path) -> list[tuple[int, str]]:
    """The relative links and images of a page, anchors stripped; web links and same-page anchors left out."""
    found = []
    for number, line in outside_blocks(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            target = target.split("#", 1)[0]
            if target and not SCHEME.match(target):
                found.append((number, target))
    return found


def command_lines(path: Path) -> list[tuple[int, str]]:
    """Every line of a sh block that runs loramix, continuation lines joined, with the number of its first line;
    and, from tables, every inline code span that is a loramix command line."""
    found = []
    text = path.read_text(encoding="utf-8")
    for language, lines in blocks(text):
        if language not in SHELL:
            continue
        start, joined = None, ""
        for number, line in lines:
            start = number if start is None else start
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined = (joined + line).strip()
            if joined.startswith("loramix "):
                found.append((start, joined))
            start, joined = None, ""
    for number, line in outside_blocks(text):
        if line.lstrip().startswith("|"):
            found += [(number, code.strip()) for _, code in INLINE_CODE.findall(line)
                      if code.strip().startswith("loramix ")]
    return found


def without_comment(line: str) -> str:
    """The line up to a shell comment: a `#` that starts a word outside quotes (`a.safetensors:0.8#mask.png` is
    no comment; shlex's own comment handling would cut it there)."""
    quote = None
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and quote != "'":
            index += 2
            continue
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
        index += 1
    return line


def make_named_paths(words: list[str], folder: Path) -> None:
    """Create, under folder, the files and folders a command line names (empty: enough for parsing), so that a
    parameter that must exist (`click.Path(exists=True)`) is checked the way it is on a user's machine."""
    for word in words:
        if word.startswith("--") and "=" in word:
            word = word.split("=", 1)[1]
        if word.startswith("-") or not PATH_WORD.fullmatch(word) or ".." in Path(word).parts:
            continue
        if word.endswith("/") or ("/" in word and not SUFFIX.search(word)):
            (folder / word).mkdir(parents=True, exist_ok=True)
        elif SUFFIX.search(word):
            (folder / word).parent.mkdir(parents=True, exist_ok=True)
            (folder / word).touch()


def check_command_line(line: str, where: str) -> None:
    """Parse a `loramix …` line as the CLI would, without running it; a line it refuses fails the test."""
    try:
        words = shlex.split(without_comment(line))
    except ValueError as error:
        pytest.fail(f"{where}: {line!r} does not split as a shell line: {error}")
    assert words[0] == "loramix", f"{where}: {line!r} is not a loramix command line"
    if len(words) < 2 or words[1] not in main.commands:
        pytest.fail(f"{where}: {line!r}: no such command {words[1:2]}; there are {sorted(main.commands)}")
    name, args = words[1], words[2:]
    command = main.commands[name]
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        make_named_paths(args, Path(folder))
        try:
            with command.make_context(name, args):
                pass
        except click.exceptions.Exit:
            pass  # --help, --version: parsed, nothing to run
        except click.UsageError as error:  # BadParameter, NoSuchOption, MissingParameter are UsageErrors
            pytest.fail(f"{where}: {line!r}: {error.format_message()}")


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_the_readme_keeps_the_snippet_that_test_readme_runs():
    text = README.read_text(encoding="utf-8")
    assert text.count(SNIPPET_MARKER) == 1
    assert re.search(re.escape(SNIPPET_MARKER) + r"\s*```python\n", text)


def test_every_page_starts_with_its_title():
    for page in sorted(DOCS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), f"{page.name} does not start with a '# Title' line"
        assert len(lines) > 2 and lines[1] == "" and lines[2].strip(), f"{page.name}: no sentence under the title"


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(page):
    missing = [f"{page.relative_to(ROOT)}:{number}: {target}" for number, target in links(page)
               if not (page.parent / target).exists()]
    assert not missing, "links to nothing:\n" + "\n".join(missing)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target).resolve() for _, target in links(README)}
    unlinked = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def all_command_lines() -> list[tuple[str, str]]:
    return [(f"{page.relative_to(ROOT).as_posix()}:{number}", line)
            for page in pages() for number, line in command_lines(page)]


def test_the_docs_have_command_lines_to_check():
    # Guards the parsing above: the README's table alone has a line per command.
    assert len(all_command_lines()) >= 20
    readme = {line.split()[1] for _, line in command_lines(README)}
    assert readme >= {"inspect", "compose", "edit", "train", "generate", "xy", "build-base", "judge", "env", "resize",
                      "extract", "bake", "serve"}


@pytest.mark.parametrize(("where", "line"), all_command_lines(), ids=[where for where, _ in all_command_lines()])
def test_every_example_command_line_parses(where, line):
    check_command_line(line, where)


@pytest.mark.parametrize(("line", "problem"), [
    ("loramix compose a.safetensors:1 --no-such-option", "No such option"),
    ("loramix compose a.safetensors:1 --method nope --prompt 'a face'", "nope"),
    ("loramix resize a.safetensors --rank 0 -o a0.safetensors", "--rank"),
    ("loramix generate --prompt 'a face'", "--output"),
    ("loramix extract tuned.safetensors -o x.safetensors", "BASE"),
    ("loramix no-such-command a.safetensors", "no such command"),
    ("loramix resize a.safetensors [--rank 32] -o a32.safetensors", "unexpected extra argument"),
])
def test_the_check_catches_a_line_the_cli_refuses(line, problem):
    with pytest.raises(pytest.fail.Exception, match=re.escape(problem)):
        check_command_line(line, "made-up.md:1")


def test_the_check_passes_lines_the_cli_accepts():
    check_command_line("loramix compose a.safetensors:0.8#mouth.png b.safetensors:0.8#eyes.png --method regional "
                       "--prompt 'a face'   # a region each", "made-up.md:1")
    check_command_line("loramix judge out/faces", "made-up.md:2")  # exists=True: the folder is made first


def test_a_missing_file_is_caught_where_it_must_exist():
    # judge's paths must exist: without the folder made for it, the same line is refused.
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        with pytest.raises(click.BadParameter, match="does not exist"):
            main.commands["judge"].make_context("judge", ["out/faces"])
