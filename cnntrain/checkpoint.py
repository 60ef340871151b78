"""The checkpoint format: written atomically, loaded without running anyone's code, read in one place.

A checkpoint is a plain dict of tensors and primitive values, so
`torch.load(weights_only=True)` can open it: loading a checkpoint someone sent you
cannot execute code. Its keys (format 1):

- "format", "epoch", "metrics": the format version, the epoch it holds and that epoch's metrics;
- `Trainer.state_dict()`: "state_dict" (the model's weights), "optimizer", "scheduler",
  "grad_scaler", "history" (every finished epoch's metrics), "stop_reason", and
  "in_epoch" (None at an epoch's end; inside an epoch: its number, steps done, running
  sums, the augmentation stream's state, so that a resume carries on mid-epoch), and
  "callbacks" when a callback keeps state ({Callback.state_key: its state_dict()}, hooks.py);
- with trainer.ema only: "state_dict" holds the weights' moving average (what validation,
  the test, cnntrain-eval/predict/export and model.weights=<run> use), "raw_state_dict" the
  trained weights (what a resume and fine-tuning's second stage go on training) and
  "ema_updates" the average's update count (its warm-up). A checkpoint without them (no
  EMA, or an older cnntrain) has its trained weights in "state_dict"; the format number
  stays 1, since every reader of "state_dict" gets the weights to use;
- "rng": the random streams training draws from (dropout, ...);
- "model": the recipe that rebuilds the model (name, settings, classes, channels, input size);
- "classes", "preprocess" (how images were converted: stored size, model size, mean/std,
  augmentations) and "config" (the resolved config it trained with).

`training_checkpoint` writes it, `restore_training` puts a trainer back from it, and
`RunCheckpoint` is the one reader that prediction, resume and users share.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnntrain.errors import CnnTrainError, DatasetError, first_line
from cnntrain.registry import is_whole
from cnntrain.run_folder import write_atomically

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically: a crash at any moment leaves either the old
    checkpoint or the new one, never a half-written file (safe_writes.write_atomically)."""
    write_atomically(path, lambda f: torch.save(state, f), sync=True)


# What every checkpoint a run writes holds (training_checkpoint); the rest depends on its kind.
REQUIRED_KEYS = ("state_dict", "model", "classes", "config")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at `path` as a dict (weights_only: no code in it can run).

    Anything else is a CnnTrainError saying which: missing, refused (Python objects that
    could run code), damaged (cut short, overwritten), or not a cnntrain checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise CnnTrainError(f"Checkpoint {path} is a folder, not a checkpoint file.")
    if not path.is_file():
        raise CnnTrainError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise _damaged(path, err) from None
        # torch's own message goes on to advise weights_only=False: never pass that on.
        raise CnnTrainError(
            f"Refused to load checkpoint {path}: it holds Python objects besides tensors and plain values, and "
            f"loading those could run code. cnntrain reads only the checkpoints runs write (tensors, numbers, "
            f"text). Use a checkpoint from a run folder you trust."
        ) from None
    except Exception as err:  # a zip or pickle stream cut short or overwritten
        raise _damaged(path, err) from None
    if not isinstance(state, dict) or state.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise CnnTrainError(
            f"Cannot read checkpoint {path}: it is not in a checkpoint format this cnntrain "
            f"knows (format {FORMAT_VERSION}). It may come from a newer cnntrain: upgrade it."
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        bare = all(isinstance(value, torch.Tensor) for value in state.values())
        what = "a bare state dict (weights only)" if bare else f"a file without {', '.join(missing)}"
        raise CnnTrainError(
            f"{path} is not a cnntrain checkpoint: it is {what}. cnntrain needs the checkpoints "
            f"a run writes (checkpoints/best.pt, last.pt), which also hold the model's recipe, "
            f"classes and config."
        )
    return state


def _damaged(path: Path, err: Exception) -> CnnTrainError:
    reason = first_line(err)
    other = "best.pt" if path.name == "last.pt" else "last.pt"
    return CnnTrainError(
        f"Checkpoint {path} is damaged ({reason}): it was cut short or overwritten. "
        f"checkpoints/{other} may still be whole; otherwise copy the file again from where it "
        f"came from."
    )


def rng_states() -> dict[str, Any]:
    """Every random stream training draws from (dropout, ...); data order and augmentation are seeded per epoch."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuples(rng["python"]))
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuples(value):
    """random.setstate wants the tuples getstate gave; a checkpoint may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def training_checkpoint(trainer, run_info: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of `trainer` now: at an epoch's end, or between two steps of an epoch.

    "epoch" is the last finished epoch (0: none yet); a checkpoint taken inside an epoch
    also has "in_epoch" (step, running sums, augmentation stream: see Trainer.state_dict).
    `run_info` holds what the trainer does not know: "model" (recipe), "classes",
    "preprocess" and "config".
    """
    last = trainer.history[-1] if trainer.history else None
    return {
        "format": FORMAT_VERSION,
        "epoch": last.epoch if last else 0,
        "metrics": last.as_dict() if last else None,
        **trainer.state_dict(),
        "rng": rng_states(),
        **run_info,
    }


def restore_training(checkpoint: dict[str, Any], trainer) -> int:
    """Put `trainer` (weights, optimizer, schedule, scaler, history) and the RNGs back as a
    checkpoint left them; returns the epoch to continue at."""
    trainer.load_state_dict(checkpoint)
    restore_rng_states(checkpoint["rng"])
    return checkpoint["epoch"] + 1


def check_resumed_classes(checkpoint: dict[str, Any], classes: list[str]) -> None:
    """A resume's data must have the classes its checkpoint was trained on: a class added to (or removed from)
    an image folder or a label file since would not fit the model's head (a size mismatch deep in torch)."""
    trained = list(checkpoint.get("classes") or [])
    if trained and trained != list(classes):
        added, gone = sorted(set(classes) - set(trained)), sorted(set(trained) - set(classes))
        change = (
            "; ".join(filter(None, [added and f"new: {', '.join(added)}", gone and f"gone: {', '.join(gone)}"]))
            or "the same names in another order"
        )
        raise DatasetError(
            f"Cannot resume: the data's classes changed since the run started ({change}); the run's model has "
            f"{len(trained)} outputs, for {', '.join(trained[:12])}{' ...' if len(trained) > 12 else ''}. Put the "
            f"data back as it was (its class folders or label file), or start a new run on the data as it is now "
            f"(model.weights=<this run folder> starts from its weights, with a new head)."
        )


def check_model_description(classes: Any, in_channels: Any, preprocess: Any, where: str, fix: str) -> None:
    """What a checkpoint or an export's json says of its model (class names, input channels, how images are
    converted), checked before anything uses it: a wrong value there gave wrong answers with exit 0 (std 0:
    NaN probabilities) or a traceback. `where` names the file, `fix` says what to do; `check_against_model`
    (predictor.py) then checks the model takes and gives what this says."""

    def refuse(problem: str) -> None:
        raise CnnTrainError(f"{where} {problem}. {fix}")

    if not (
        isinstance(classes, (list, tuple))
        and len(classes) >= 2
        and all(isinstance(name, str) and name for name in classes)
    ):
        refuse(f"has classes={_short(classes)}; it needs the list of the model's class names (at least 2)")
    if len(set(classes)) != len(classes):
        refuse(f"names a class twice in classes={_short(classes)}")
    if not (is_whole(in_channels) and in_channels in (1, 3)):
        refuse(f"has in_channels={in_channels!r}; the models take 1 (grey) or 3 (RGB) channels")
    if not isinstance(preprocess, dict):
        refuse(f"has preprocess={_short(preprocess)}; it needs stored_size, size, mean and std")
    stored, size = preprocess.get("stored_size"), preprocess.get("size")
    if not (isinstance(stored, (list, tuple)) and len(stored) == 2 and all(is_whole(v) and v >= 1 for v in stored)):
        refuse(f"has preprocess.stored_size={stored!r}; it needs [height, width] in pixels (>= 1)")
    if not (is_whole(size) and size >= 1):
        refuse(f"has preprocess.size={size!r}; it needs the model's input size in pixels (>= 1)")
    crop = preprocess.get("resize_before_crop")
    if crop is not None and not (is_whole(crop) and crop >= size):
        refuse(f"has preprocess.resize_before_crop={crop!r}; it needs null or a size >= preprocess.size ({size})")
    mean, std = preprocess.get("mean") or [], preprocess.get("std") or []
    for key, values in (("mean", mean), ("std", std)):
        if not (
            isinstance(values, (list, tuple)) and len(values) in (0, 1, in_channels) and all(_finite(v) for v in values)
        ):
            refuse(
                f"has preprocess.{key}={_short(values)}; it needs one finite number per channel ({in_channels}), "
                f"or [] for none"
            )
    if len(mean) != len(std):
        refuse(f"has preprocess.mean={_short(mean)} but preprocess.std={_short(std)}; they go together")
    if any(v <= 0 for v in std):
        refuse(f"has preprocess.std={_short(std)}; images are divided by it, so each must be above 0")


def _finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class RunCheckpoint:
    """A checkpoint read back: the model it holds, its classes, how its images were prepared."""

    path: Path
    state: dict[str, Any]

    @classmethod
    def read(cls, path: Path | str) -> RunCheckpoint:
        """The checkpoint at `path`, its classes, channels and preprocessing checked (check_model_description)."""
        checkpoint = cls(Path(path), load_checkpoint(path))
        state = checkpoint.state
        channels = state["model"].get("in_channels") if isinstance(state["model"], dict) else None
        preprocess = checkpoint.preprocess if isinstance(state.get("preprocess"), dict) else state.get("preprocess")
        check_model_description(
            state["classes"],
            channels,
            preprocess,
            f"Checkpoint {path}",
            "It was changed after the run wrote it: copy the run folder again from where it came from.",
        )
        return checkpoint

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    @property
    def classes(self) -> list[str]:
        return list(self.state["classes"])

    @property
    def model_recipe(self) -> dict[str, Any]:
        return dict(self.state["model"])

    @property
    def in_channels(self) -> int:
        return self.state["model"]["in_channels"]

    @property
    def preprocess(self) -> dict[str, Any]:
        prep = dict(self.state["preprocess"])
        # Runs saved before stored_size was recorded: their datasets were stored at the model size.
        prep.setdefault("stored_size", [prep["size"]] * 2)
        return prep

    @property
    def config(self) -> dict[str, Any]:
        return self.state["config"]

    def build_model(self) -> torch.nn.Module:
        """The model with the checkpoint's weights (on the CPU, in training mode)."""
        from cnntrain.models import build_model

        model = build_model(dict(self.state["model"], init="default"))  # the weights come from the file
        try:
            model.load_state_dict(self.state["state_dict"])
        except (RuntimeError, KeyError, TypeError) as err:  # weights of another shape, a recipe changed
            reason = first_line(err)
            raise CnnTrainError(
                f"Checkpoint {self.path}: its weights do not fit the model its recipe builds "
                f"({reason[:300]}). It was changed after the run wrote it: copy the run folder "
                f"again from where it came from."
            ) from None
        return model
