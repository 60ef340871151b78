"""What a run needs from the process it runs in: a console that may go away, and files never cut by Ctrl-C.

A console goes away while a run goes on: `cnntrain ... | tee log.txt` whose tee died of the
same Ctrl-C, `| head`, a closed terminal or SSH session. Writing to it then fails (EPIPE, or
EIO on a hung-up terminal), and an error there must never end a run or lose its work:
`console_may_go_away()` replaces sys.stdout and sys.stderr with `ConsoleStream`s, which drop
the console from the first failed write on (its file descriptor is pointed at /dev/null, so
C code and Python's own flush at exit cannot fail either, as Python's docs on SIGPIPE advise)
while train.log goes on receiving every line (display.Reporter).

`budget_start()` is when a run's trainer.time_limit starts counting: the process's start for the first
run of a command (the user times the whole command), the run's own start otherwise.

`interrupts_held()` marks code that must not be cut in the middle (a checkpoint being
replaced): a signal handler asks `hold_interrupt()` before raising KeyboardInterrupt, and the
interrupt is raised when the outermost held block ends instead.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

STREAMS = ("stdout", "stderr")


class ConsoleStream:
    """sys.stdout or sys.stderr whose writes never fail: from the first failed write on (the reader is
    gone) the console is dropped and `lost` says why; everything else is the wrapped stream's."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.lost: str | None = None

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                return self.stream.write(text)
            except BlockingIOError:  # a non-blocking terminal that is full: this text is dropped, not the console
                pass
            except (OSError, ValueError) as err:  # ValueError: the stream was closed under us
                self._lose(err)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self.stream.flush()
            except BlockingIOError:
                pass
            except (OSError, ValueError) as err:
                self._lose(err)

    def _lose(self, err: Exception) -> None:
        self.lost = getattr(err, "strerror", None) or str(err) or type(err).__name__
        try:  # its descriptor to /dev/null: the bytes left in the stream's buffer, C code and exit's flush go there
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
            self.stream.flush()
        except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO): dropping the writes is enough
            pass

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ...: the wrapped stream's
        return getattr(self.stream, name)


def lost_console() -> str | None:
    """Why the console went away ('Broken pipe', 'Input/output error'), or None while it is there."""
    for name in STREAMS:
        stream = getattr(sys, name, None)
        if isinstance(stream, ConsoleStream) and stream.lost:
            return stream.lost
    return None


def keep_console_optional() -> None:
    """For the rest of the process: sys.stdout and sys.stderr become `ConsoleStream`s (a command line's
    process, whose last words after a run, and Python's exit, may meet a console that went away)."""
    for name in STREAMS:
        stream = getattr(sys, name, None)
        if stream is not None and not isinstance(stream, ConsoleStream):
            setattr(sys, name, ConsoleStream(stream))


@contextmanager
def console_may_go_away() -> Iterator[None]:
    """`keep_console_optional` for a block (a run started from Python): the streams are put back after it.

    A console that went away stays pointed at /dev/null: the put-back stream writes there without error.
    """
    replaced = {name: getattr(sys, name, None) for name in STREAMS}
    keep_console_optional()
    try:
        yield
    finally:
        for name, stream in replaced.items():
            current = getattr(sys, name, None)
            if isinstance(current, ConsoleStream) and current.stream is stream and current is not stream:
                setattr(sys, name, stream)


class _Held(threading.local):
    depth = 0  # interrupts_held blocks open in the main thread
    waiting = False  # an interrupt came during one of them


_held = _Held()


@contextmanager
def interrupts_held() -> Iterator[None]:
    """A block a KeyboardInterrupt from a signal handler must not cut (a checkpoint being replaced and
    recorded as saved): one that comes is raised when the outermost block ends, unless it ends in
    an error of its own. In threads other than the main one (where handlers never run) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held.depth += 1
    try:
        yield
    except BaseException:
        _held.depth -= 1
        if not _held.depth:
            _held.waiting = False  # the block's own error ends the run anyway
        raise
    _held.depth -= 1
    if not _held.depth and _held.waiting:
        _held.waiting = False
        raise KeyboardInterrupt


def hold_interrupt() -> bool:
    """For a signal handler about to raise KeyboardInterrupt: True when the main thread is in an
    `interrupts_held` block, which raises it when it ends."""
    if _held.depth:
        _held.waiting = True
        return True
    return False


_budget = {"from_process_start": False}


def count_from_process_start() -> None:
    """The command line's: the first run of this process counts its time limit from the process's start
    (cnntrain's import), so that Python's start, torch's import and the data's loading are inside it."""
    _budget["from_process_start"] = True


def budget_start() -> tuple[float, str]:
    """(time.monotonic() a run's time limit counts from, what that is in words): the process's start for the
    first run of a command, the run's own start for a sweep's later jobs in one process and for Python."""
    import time

    from cnntrain import _IMPORTED_AT

    if _budget["from_process_start"]:
        _budget["from_process_start"] = False
        return _IMPORTED_AT, "process start"
    return time.monotonic(), "job start"
