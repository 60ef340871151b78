"""A console that goes away mid-run (process.ConsoleStream), signals counted and answered from a thread
of their own (interruptions.StopOnSignals), and checkpoint writes a second Ctrl-C never cuts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from cnntrain.interruptions import StopOnSignals
from cnntrain.process import ConsoleStream, console_may_go_away, hold_interrupt, interrupts_held
from cnntrain.run_folder import write_atomically
from tests.conftest import REPO
from tests.signals import ctrl_c_as_at_a_terminal  # noqa: F401  (a fixture: used by name)

# SIGINT as a user at a terminal has it (tests/signals.py): this file's tests send it in-process.
pytestmark = pytest.mark.usefixtures("ctrl_c_as_at_a_terminal")


# Prints far more than a pipe holds, on both streams (print, rich, a write of its own), then says it got to the end.
CHATTY = """
import sys
from rich.console import Console
{setup}
for i in range(2000):
    print("line", i, "x" * 100)
    Console().print("rich line", i)
    sys.stderr.write("error line %d\\n" % i)
open(sys.argv[1], "w").write("reached the end")
"""


def run_into_closed_pipes(setup: str, tmp_path):
    """The script with stdout and stderr into pipes whose readers are gone (as after `| tee` died)."""
    read_out, write_out = os.pipe()
    read_err, write_err = os.pipe()
    os.close(read_out)
    os.close(read_err)
    marker = tmp_path / "marker"
    try:
        result = subprocess.run(
            [sys.executable, "-c", CHATTY.format(setup=setup), str(marker)],
            stdout=write_out,
            stderr=write_err,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(write_out)
        os.close(write_err)
    return result.returncode, marker.is_file()


def test_writes_to_a_console_whose_reader_left_never_fail_the_process(tmp_path):
    # Without it: rich ends the process (SystemExit 1) at its first write, before the end.
    assert run_into_closed_pipes("", tmp_path) == (1, False)
    # With it: every write goes on quietly, and Python's flush at exit raises nothing (exit 120 if it did).
    setup = "from cnntrain.process import keep_console_optional; keep_console_optional()"
    assert run_into_closed_pipes(setup, tmp_path) == (0, True)


class Failing:
    """A stream whose reader is gone."""

    def __init__(self, error):
        self.error = error
        self.writes = 0

    def write(self, text):
        self.writes += 1
        raise self.error

    def flush(self):
        raise self.error

    def isatty(self):
        return False


def test_a_console_stream_drops_the_console_at_the_first_failure_and_says_why():
    stream = ConsoleStream(Failing(OSError(5, "Input/output error")))  # EIO: a hung-up terminal
    assert stream.write("hello") == 5 and stream.write("again") == 5
    stream.flush()
    assert stream.lost == "Input/output error" and stream.stream.writes == 1 and stream.isatty() is False
    full = ConsoleStream(Failing(BlockingIOError(11, "Resource temporarily unavailable")))
    full.write("dropped")
    assert full.lost is None  # a full non-blocking terminal loses a line, not the console


def test_console_may_go_away_puts_the_streams_back(capsys):
    before = sys.stdout
    with console_may_go_away():
        assert isinstance(sys.stdout, ConsoleStream) and sys.stdout.stream is before
        print("through it")
    assert sys.stdout is before
    assert capsys.readouterr().out == "through it\n"


def fake_trainer():
    trainer = SimpleNamespace(stop_requested=False)
    trainer.request_stop = lambda: setattr(trainer, "stop_requested", True)
    return trainer


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_repeated_sigterm_is_one_request_and_a_ctrl_c_then_stops_at_once():
    said = []
    with StopOnSignals(say=said.append) as signals:
        signals.trainer = trainer = fake_trainer()
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # a cluster, or a closing terminal, says it again
        assert wait_for(lambda: said)
        time.sleep(0.3)
        assert trainer.stop_requested and said == ["SIGTERM: stopping after this step, with a checkpoint."]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            time.sleep(10)  # woken by the thread's signal to this one
    assert signals.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_other_signals_with_a_python_handler_are_no_stop_request():
    """The wake-up socket carries every handled signal's number: SIGCHLD from a DataLoader's worker
    processes (torch sets a handler for it) once stopped every run with data.workers >= 1."""
    previous = signal.signal(signal.SIGCHLD, lambda *_: None)
    said = []
    try:
        with StopOnSignals(say=said.append) as signals:
            signals.trainer = trainer = fake_trainer()
            signal.raise_signal(signal.SIGCHLD)
            signal.raise_signal(signal.SIGCHLD)
            time.sleep(0.5)  # the watching thread has read the socket by now
            assert not trainer.stop_requested and said == [] and signals.signum is None
            signal.raise_signal(signal.SIGTERM)
            assert wait_for(lambda: said)
            assert trainer.stop_requested and said == ["SIGTERM: stopping after this step, with a checkpoint."]
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_a_second_ctrl_c_during_a_checkpoint_write_waits_for_the_file_to_be_whole(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")

    def write(f):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        time.sleep(1.0)  # the thread's stop-at-once lands here, and is held
        f.write(b"new" * 1000)

    with StopOnSignals() as signals:
        signals.trainer = fake_trainer()
        with pytest.raises(KeyboardInterrupt):
            write_atomically(path, write)
    assert path.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    assert not hold_interrupt()  # nothing held once the write is done


def test_an_error_in_a_held_block_is_raised_as_itself():
    with pytest.raises(OSError, match="disk full"):
        with interrupts_held():
            assert hold_interrupt()  # an interrupt comes
            raise OSError("disk full")
    with interrupts_held():
        pass  # the interrupt that came during the failed block is not raised here
