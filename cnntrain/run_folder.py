"""The run folder: its file names, summary.json and the provenance recorded in it.

    <run folder>/
      .hydra/config.yaml   the composed config (Hydra writes it; calls from Python get one too)
      metrics.csv          one row per finished epoch
      curves.png           loss/accuracy curves (plots.CurvesPlot)
      summary.json         status, best epoch, test metrics, provenance
      train.log            what the console showed
      checkpoints/last.pt best.pt
      tensorboard/         with logger=tensorboard
      predictions-<inputs>.csv  written by cnntrain-predict (-2, -3, ... when it exists)
      eval/<name>/         written by cnntrain-eval (EvalFolder): eval.json, per_class.csv,
                           confusion_matrix.csv/.png, misclassified.csv/.png
      export/model.onnx    written by cnntrain-export (or model.torchscript.pt, model.pt2)
      export/model.onnx.json   beside each: classes, preprocessing, verification (<model file>.json)
      .cnntrain.lock       held by the process training in the folder (so that no second one can)

Every other module gets these paths from a `RunFolder`, so a name is spelled once.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Callable

from omegaconf import DictConfig, OmegaConf

from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.process import interrupts_held


class RunFolder:
    """The files of one run, under `path`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.pt"
        self.best_checkpoint = self.checkpoints / "best.pt"
        self.metrics_csv = self.path / "metrics.csv"
        self.curves_png = self.path / "curves.png"
        self.summary_json = self.path / "summary.json"
        self.train_log = self.path / "train.log"
        self.config_yaml = self.path / ".hydra" / "config.yaml"
        self.tensorboard = self.path / "tensorboard"
        self.predictions_csv = self.path / "predictions.csv"
        self.evaluations = self.path / "eval"
        self.export = self.path / "export"
        self.lock_file = self.path / ".cnntrain.lock"
        self._lock: IO | None = None
        # False in the ranks > 0 of a distributed run: rank 0 alone locks the folder and writes its files.
        self.writes = True

    @classmethod
    def for_run(cls, cfg: DictConfig, path: Path | str | None = None) -> "RunFolder":
        """`path` if given, else the folder Hydra made for this job, else a new timestamped one; created."""
        path = Path(path) if path else (_hydra_run_dir() or _new_run_dir(cfg))
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve())

    def checkpoint(self, which: str) -> Path:
        """checkpoints/<which>.pt (which: best or last)."""
        return self.checkpoints / f"{which}.pt"

    def export_file(self, format: str) -> Path:
        """export/model.onnx, model.torchscript.pt or model.pt2: where cnntrain-export writes `format`."""
        return self.export / EXPORT_FILE_NAMES[format]

    def evaluation(self, split: str, checkpoint: str, data: str | None = None, tta: str | None = None) -> "EvalFolder":
        """eval/<split>_<checkpoint>/ for an evaluation on the run's own data; eval/<data>_<split>_<checkpoint>/
        on other data (`data`: a name for it, e.g. image_folder-new_scans-1a2b3c4d), so results on
        different data do not overwrite each other; `tta` (a test-time augmentation other than the
        run's, "none" or "hflip") adds _tta-<tta>."""
        parts = (data, split, checkpoint, f"tta-{tta}" if tta else None)
        return EvalFolder(self.evaluations / "_".join(part for part in parts if part))

    def save_config_if_missing(self, cfg: DictConfig) -> None:
        """Hydra writes .hydra/config.yaml for CLI runs; calls from Python get the same file."""
        if self.writes and not self.config_yaml.exists():
            self.config_yaml.parent.mkdir(parents=True, exist_ok=True)
            self.config_yaml.write_text(OmegaConf.to_yaml(cfg))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if not self.writes:
            return
        write_atomically(self.summary_json, lambda f: f.write(json.dumps(summary, indent=2) + "\n"), binary=False)

    def holds_run(self) -> str | None:
        """What shows that a run was trained here (its files), or None for a new or empty folder."""
        found = [p.name for p in (self.summary_json, self.metrics_csv, self.last_checkpoint, self.best_checkpoint,
                                  self.train_log) if p.is_file()]
        return ", ".join(found) if found else None

    def refuse_if_it_holds_a_run(self) -> None:
        """A new run must not write over another run's files: say how to continue that one instead."""
        if not self.writes:
            return
        found = self.holds_run()
        if found:
            raise ConfigError(
                f"{self.path} already holds a run ({found}); a new run there would overwrite it. Continue that "
                f"run with: cnntrain resume={display_path(self.path)}, or train in a new folder (leave out "
                f"hydra.run.dir for a timestamped one under outputs/).")

    def lock(self) -> None:
        """Hold the folder for this process until `unlock` or its end (a crash releases it too): a second
        process training in the same folder is refused instead of mixing its files with this one's."""
        if not self.writes:
            return
        try:
            import fcntl
        except ImportError:  # not on Windows: no lock there
            return
        handle = open(self.lock_file, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise ConfigError(f"{self.path} is in use by another cnntrain process{f' (pid {owner})' if owner else ''}. "
                              f"Wait for it to end, or train in another folder.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def read_summary(self) -> dict[str, Any]:
        """summary.json, or {} when the run has none yet; a damaged one is a ConfigError saying what to do."""
        if not self.summary_json.is_file():
            return {}
        try:
            summary = json.loads(self.summary_json.read_text(encoding="utf-8"))
            problem = None if isinstance(summary, dict) else "not a JSON object"
        except (ValueError, OSError) as err:
            problem = str(err)
        if problem:
            raise ConfigError(f"{self.summary_json} is damaged ({problem}). It is only the run's report: delete it "
                              f"and try again; the checkpoints hold the run.")
        return summary

    def written_files(self) -> list[Path]:
        """What training (and a resume) writes in the folder, folders first."""
        return [self.checkpoints, self.last_checkpoint, self.best_checkpoint, self.metrics_csv, self.curves_png,
                self.summary_json, self.train_log, self.config_yaml.parent, self.config_yaml, self.tensorboard,
                self.lock_file]

    def refuse_links_out(self, paths: list[Path] | None = None, fix: str = "") -> None:
        """Refuse to write `paths` (default: `written_files`) when one of them, or a folder on the way to it, is a
        link that leads out of the run folder: a run folder from elsewhere (or a careless `ln -s`) must not make
        a command replace files outside it. Links that stay inside the folder, and the run folder itself being
        a link, are fine."""
        root = self.path.resolve()
        for path in self.written_files() if paths is None else paths:
            real = Path(path).resolve()
            if real != root and root not in real.parents:
                link = _first_link(self.path, Path(path))
                raise CnnTrainError(
                    f"{_unresolved(link)} is a link to {os.path.realpath(link)}, outside the run folder "
                    f"{display_path(self.path)}; "
                    f"cnntrain writes only inside a run folder (through a link it would replace files elsewhere). "
                    f"{fix or 'Replace the link with a folder or file of the run folder itself.'}")

    def remove_stale_temp_files(self) -> None:
        """Temporary checkpoint files left by a kill in the middle of a save."""
        for stale in self.checkpoints.glob("*.tmp"):
            stale.unlink()

    def __str__(self) -> str:
        return str(self.path)


def runs_in(folder: Path | str, depth: int = 2) -> list[Path]:
    """The run folders inside `folder` (outputs/ holds <date>/<run>, a date folder <run>, a sweep <job>),
    up to `depth` levels down, newest first (by their newest file)."""
    found = []
    level = [Path(folder)]
    for _ in range(depth):
        children = sorted(child for parent in level for child in parent.iterdir() if child.is_dir())
        runs = {child for child in children if RunFolder(child).holds_run()}  # once each: it reads the disk
        found += [child for child in children if child in runs]
        level = [child for child in children if child not in runs]
    return sorted(found, key=_newest_file_time, reverse=True)


def _newest_file_time(run: Path) -> float:
    files = (RunFolder(run).summary_json, RunFolder(run).metrics_csv, RunFolder(run).last_checkpoint)
    return max((f.stat().st_mtime for f in files if f.is_file()), default=run.stat().st_mtime)


def not_a_run_message(folder: Path | str, use: str, shown: int = 3) -> str:
    """What cnntrain resume=, cnntrain-eval/-export/-predict run= say for a folder that holds no run: the runs
    inside it when it holds some (outputs/, a date folder, a sweep), newest first, with the command for the
    newest; `use`: that command, {} standing for the folder (e.g. "cnntrain resume={}")."""
    folder = Path(folder)
    try:
        runs = runs_in(folder)
    except OSError:
        runs = []
    if not runs:
        return (f"{display_path(folder)} is not a run folder (it has no checkpoints/, summary.json or metrics.csv) "
                f"and holds none. Give a run folder (outputs/<date>/<time>_<model>_<data>).")
    names = ", ".join(display_path(run) for run in runs[:shown])
    more = f" and {len(runs) - shown} more" if len(runs) > shown else ""
    return (f"{display_path(folder)} is not a run folder; the runs in it are, newest first: {names}{more}. "
            f"The newest: {use.format(display_path(runs[0]))}")


def refuse_links_out_of_run(path: Path | str, fix: str) -> None:
    """`path` is about to be written: when it lies in a run folder (the nearest folder above it that holds a
    run), it must not leave that folder through a link (`RunFolder.refuse_links_out`)."""
    path = Path(os.path.abspath(path))  # not resolved: the links on the way are what is checked
    for folder in path.parents:
        if RunFolder(folder).holds_run():
            RunFolder(folder).refuse_links_out([path], fix)
            return


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


# cnntrain-export's formats and the file each is written to (in <run folder>/export/ by default).
EXPORT_FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported_program": "model.pt2"}


def export_info_path(model_file: Path | str) -> Path:
    """The json beside an exported model: its full file name + .json (model.onnx -> model.onnx.json), so that
    the exports of several formats in one folder each keep their own."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def export_predictions_csv(model_file: Path | str) -> Path:
    """Where cnntrain-predict run=<file.onnx> writes by default: beside the file (model.onnx ->
    model.predictions.csv)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.stem + ".predictions.csv")


class EvalFolder:
    """The files of one evaluation of a run (cnntrain-eval), in `path` (RunFolder.evaluation)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.eval_json = self.path / "eval.json"  # every figure below, and what was evaluated
        self.per_class_csv = self.path / "per_class.csv"  # precision, recall, F1, support per class
        self.confusion_csv = self.path / "confusion_matrix.csv"  # rows: actual class, columns: predicted
        self.confusion_png = self.path / "confusion_matrix.png"
        self.misclassified_csv = self.path / "misclassified.csv"  # file (or index), actual, predicted, probability
        self.misclassified_png = self.path / "misclassified.png"  # a grid of some of them, "pred X / actual Y"

    def files(self) -> list[Path]:
        """The folder and every file written in it."""
        return [self.path, self.eval_json, self.per_class_csv, self.confusion_csv, self.confusion_png,
                self.misclassified_csv, self.misclassified_png]

    def __str__(self) -> str:
        return str(self.path)


def run_folder_problem(args: list[str]) -> str | None:
    """A hydra.run.dir (hydra.sweep.dir with -m) that holds a run (a sweep), or cannot be made, and a
    sweep subdir that all jobs would share: refused before Hydra writes its .hydra/ files there."""
    sweep = any(arg in ("-m", "--multirun") for arg in args)
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if sep and key == "hydra.sweep.subdir" and sweep and "hydra.job.num" not in value:
            return (f"hydra.sweep.subdir={value} would put every job of the sweep in one folder, each "
                    f"overwriting the last; keep ${{hydra.job.num}} in it.")
        if key != ("hydra.sweep.dir" if sweep else "hydra.run.dir"):
            continue
        if value.strip().strip("'\"") in ("", "null"):
            return f"{key}={value} needs a folder; leave it out for a new timestamped one under outputs/."
        path = _folder_value(value)
        if path is None:
            continue
        try:
            if sweep:
                _refuse_a_used_sweep_folder(path)
            else:
                RunFolder(path).refuse_if_it_holds_a_run()
            path.mkdir(parents=True, exist_ok=True)
        except CnnTrainError as err:
            return str(err)
        except OSError as err:
            return f"Cannot create the folder {path} ({key}): {err.strerror or err}. Give a folder you can write to."
    return None


def _folder_value(value: str) -> Path | None:
    """The folder an override's value names (quotes dropped, ${oc.env:...} and ~ resolved); None
    when it cannot be told before Hydra runs (e.g. ${now:...}, which makes a new folder anyway)."""
    value = value.strip().strip("'\"")
    if "${" in value:
        try:
            value = str(OmegaConf.create({"value": value}).value)
        except Exception:  # an interpolation only Hydra can resolve
            return None
    return Path(value).expanduser()


def _refuse_a_used_sweep_folder(path: Path) -> None:
    used = (path / "sweep.csv").exists() or any(path.glob("*/.hydra"))
    if used:
        raise CnnTrainError(f"{path} already holds a sweep; a new sweep there would overwrite its jobs and "
                            f"report their old results as its own. Give a new hydra.sweep.dir, or leave it out "
                            f"for a timestamped one under outputs/multirun/.")


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


def _new_run_dir(cfg: DictConfig) -> Path:
    """outputs/<date>/<time with microseconds>_<model>_<data>: two runs never share one."""
    now = datetime.now()
    while True:
        path = Path("outputs") / now.strftime("%Y-%m-%d") / f"{now:%H-%M-%S-%f}_{cfg.model.name}_{cfg.data.name}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            now = datetime.now()


def _hydra_run_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    except ImportError:
        return None


def display_path(path: Path | str) -> str:
    """`path` relative to the current folder when it is inside it (shorter on screen)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def provenance(device) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: the device, library versions, the git commit."""
    return {"device": describe_device(device), "versions": versions(), "git_commit": git_commit()}


def describe_device(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def versions() -> dict[str, str | None]:
    import hydra
    import torch

    from cnntrain import __version__

    return {"cnntrain": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": installed_version("torchvision"), "hydra": hydra.__version__}


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
