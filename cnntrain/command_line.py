"""`cnntrain`'s command line read before Hydra runs: Hydra's own flags told apart from the
overrides, and the overrides checked against Hydra's grammar.

Hydra answers a slip in its grammar (`model:alexnet`, `model = alexnet`, a sweep list split by
spaces, a sweep without -m) with its parser's words, a link and "set HYDRA_FULL_ERROR=1". Here
each slip gets one line saying what to write instead, and the CLI exits with status 2 as for
any other config error. Torch-free, like config.py: the answer comes in a fraction of a second.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from cnntrain.config import GROUPS, group_choices
from cnntrain.errors import ConfigError
from cnntrain.key_checks import check_override_keys

EXAMPLE = "e.g. model=alexnet trainer.epochs=5"


@dataclass
class CommandLine:
    """Hydra's flags (`flags`: argparse's namespace of Hydra's own parser) and the overrides."""

    flags: argparse.Namespace
    options: list[str]  # the flags as Hydra reads them, before the overrides
    overrides: list[str]

    @property
    def multirun(self) -> bool:
        return bool(self.flags.multirun)

    @property
    def runs_a_job(self) -> bool:
        """False for --cfg, --info, --help, --hydra-help and -sc: they show something and write nothing."""
        flags = self.flags
        return not (flags.cfg or flags.info or flags.help or flags.hydra_help or flags.shell_completion)

    @property
    def other_configs(self) -> bool:
        """Configs from elsewhere (--config-dir, --config-path, --config-name): names only Hydra can check."""
        flags = self.flags
        return bool(flags.config_dir or flags.config_path or flags.config_name)

    def argv(self) -> list[str]:
        """The arguments for Hydra: flags first, so that `model=mlp -m lr=0.1,0.2` works as `-m model=mlp ...`
        (Hydra's parser stops taking overrides at the first flag after one)."""
        return self.options + self.overrides


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage and exits; say it in one line instead
        raise ConfigError(f"{message[0].upper()}{message[1:]}. See cnntrain --help.")


def read_command_line(args: list[str]) -> CommandLine:
    """Hydra's flags and the overrides of `args`, flags and overrides in any order; a ConfigError for an
    option Hydra does not have (`--epochs 3`, `--model=alexnet`: settings are key=value, without dashes)."""
    from hydra._internal.utils import get_args_parser

    hydras = get_args_parser()
    parser = _Parser(add_help=False)
    for action in hydras._actions:
        if action.dest != "version":  # the CLI answers --version itself (cnntrain's and Hydra's)
            parser._add_action(action)
    flags, unknown = parser.parse_known_intermixed_args(args)
    if unknown:
        raise ConfigError(_unknown_option_message(unknown[0], args))
    modes = [
        name
        for name, given in (
            ("--run", flags.run),
            ("-m", flags.multirun),
            ("--cfg", flags.cfg),
            ("--info", flags.info),
            ("-sc", flags.shell_completion),
        )
        if given
    ]
    if len(modes) > 1:  # Hydra raises a ValueError (a traceback) for these
        raise ConfigError(
            f"{' and '.join(modes)} cannot be used together: give one of --run, -m, --cfg, --info "
            f"and -sc (e.g. cnntrain --cfg job model=alexnet to see a config, cnntrain -m ... to sweep)."
        )
    options = []
    for action in parser._actions:
        value = getattr(flags, action.dest)
        if action.option_strings and value != action.default:
            options += [action.option_strings[0]] + ([] if action.nargs == 0 else [str(value)])
    return CommandLine(flags, options, list(flags.overrides))


def _unknown_option_message(option: str, args: list[str]) -> str:
    key, sep, value = option.lstrip("-").partition("=")
    if not sep:  # --epochs 3: argparse left 3 among the overrides
        following = args[args.index(option) + 1 :] if option in args else []
        value = following[0] if following and "=" not in following[0] and not following[0].startswith("-") else "..."
    known = meant_key(key)
    return (
        f"Unknown option '{option}': cnntrain's settings are key=value overrides without dashes: write "
        f"{known}={value}. Its options are Hydra's (-m, --cfg job, --info, -sc ...): see cnntrain --help."
    )


def meant_key(key: str) -> str:
    """The config key `key` most likely stands for (`epochs` -> `trainer.epochs`), or `key` itself."""
    key = key.replace("-", "_")
    problem = check_override_keys([f"{key}=0"]) or ""
    meant = re.search(r"Did you mean '([\w.]+)'\?", problem)
    return meant.group(1) if meant else key


def override_problem(
    raw: list[str], quoted: list[str] | None = None, multirun: bool = False, sweeps: str = "cnntrain -m"
) -> str | None:
    """The first override of `raw` that Hydra's grammar cannot read, or a sweep where no sweep runs, said in
    cnntrain's words with what to write instead; None when all are fine.

    `quoted`: the same overrides after override_text.quote_for_hydra (what Hydra will parse; its values that the
    grammar cannot read unquoted are in quotes). `multirun`: sweeps run (-m, or a search that always sweeps).
    `sweeps`: how to run a sweep instead (cnntrain -m); "" where nothing can sweep (resume, cnntrain-info).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    quoted = raw if quoted is None else quoted
    for i, (arg, readable) in enumerate(zip(raw, quoted)):
        key, sep, value = arg.partition("=")
        if sep and not key.strip():  # `model = alexnet`, `model =alexnet`: Hydra reads a key named ''
            return _spaces_around_equals(raw, i)
        if sep and key != key.strip():  # 'model = alexnet' in one argument
            return f"No spaces around '=': write {key.strip()}={value.strip()}."
        if sep and value.endswith(",") and i + 1 < len(raw) and "=" not in raw[i + 1]:  # lr=0.1, 0.2
            return _lone_word(raw, i + 1, multirun, sweeps)
        try:
            override = parser.parse_override(readable)
        except HydraException as err:
            return _lone_word(raw, i, multirun, sweeps) if not sep else _unreadable(arg, err)
        if override.is_sweep_override() and not multirun:
            return _sweep_without_multirun(arg, sweeps)
    return None


def _spaces_around_equals(raw: list[str], i: int) -> str:
    """`model = alexnet` (three arguments) or `model =alexnet` (two): the argument starting with '='."""
    arg = raw[i]
    before = raw[i - 1] if i else ""
    after = raw[i + 1] if arg == "=" and i + 1 < len(raw) else ""
    if not before or "=" in before:
        return f"'{arg}' has no key before '=': write key=value without spaces ({EXAMPLE})."
    return f"No spaces around '=': write {before}{arg}{after}."


def _lone_word(raw: list[str], i: int, multirun: bool, sweeps: str) -> str:
    """An argument without '=' (`0.9`, `model:alexnet`, `alexnet`): what it most likely belongs to."""
    arg = raw[i]
    before = raw[i - 1] if i else ""
    after = raw[i + 1] if i + 1 < len(raw) else ""
    key, colon, value = arg.partition(":")
    if colon and key and value and "://" not in arg and _looks_like_key(key):
        return f"Settings are written key=value, not key:value: write {key}={value}."
    if after.startswith("="):  # `model =alexnet` / `model = alexnet`: said at the '='
        return _spaces_around_equals(raw, i + 1)
    if before.endswith("=") and not before.startswith("-"):  # `model= alexnet`
        return f"No spaces around '=': write {before}{arg}."
    group = _group_of_choice(arg)
    before_key = before.partition("=")[0].lstrip("+")
    if group and group != before_key:  # `cnntrain alexnet`: a model's name
        return f"'{arg}' is not an override: write {group}={arg}."
    if "=" in before and not before.startswith("-"):  # `-m optimizer.lr=0.1 0.9`: a list split by spaces
        values = [before.partition("=")[2].rstrip(",")]
        for word in raw[i:]:
            if "=" in word or word.startswith("-"):
                break
            values.append(word.strip(","))
        fixed = f"{before.partition('=')[0]}={','.join(values)}"
        sweep = f"; to sweep, add -m: {sweeps} {fixed}" if sweeps and not multirun else ""
        return f"'{arg}' is not an override: values are comma-separated without spaces: write {fixed}{sweep}."
    if _looks_like_key(arg) and after and "=" not in after and not after.startswith("-"):  # `model alexnet`
        return f"'{arg} {after}': a key and its value are joined by '=' without spaces: write {arg}={after}."
    return f"Unexpected argument '{arg}': cnntrain takes key=value overrides ({EXAMPLE}); see cnntrain --help."


def _unreadable(arg: str, err: Exception) -> str:
    """Any other grammar error: the argument and Hydra's reason, briefly."""
    reason = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    reason = reason.split(" expecting ")[0]  # the parser's list of the tokens it expected helps nobody
    return (
        f"Cannot read the override '{arg}' ({reason}). Write key=value with a key of letters, digits, '_' "
        f"and dots ({EXAMPLE}); put a value with spaces or special characters in quotes: key='...'."
    )


def _sweep_without_multirun(arg: str, sweeps: str) -> str:
    key, _, value = arg.partition("=")
    if not sweeps:
        return (
            f"{arg} gives several values (a sweep), and this command takes one: write {key}=<one value>; "
            f"a list is written in brackets: {key}=[{value}]."
        )
    return (
        f"{arg} gives several values, which only a sweep runs: to sweep, add -m ({sweeps} {arg}); values are "
        f"comma-separated without spaces. A list value is written in brackets: {key}=[{value}]."
    )


def _looks_like_key(word: str) -> bool:
    """`model`, `trainer.epochs`, `+model.width`, `hydra/launcher`: a key's shape, not a value's."""
    bare = word.lstrip("+~")
    return bool(bare) and bare[0].isalpha() and all(c.isalnum() or c in "._/@-" for c in bare)


def _group_of_choice(word: str) -> str | None:
    """The group whose choice `word` is (alexnet -> model), when exactly one group has it."""
    groups = [group for group in GROUPS if word in group_choices(group)]
    return groups[0] if len(groups) == 1 else None


def always_sweeps(overrides: list[str]) -> bool:
    """A config that makes every run a sweep without -m (hparams_search=..., hydra.mode=MULTIRUN)."""
    for arg in overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if (key == "hparams_search" and value not in ("", "null")) or (key == "hydra.mode" and value == "MULTIRUN"):
            return True
    return False
