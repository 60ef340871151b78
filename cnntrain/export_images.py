"""The example images an export is verified on: `run_images(loaded, count)` takes the first of the run's own
validation images (its data loaded from the config in its checkpoint: nothing composed anew, no download),
converted exactly as prediction converts them (predictor.Predictor.to_array and transform), or random images,
with the reason, when the run's data cannot be loaded. export.export_run compares the exported file with the
PyTorch model on them.
"""

from __future__ import annotations

import logging
import warnings

import torch
from omegaconf.errors import OmegaConfBaseException

from cnntrain.build import build_data
from cnntrain.checks import check_config
from cnntrain.errors import CnnTrainError
from cnntrain.export_formats import error_text
from cnntrain.opened_run import rebuildable_config
from cnntrain.predict import LoadedRun


def run_images(loaded: LoadedRun, count: int) -> tuple[torch.Tensor, str, str | None]:
    """`count` images as the model takes them, converted by the prediction path (to_array, transform): the first
    of the run's validation split (repeated to `count` if it has fewer), or random images when the run's data
    cannot be loaded. Returns the batch, what it is, and why the data could not be loaded (None when it was)."""
    height, width = loaded.preprocess["stored_size"]
    try:
        split, what = _validation_split(loaded)
        n = min(count, len(split))
        files = getattr(split, "files", None)  # an image folder streamed from disk: its files, as predict reads them
        items = files[:n] if files is not None else list(split.images[:n])
        arrays = torch.stack([loaded.to_array(item) for item in items])
        problem = None
        inputs = f"{n} {what}" + (f" (repeated to {count})" if n < count else "")
    except (CnnTrainError, OmegaConfBaseException, OSError) as err:
        generator = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 256, (count, loaded.in_channels, height, width), dtype=torch.uint8, generator=generator)
        arrays = torch.stack([loaded.to_array(image) for image in raw])
        problem = error_text(err)
        inputs = f"{count} random images"
    if len(arrays) < count:
        arrays = arrays.repeat((count + len(arrays) - 1) // len(arrays), 1, 1, 1)[:count]
    return loaded.transform()(arrays), inputs, problem


def _validation_split(loaded: LoadedRun):
    """The run's validation split, loaded from the config in its checkpoint: nothing composed anew, no download,
    none of the folder's imports or callbacks (load_run has imported what the user confirmed)."""
    config = rebuildable_config(loaded.checkpoint.config, [], keep_loggers=False, keep_weights=False, download=False)
    checked = check_config(config)
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the dataset's notes (streaming from disk, ...) were for training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = build_data(checked)
    finally:
        logging.disable(before)
    return prepared.val, f"validation images of {config.data.name}"
