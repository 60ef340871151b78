"""The command line's text made readable by Hydra: `~/` expanded, values its grammar cannot read quoted.

The shell leaves a `~` after `key=` alone (`expand_home`), and Hydra's override grammar refuses
values such as a path with an accent or an apostrophe (/data/café, /data/it's), which
`quote_for_hydra` puts in quotes. `cnntrain`, the companion commands and `cnntrain.compose`
pass their arguments through both.
"""

from __future__ import annotations

import os


def expand_home(args: list[str]) -> list[str]:
    """key=~/folder as key=/home/me/folder: the shell leaves a ~ after `key=` alone."""
    expanded = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("-") and (value == "~" or value.startswith("~/")):
            arg = f"{key}={os.path.expanduser(value)}"
        expanded.append(arg)
    return expanded


def quote_for_hydra(args: list[str]) -> list[str]:
    """A value Hydra's override grammar cannot read unquoted (a path such as /data/café or
    /data/it's) put in quotes. Values Hydra reads (lists, sweeps, ${...}) are left as they are."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    quoted = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("-"):
            try:
                parser.parse_override(arg)
            except HydraException:  # the lexer's and the parser's errors alike
                quote = "'" if "'" not in value else '"'
                if quote not in value:
                    arg = f"{key}={quote}{value}{quote}"
        quoted.append(arg)
    return quoted
