"""Running the command line as a user runs it, for every test that does: the installed console
scripts (cnntrain, cnntrain-eval, -export, -predict, -info) or `python -m cnntrain`, in a
subprocess, its output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def script(name: str) -> str:
    """The installed console script `name` of this environment (cnntrain, cnntrain-eval, ...)."""
    return str(Path(sys.executable).with_name(name))


def run_cli(
    command: str,
    *args,
    cwd=None,
    env: dict | None = None,
    timeout: float = 300,
    python: tuple[str, ...] = (),
    inherit_env: bool = True,
) -> subprocess.CompletedProcess:
    """`command` with `args`, finished: its status, stdout and stderr. `command`: a console script's
    name, or "python -m cnntrain", then `python` goes before `-m cnntrain` (a launcher such as
    `-m torch.distributed.run --nproc_per_node=2`). `env`: variables added to this process's (with
    `inherit_env=False`: the whole environment)."""
    if command == "python -m cnntrain":
        argv = [sys.executable, *python, "-m", "cnntrain"]
    else:
        argv = [script(command)]
    return subprocess.run(
        [*argv, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env and inherit_env else env,
    )
