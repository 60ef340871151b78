"""What a run's numbers depend on besides its config, recorded in summary.json: the device, the library
versions, the git commit."""

from __future__ import annotations

import platform
import subprocess
from typing import Any

from cnntrain.cpu import cpu_description


def provenance(device) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: the device, library versions, the git commit."""
    return {"device": describe_device(device), "versions": versions(), "git_commit": git_commit()}


def describe_device(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({cpu_description()}, {threads} thread{'s' if threads != 1 else ''} at the end)"
    return device.type


def versions() -> dict[str, str | None]:
    import hydra
    import torch

    from cnntrain import __version__

    return {
        "cnntrain": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": installed_version("torchvision"),
        "hydra": hydra.__version__,
    }


def installed_version(distribution: str) -> str | None:
    """A package's version from its installed metadata: without importing it (torchvision's import
    costs 0.3-1 s, and a run on IDX data never needs it)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the current folder's git checkout, if there is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return result.stdout.strip() if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
