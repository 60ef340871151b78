"""The command line of the companion commands (cnntrain-info, -eval, -export, -predict): one
grammar and one error style for all four, the same as `cnntrain`'s.

`companion_command(Grammar(...))` wraps a command's body: --help/-h prints its usage,
--version the version; the arguments are read (key=value, `~/` expanded, a grammar slip such as
`run:x`, `run = x`, `--topk 3` answered with the key=value to write, a misspelt key with
did-you-mean, a missing required key named); any CnnTrainError is `error: <message>` and exit
status 2, Ctrl-C "Interrupted." and 130. cnntrain-info takes config overrides, read with
`cnntrain`'s own checks (command_line.override_problem). Torch-free: a slip is answered at once.
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from cnntrain import __version__
from cnntrain.command_line import meant_key, override_problem
from cnntrain.config import check_group_choices
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.key_checks import check_override_keys
from cnntrain.override_text import expand_home, quote_for_hydra
from cnntrain.process import keep_console_optional
from cnntrain.registry import did_you_mean

EXIT_USAGE = 2  # a config or data problem the message explains
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


def print_error(message: str) -> None:
    # escape(): text such as imports=[my_models] or [topk=3] is not rich markup.
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


@dataclass(frozen=True)
class Grammar:
    """What a companion command takes. `options`: key -> default (None: required); None for
    cnntrain-info, whose arguments are config overrides. A bare existing path fills the first of
    `positional` not given as key=value (`cnntrain-eval <run folder>`). key=value arguments of
    `sections` (data=..., data.root=...) go to the run's config as overrides."""

    name: str
    usage: str
    options: dict[str, str | None] | None = None
    positional: tuple[str, ...] = ("run",)
    sections: tuple[str, ...] = ()

    def is_key(self, word: str) -> bool:
        return word in (self.options or {}) or word.split(".")[0] in self.sections


def companion_command(grammar: Grammar) -> Callable:
    """The decorator that makes `body(options, overrides)` a console script reading sys.argv with
    `grammar`: help, version, the arguments read, errors and Ctrl-C as the module docstring says."""

    def decorate(body: Callable[[dict[str, str], list[str]], None]) -> Callable[[], None]:
        @functools.wraps(body)
        def main() -> None:
            keep_console_optional()  # `| head` may close the pipe before the report ends: no traceback, no exit 1
            args = expand_home(sys.argv[1:])
            try:
                if _shows_usage(grammar, args):
                    print(grammar.usage)
                    return
                if "--version" in args or "-V" in args:  # anywhere, as cnntrain's
                    print(f"{grammar.name} (cnntrain) {__version__}")
                    return
                body(*read_arguments(grammar, args))
            except CnnTrainError as err:
                print_error(str(err))
                sys.exit(EXIT_USAGE)
            except KeyboardInterrupt:  # one line, not a traceback of wherever it was
                print("Interrupted.", file=sys.stderr)
                sys.exit(EXIT_INTERRUPTED)

        return main

    return decorate


def _shows_usage(grammar: Grammar, args: list[str]) -> bool:
    """-h/--help anywhere; no argument at all where a key is required (cnntrain-info runs the default)."""
    required = any(default is None for default in (grammar.options or {}).values())
    return any(arg in ("-h", "--help") for arg in args) or (not args and required)


def read_arguments(grammar: Grammar, args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(options, config overrides) of `args`; a ConfigError saying what to write instead of a slip."""
    for i, arg in enumerate(args):
        if re.match(r"--?[A-Za-z]", arg):
            raise ConfigError(_unknown_option(grammar, args, i))
    if grammar.options is None:  # cnntrain-info: config overrides, read as cnntrain reads them
        problem = override_problem(args, quote_for_hydra(args), sweeps="") or check_group_choices(args)
        if problem:
            raise ConfigError(problem)
        return {}, args
    keys = [arg.lstrip("+").partition("=")[0] if "=" in arg else "" for arg in args]
    # data=, device= and any dotted key (data.root=...) go to the run's config, which says which may change
    overrides = [arg for arg, key in zip(args, keys) if grammar.sections and (key in grammar.sections or "." in key)]
    problem = override_problem(overrides, quote_for_hydra(overrides), sweeps="")
    if problem:
        raise ConfigError(problem)
    return parse_key_values([arg for arg in args if arg not in overrides], grammar), overrides


def parse_key_values(args: list[str], grammar: Grammar) -> dict[str, str]:
    """key=value arguments checked against `grammar.options` (key -> default, None when required); a
    value in quotes (`inputs="'my images/'"`) is read without them, as Hydra reads it.

    A bare existing path fills the first of `grammar.positional` not given as key=value (cnntrain-predict:
    the run, then the inputs). `run <path>`, `run:<path>`, `run = <path>` are answered with run=<path>, for
    every key of the options and of the sections (cnntrain-eval's data.root=...)."""
    options, usage = grammar.options, grammar.usage
    values = dict(options)
    given = {arg.partition("=")[0] for arg in args if "=" in arg}
    free = [key for key in grammar.positional if key not in given]
    for i, arg in enumerate(args):
        key, sep, value = arg.partition("=")
        if sep and key in options:
            values[key] = _unquoted(value)
            continue
        after = args[i + 1] if i + 1 < len(args) else ""
        # An existing path is the run (or the inputs), unless it is a key followed by its value: `run <path>`.
        takes_value = after and ("=" not in after or after.startswith("="))
        if not sep and free and Path(arg).exists() and not (grammar.is_key(arg) and takes_value):
            values[free.pop(0)] = arg
            continue
        slip = None if sep and key else key_value_slip(args, i, grammar.is_key)
        if slip:
            raise ConfigError(slip)
        if not sep and ("/" in arg or Path(arg).suffix):
            raise ConfigError(
                f"Unexpected argument '{arg}': there is no such folder or file. Give the run as "
                f"run=<run folder>.\n{usage}"
            )
        raise ConfigError(f"Unexpected argument '{arg}'.{did_you_mean(key, options)}\n{usage}")
    missing = [key + "=" for key, value in values.items() if value is None]
    if missing:
        raise ConfigError(f"Missing {', '.join(missing)}\n{usage}")
    return values


def _unquoted(value: str) -> str:
    """'my images/' or "my images/" as my images/ (Hydra's grammar takes quotes off a value)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _unknown_option(grammar: Grammar, args: list[str], i: int) -> str:
    """`--topk 3`, `--topk=3`, `-k`: the companion commands' settings are key=value, without dashes."""
    option = args[i]
    key, sep, value = option.lstrip("-").partition("=")
    if not sep:  # --topk 3: its value is the next argument
        after = args[i + 1] if i + 1 < len(args) else ""
        value = after if after and "=" not in after and not after.startswith("-") else "<value>"
    key = key.replace("-", "_")
    if grammar.options is None:  # a config key, or the one it most likely stands for (epochs: trainer.epochs)
        meant = meant_key(key)
        meant = "" if meant == key and check_override_keys([f"{key}=0"]) else meant
    else:
        close = difflib.get_close_matches(key, list(grammar.options) + list(grammar.sections), n=1)
        meant = key if grammar.is_key(key) else (close[0] if close else "")
    write = f": write {meant}={value}" if meant else f" (see {grammar.name} --help)"
    return (
        f"Unknown option '{option}': {grammar.name}'s settings are key=value without dashes{write}. "
        f"Its only options are --help and --version."
    )


def key_value_slip(args: list[str], i: int, is_key) -> str | None:
    """What to write instead of `args[i]`, an argument without '=', when it is half of a key=value
    (`run <path>`, `run:<path>`, `run = <path>`, `run= <path>`); `is_key(word)`: the command takes that key."""
    arg = args[i]
    before = args[i - 1] if i else ""
    after = args[i + 1] if i + 1 < len(args) else ""
    key, colon, value = arg.partition(":")
    if colon and value and is_key(key):
        return f"Settings are written key=value, not key:value: write {key}={value}."
    if arg.startswith("=") and is_key(before):  # `run =<path>`, `run = <path>`: said at the key already
        return f"No spaces around '=': write {before}{arg}{after if arg == '=' else ''}."
    if is_key(arg) and after.startswith("="):
        fixed = arg + after + (args[i + 2] if after == "=" and i + 2 < len(args) else "")
        return f"No spaces around '=': write {fixed}."
    if before.endswith("=") and is_key(before[:-1]):
        return f"No spaces around '=': write {before}{arg}."
    if is_key(arg):
        fixed = f"{arg}={after}" if after and "=" not in after else f"{arg}=<value>"
        return f"'{arg}' needs its value after '=' without spaces: write {fixed}."
    return None
