"""Signals in tests, as a user at a terminal has them: a test run started in the background (CI may
be) inherits SIGINT ignored, and one under nohup SIGHUP ignored, which cnntrain rightly leaves
ignored. The fixture puts SIGINT back for tests that send it in-process; `as_under_nohup` starts a
child as nohup does (preexec_fn=); `send_signals` is what a test's hook module runs in a training step."""

from __future__ import annotations

import inspect
import os
import signal
import threading
import time

import pytest


@pytest.fixture
def ctrl_c_as_at_a_terminal():
    """SIGINT raises KeyboardInterrupt in this test, as at a terminal; put back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def as_under_nohup() -> None:
    """For `subprocess.Popen(preexec_fn=)`: the child ignores SIGHUP, as `nohup cnntrain ...` does."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def send_signals(signum, times, busy):
    """`times` signals; with `busy` seconds, sent while this thread sleeps (as in a long torch call:
    Python runs its handlers only between the main thread's bytecodes) to a thread of their own,
    so that the sleep goes on; the time they were sent is written to TEST_SENT_AT."""
    if not busy:
        for _ in range(times):
            os.kill(os.getpid(), signum)
        return

    def send():
        time.sleep(0.2)  # the main thread is asleep by now
        with open(os.environ["TEST_SENT_AT"], "w") as f:
            f.write(repr(time.time()))
        for _ in range(times):
            signal.pthread_kill(threading.get_ident(), signum)

    threading.Thread(target=send).start()
    time.sleep(busy)


def source_of(*functions) -> str:
    """The functions' source, for a hook module written into a run's folder (which imports no test code)."""
    return "\n\n".join(inspect.getsource(function) for function in functions)
