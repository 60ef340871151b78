"""Checkpoints: written atomically, loaded without running anyone's code.

A checkpoint is a plain dict of tensors and primitive values (model, optimizer and
scheduler state, epoch, RNG state, how to rebuild the model, the resolved config),
so `torch.load(weights_only=True)` can open it: loading a checkpoint someone sent
you cannot execute code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from cnntrain.errors import CnnTrainError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename over `path`.

    os.replace is atomic on POSIX and Windows, so a crash at any moment leaves either
    the old checkpoint or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            torch.save(state, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CnnTrainError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CnnTrainError(f"Cannot load checkpoint {path}: {err}") from err
