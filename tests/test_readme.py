"""Every command in README.md runs as written in bash: shell characters inside an argument are
quoted, each `lmfuse` subcommand exists and takes the flags shown, and each config key an
override names exists with a value of its type.

Commands are the lines of the fenced bash/sh blocks that start with `lmfuse`, `python` or
`make`, and the inline code spans that start with `lmfuse <subcommand>` or a `--flag`. A
command with placeholders (`...`, values like N) is checked for its flag names only.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from lmfuse.cli import build_parser
from lmfuse.config import load_config, split_override_args

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
# Unquoted, bash reads these as operators (pipe, list, background, redirection) or globs.
SHELL_CHARS = "();<>|&*?"
PLACEHOLDER = "..."


def fenced_commands(text: str) -> list[str]:
    commands = []
    for block in re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():  # join continued lines
            if line.split(maxsplit=1)[:1] in (["lmfuse"], ["python"], ["make"]):
                commands.append(line.strip())
    return commands


def inline_commands(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose))
    # `lmfuse <command>: error: ...` is a message template, not a command.
    return [span for span in spans if re.match(r"lmfuse [a-z]|--[a-z]", span)]


FENCED = fenced_commands(README)
INLINE = inline_commands(README)


def shell_words(command: str) -> list[str]:
    """The words bash passes to the program; fails on a shell character left unquoted."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=SHELL_CHARS)
    lexer.whitespace_split = True
    words = list(lexer)  # `# comment` is dropped
    loose = [word for word in words if set(word) <= set(SHELL_CHARS)]
    assert not loose, f"unquoted {loose} in README command: {command}; quote that argument"
    assert words == shlex.split(command, comments=True)
    return words


def subcommand_parser(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of `lmfuse <subcommand> [<subcommand>]` and the words after those."""
    parser, rest = build_parser(), words[1:]
    while True:
        choices = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not choices:
            return parser, rest
        name = rest[0] if rest else ""
        assert name in choices[0].choices, f"README names a subcommand lmfuse has not: {words}"
        parser, rest = choices[0].choices[name], rest[1:]


def check_flag_names(words: list[str]) -> None:
    parser, rest = subcommand_parser(words)
    for word in rest:
        flag = word.strip("[]").split("=")[0]
        if flag.startswith("--") and not flag.startswith("--config."):
            assert flag in parser._option_string_actions, f"{flag} is no flag of: {words}"


def check_runs(words: list[str]) -> None:
    """Parses the command as `lmfuse` would (without running it), and loads its config."""
    overrides, rest = split_override_args(words[1:])
    try:
        args = build_parser().parse_args(rest)
    except SystemExit:
        pytest.fail(f"lmfuse refuses the README's arguments: {shlex.join(words)}")
    if getattr(args, "reads_config_file", False):
        load_config(args.config, overrides)  # unknown keys and wrong types raise


def test_the_readme_has_commands_to_check():
    assert len(FENCED) > 20 and len(INLINE) > 10
    assert any(c.startswith("python experiments/") for c in FENCED)
    assert any("--config.data.files.train=" in c for c in INLINE)


@pytest.mark.parametrize("command", FENCED)
def test_fenced_command_runs_as_written(command):
    words = shell_words(command)
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert set(words[1:]) <= set(targets), command
    elif words[0] == "python":
        assert (REPO / words[1]).is_file(), command
    elif PLACEHOLDER in words:
        check_flag_names(words)
    else:
        check_runs(words)


@pytest.mark.parametrize("command", INLINE)
def test_inline_command_is_quoted_and_names_real_flags(command):
    words = shell_words(command)
    if words[0] == "lmfuse":
        check_flag_names(words)


def test_an_unquoted_pipe_or_glob_is_caught():
    with pytest.raises(AssertionError, match=r"unquoted \['\|'\]"):
        shell_words("lmfuse train --config.data.files.train=src.txt|tgt.txt")
    with pytest.raises(AssertionError, match=r"unquoted \['\*'\]"):
        shell_words("python experiments/*.py")
    assert shell_words("lmfuse train '--config.data.files.train=src.txt|tgt.txt'  # a|b") == [
        "lmfuse", "train", "--config.data.files.train=src.txt|tgt.txt"]
