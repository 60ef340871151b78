"""Writing a file so that it is never half-written, never written through a link out of its run folder, and
never fails without saying where and why: `write_atomically` (through which checkpoints, summary.json,
metrics.csv, the plots and predictions.csv are written), `write_failure` (torch's serializer failing on a
full disk, as the OSError it is), `check_writable` / `cannot_write_message` (a read-only or full folder
answered before the work), `links_out_problem` (RunFolder.refuse_links_out's check), `display_path`."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cnntrain.errors import CnnTrainError
from cnntrain.process import interrupts_held


def write_atomically(path: Path | str, write: Callable[[IO], Any], binary: bool = True, sync: bool = False) -> None:
    """`write(file)` into a temporary file of its own beside `path`, then renamed over `path`.

    A crash at any moment leaves the old file or the new one, never half of one (os.replace
    is atomic); two processes never share a temporary name (mkstemp); the file gets the mode
    a plain open() would give it (mkstemp's own is 0600). `sync`: fsync before the rename.
    A second Ctrl-C waits for the file to be in place (`interrupts_held`): no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_held():
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp_name, 0o666 & ~_umask())
            text_options = {} if binary else {"encoding": "utf-8", "newline": ""}
            with os.fdopen(fd, "wb" if binary else "w", **text_options) as f:
                write(f)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException as err:
            failure = write_failure(err, path)  # before the unlink: a full disk is full while the file is there
            Path(tmp_name).unlink(missing_ok=True)
            if failure is not None and failure is not err:
                raise failure from err
            raise


# One MiB: below it, a file system on which torch's writer failed is full (root's reserved blocks included).
FULL_DISK_BYTES = 2**20


def write_failure(err: BaseException, path: Path | str) -> OSError | None:
    """`err` as the OSError it is when writing `path` failed: itself, or torch's serializer failing on a full disk
    (torch.save's RuntimeError "[enforce fail at inline_container.cc:...] unexpected pos ...", which hides the
    OSError of the write beneath it) as ENOSPC, or as EIO when the disk has room; None for other errors."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    if not (isinstance(err, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text)):
        return None
    try:
        full = shutil.disk_usage(Path(path).parent).free < FULL_DISK_BYTES
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    reason = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return OSError(errno.EIO, f"the file could not be written ({reason})", str(path))


def check_writable(folder: Path | str, fix: str) -> None:
    """A file can be created in `folder` (tried with a temporary one), else a CnnTrainError saying where it
    could not write, why, and `fix`: before the work, so that a read-only or full file system costs nothing."""
    try:
        fd, name = tempfile.mkstemp(prefix=".cnntrain-write-test-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise CnnTrainError(cannot_write_message(Path(folder), err, fix)) from None


def cannot_write_message(path: Path, err: OSError, fix: str) -> str:
    """Where a command could not write, why (the system's words) and how to go on."""
    return f"Cannot write to {display_path(path)}: {err.strerror or err}. {fix}"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def links_out_problem(root: Path, paths: list[Path]) -> str | None:
    """The first of `paths` that, through a link on the way to it, leads out of the folder `root` (said with
    the link and where it leads), or None. Links that stay inside, and `root` itself being a link, are fine."""
    real_root = root.resolve()
    for path in paths:
        real = Path(path).resolve()
        if real != real_root and real_root not in real.parents:
            link = _first_link(root, Path(path))
            return (
                f"{_unresolved(link)} is a link to {os.path.realpath(link)}, outside the run folder "
                f"{display_path(root)}"
            )
    return None


def _unresolved(path: Path) -> str:
    """`path` relative to the current folder when inside it, its links left as they are (display_path
    resolves them, which would name the link's target instead of the link)."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _first_link(root: Path, path: Path) -> Path:
    """The first link on the way from `root` down to `path` (`path` itself when none is found on the way)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            return current
    return path


def display_path(path: Path | str) -> str:
    """`path` relative to the current folder when it is inside it (shorter on screen)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
