"""The command line's `--help`: every option's default shown, and no JAX to print it."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from lmfuse import cli


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every leaf subcommand, e.g. (('data', 'show'), parser)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path, parser
        return
    for name, sub in actions[0].choices.items():
        yield from _subcommands(sub, (*path, name))


SUBCOMMANDS = dict(_subcommands(cli.build_parser()))


def _help(capsys, path) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([*path, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


def test_every_subcommand_is_checked():
    assert set(SUBCOMMANDS) >= {("data", "prepare"), ("data", "show"), ("config",), ("train",),
                                ("eval",), ("inspect",), ("sample",), ("translate",)}


@pytest.mark.parametrize("path", sorted(SUBCOMMANDS), ids=" ".join)
def test_help_shows_every_default_that_says_something(capsys, path):
    text = _help(capsys, path)
    for action in SUBCOMMANDS[path]._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue
        shown = f"(default: {action.default})" in text
        silent = action.default is None or action.default == [] or action.nargs == 0
        assert shown != silent, (action.option_strings, action.default)
    assert "(default: None)" not in text and "(default: False)" not in text


def test_translate_and_sample_help_name_their_defaults(capsys):
    translate = _help(capsys, ("translate",))
    assert re.search(r"--lm_weight LM_WEIGHT .*\(default: 0\.3\)", translate)
    assert re.search(r"--beam BEAM beam size \(0: config\.decode\.beam_size\) \(default: 0\)",
                     translate)
    sample = _help(capsys, ("sample",))
    assert "--seed SEED (default: 0)" in sample  # an option without help text gets a line
    assert "--alpha ALPHA beam search length penalty (default: 0.6)" in sample
    assert "(default: $LMFUSE_DATA_DIR" in _help(capsys, ("data", "show"))


def test_the_command_line_imports_no_framework_to_parse_or_print_help():
    """The CLI imports JAX, Flax, TensorFlow and the data stack lazily, in the handlers:
    `lmfuse --help` and argument errors stay instant."""
    code = (
        "import json, sys\n"
        "from lmfuse import cli\n"
        "for argv in (['--help'], ['translate', '--help'], ['data', 'show', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stderr.splitlines()[-1])}
    heavy = {"jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets",
             "grain"}
    assert not loaded & heavy
