"""How a run that stops early is handled and told: Ctrl-C, SIGTERM and SIGHUP (`StopOnSignals`), what
the last checkpoint holds, the message for an interrupted run or a file error, and the command
that resumes it as it works from the current folder.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cnntrain.distributed import launched_by_torchrun, lost_peer
from cnntrain.errors import first_line
from cnntrain.process import hold_interrupt
from cnntrain.run_folder import RunFolder, display_path
from cnntrain.trainer import Trainer
from cnntrain.user_code import module_list, modules_text

# The signals that ask a run to stop. SIGHUP: the terminal or SSH session closed; a run started with
# nohup (SIGHUP ignored) keeps going, with its output in train.log.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
WHY = {"SIGHUP": "SIGHUP (the terminal or SSH session closed)"}


class StopOnSignals:
    """Ctrl-C (SIGINT), SIGTERM (a cluster's time limit, `kill`) and SIGHUP (a closed terminal) during a run.

    While the trainer is fitting, the first one asks it to stop after the current step: the
    checkpointer saves last.pt there (mid-epoch) and the run ends as interrupted. A Ctrl-C
    after that stops at once (KeyboardInterrupt), though never in the middle of a checkpoint
    being written (process.interrupts_held); a repeated SIGTERM or SIGHUP (a closing terminal
    sends several) changes nothing. Before training and after it the first one stops at once.

    Answered at once, from a thread of its own: Python runs a handler only between two bytecodes of
    the main thread, which can be inside one torch call for seconds (AlexNet's backward pass on a
    CPU), and merges signals that come meanwhile into one call. The C-level handler writes each
    signal's number to `signal.set_wakeup_fd`'s socket as it comes, so the thread reading it counts
    every press and says "stopping after this step" (`say`: the console and train.log) while the
    main thread computes; the Python-level handler only raises the KeyboardInterrupt the thread decides on.

    Handlers can only be set from the main thread; elsewhere (a thread of the user's) nothing changes.
    A SIGINT or SIGHUP that the shell ignores (a background job, nohup) stays ignored. A rank of a
    distributed run that leaves because another rank died ignores SIGTERM from then on (see `__exit__`).
    """

    def __init__(self, say: Callable[[str], None] | None = None):
        self.trainer: Trainer | None = None
        self.signum: int | None = None  # the first signal: the exit code's
        self._counted = 0  # signals counted from the wake-up socket (or by the handler where there is none)
        self.say = say or (lambda text: None)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup: int | None = None
        self._stop_now = False  # decided by the watching thread, raised by the handler in the main thread
        self._echoes: dict[int, int] = {}  # wake-up bytes of our own interrupt_main calls, not signals
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None

    @property
    def exit_code(self) -> int:
        """What the process exits with: 128 + the signal's number, as shells report it."""
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if not (signum != signal.SIGTERM and previous is signal.SIG_IGN):
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        self._watch_wakeups()
        return self

    def _watch_wakeups(self) -> None:
        """The socket every signal's number is written to by C as it comes, and the thread that reads it."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            self._previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):  # no wake-up socket here: the handler decides alone, when it runs
            reader.close()
            writer.close()
            return
        self._sockets = (reader, writer)
        self._watcher = threading.Thread(target=self._watch, args=(reader,), name="cnntrain-signals", daemon=True)
        self._watcher.start()

    def _watch(self, reader: socket.socket) -> None:
        while True:
            try:
                select.select([reader], [], [])
                data = reader.recv(64)
            except BlockingIOError:
                continue
            except (OSError, ValueError):  # closed by __exit__
                return
            for signum in data:
                if signum == 0:  # __exit__'s byte: the run is over
                    return
                if signum in self._previous:  # C writes every handled signal's number here: SIGCHLD of a
                    self._received(signum)  # DataLoader's workers (torch's handler) too, which is no stop

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._sockets:
            signal.set_wakeup_fd(self._previous_wakeup if self._previous_wakeup is not None else -1)
            reader, writer = self._sockets
            writer.send(b"\0")
            self._watcher.join(timeout=5)
            reader.close()
            writer.close()
            self._sockets = self._watcher = None
        for signum, previous in self._previous.items():
            if signum == signal.SIGTERM and exc is not None and launched_by_torchrun() and lost_peer(exc):
                # Another rank died, and torchrun is about to SIGTERM the ranks left. This one is ending
                # anyway; ignoring the signal lets it say why and where to resume (run.py) before it exits.
                signal.signal(signum, signal.SIG_IGN)
                continue
            signal.signal(signum, previous)

    def _received(self, signum: int) -> None:
        """One signal, counted as it came (in the watching thread; in the handler where there is none)."""
        with self._lock:
            if self._echoes.get(signum):
                self._echoes[signum] -= 1
                return
            self._counted += 1
            first = self._counted == 1
            if self.signum is None:
                self.signum = signum
            trainer = self.trainer
            if first and trainer is not None:
                trainer.request_stop()  # before saying so: a console that blocks cannot delay the stop
            elif first or signum == signal.SIGINT:  # nothing to save yet (or any more), or Ctrl-C again
                self._stop_now = True
                if self._watcher is not None and threading.current_thread() is self._watcher:
                    # The signal again, to the main thread: it wakes a sleep or a wait there (a torch call
                    # finishes first), and the handler there raises. Its wake-up byte is ours, not a press.
                    self._echoes[signum] = self._echoes.get(signum, 0) + 1
                    signal.pthread_kill(threading.main_thread().ident, signum)
                return
            else:
                return  # SIGTERM or SIGHUP again: the stop asked for is under way
        name = signal.Signals(signum).name
        again = " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        self.say(f"{WHY.get(name, name)}: stopping after this step, with a checkpoint{again}.")

    def _handle(self, signum: int, frame) -> None:
        """The Python-level handler, in the main thread between two bytecodes."""
        if self._watcher is None:
            self._received(signum)
        else:  # when it runs before the thread does, the stop still lands on this step
            if self.signum is None:
                self.signum = signum
            if self.trainer is not None:
                self.trainer.request_stop()
        if self._stop_now:
            if hold_interrupt():  # a checkpoint is being written: raised once it is whole
                return
            raise KeyboardInterrupt


def file_error_message(err: OSError, folder: RunFolder, cfg: DictConfig) -> str:
    """What went wrong with which file, what is whole on disk, and how to go on."""
    where = f" {err.filename}" if err.filename else ""
    message = f"Cannot write or read{where}: {err.strerror or err}."
    if folder.last_checkpoint.is_file():  # files are replaced atomically: what is there is whole
        message += (
            f" checkpoints/last.pt in {display_path(folder.path)} is whole. Free some space or fix the "
            f"permissions, then continue with: {resume_command(folder, cfg)}"
        )
    else:
        message += " No checkpoint had been saved yet: fix the cause and start the run again."
    return message


def resume_command(folder: RunFolder, cfg: DictConfig) -> str:
    """The command that resumes the run, as it works from the current folder (with the run's
    imports: a resume imports only modules the user names)."""
    imports = module_list(cfg.get("imports"))
    return f"{cli_command()} resume={display_path(folder.path)}" + (
        f" imports={modules_text(imports)}" if imports else ""
    )


def cli_command() -> str:
    """`cnntrain` when that is the one on PATH, else the path of the script (or python -m cnntrain) running.

    Paths are made absolute without resolving links: a venv's python is a link to the
    system's, and only the link runs with the venv's packages.
    """
    python = Path(os.path.abspath(sys.executable))
    processes = launched_by_torchrun()
    if processes:  # a distributed run resumes under torchrun too (with any number of processes)
        torchrun = shutil.which("torchrun")
        ours = torchrun is not None and Path(os.path.abspath(torchrun)).parent == python.parent
        launcher = "torchrun" if ours else f"{_shown(python)} -m torch.distributed.run"
        return f"{launcher} --nproc_per_node={processes} -m cnntrain"
    on_path = shutil.which("cnntrain")
    on_path = Path(os.path.abspath(on_path)) if on_path else None
    script = Path(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "cnntrain":
        return "cnntrain" if on_path == script else _shown(script)
    if on_path is not None and on_path.parent == python.parent:  # the cnntrain of this environment
        return "cnntrain"
    return f"{_shown(python)} -m cnntrain"


def _shown(path: Path) -> str:
    """`path` relative to the current folder when inside it (./.venv/bin/cnntrain), else absolute."""
    try:
        return f"./{path.relative_to(os.getcwd())}"
    except ValueError:
        return str(path)


def interrupted_outside_training(folder: RunFolder, cfg: DictConfig) -> str:
    """Ctrl-C while loading data or testing: what is on disk says whether there is something to resume."""
    if folder.last_checkpoint.is_file():
        return f"Interrupted. Resume with: {resume_command(folder, cfg)}"
    return "Interrupted before the first epoch finished; there is nothing to resume, start the run again."


def lost_process_message(err: Exception, folder: RunFolder, cfg: DictConfig) -> str:
    """A collective failed because another process of a distributed run died or stopped."""
    reason = first_line(err)
    saved = (
        f"The finished epochs are in checkpoints/last.pt; resume with: {resume_command(folder, cfg)}"
        if folder.last_checkpoint.is_file()
        else "No epoch had finished; start the run again."
    )
    return (
        f"Another process of this distributed run stopped, so this one cannot go on ({reason[:200]}). "
        f"torchrun's report names the rank that failed first and why. {saved}"
    )


def epochs_text(last: int) -> str:
    return "epoch 1" if last == 1 else f"epochs 1-{last}"


def held_text(epochs: int, steps: int) -> str:
    """What a checkpoint holds, e.g. 'epochs 1-2 and steps 1-57 of epoch 3'."""
    inside = f"steps 1-{steps} of epoch {epochs + 1}" if steps else ""
    if not epochs:
        return inside
    return f"{epochs_text(epochs)} and {inside}" if inside else epochs_text(epochs)


def saved_text(checkpoint: dict[str, Any]) -> str:
    position = checkpoint.get("in_epoch")
    return held_text(checkpoint["epoch"], position["step"] if position else 0) + " done"


def continue_text(checkpoint: dict[str, Any]) -> str:
    position = checkpoint.get("in_epoch")
    if position:
        return f"at step {position['step'] + 1} of epoch {position['epoch']}"
    return f"at epoch {checkpoint['epoch'] + 1}"


def interrupted_message(folder: RunFolder, cfg: DictConfig, trainer: Trainer, saved: tuple[int, int]) -> str:
    """An interrupted training; `saved` is what last.pt holds: (finished epochs, steps of the next one)."""
    epochs, steps = saved
    current = trainer.history[-1].epoch + 1 if trainer.history else 1
    where = f"Interrupted during epoch {min(current, trainer.epochs)} of {trainer.epochs}."
    if not epochs and not steps:
        return f"{where} Nothing had been saved yet, so there is nothing to resume; start the run again."
    redo = "" if steps or epochs >= current else " (the unfinished epoch is redone on resume)"
    held = f"checkpoints/last.pt holds {held_text(epochs, steps)}{redo}"
    return f"{where} {held}. Resume with: {resume_command(folder, cfg)}"
