"""What TensorBoard's HPARAMS tab shows of a run (logger=tensorboard): a few settings and its final figures.

Each run folder's `tensorboard/` is one session of the tab (one row), so `tensorboard --logdir <sweep folder>`
lists a sweep's jobs side by side. Written into the run's own event file: torch's `SummaryWriter.add_hparams`
would make a sub-folder per call (named by the time when no run_name is given), a second "run" per run.

The columns are not the whole config: flattened it is ~150 keys, and the tab's table, its parallel-coordinates
view and its filters are unusable with that many. They are the settings every comparison needs (`BASE_KEYS`) and
every key the command line set (Hydra's task overrides): the keys a sweep varies are among them, and so the jobs
of one sweep get the same columns.

No "experiment" summary is written (torch's add_hparams writes one): without it TensorBoard works the tab's
columns out from all the sessions it finds, marks the settings whose values differ (a sweep's lr) and shows them
first (with one, its first five columns in name order, which may hide what the sweep varied), and takes every
scalar of the sessions as a metric (its last value): test/acc, test/loss, val/best_acc, val/acc, train/loss, ...
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

BASE_KEYS = (
    "model.name",
    "data.name",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.weight_decay",
    "scheduler.name",
    "data.batch_size",
    "trainer.epochs",
)
_MISSING = object()


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The keys of Hydra overrides (`optimizer.lr=0.1`, `+trainer.x=1`, `~a.b`, `model=alexnet`), in order, once."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra.") and key not in keys:
            keys.append(key)
    return keys


def command_line_keys() -> list[str]:
    """The keys the command line set (Hydra's task overrides); none outside a Hydra job (the Python API)."""
    from hydra.core.hydra_config import HydraConfig

    return override_keys(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def hparam_values(config: DictConfig | Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, Any]:
    """{dotted key: value} of the config for `keys`: numbers stay numbers (the tab sorts and plots them), the rest
    is text; a group choice (`model`) is its `.name`; keys the config does not have (`experiment`) are left out."""
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config)
    values: dict[str, Any] = {}
    for key in keys:
        value = OmegaConf.select(config, key, default=_MISSING)
        if OmegaConf.is_dict(value):
            key, value = f"{key}.name", value.get("name", _MISSING)
        if value is not _MISSING and key not in values:
            values[key] = _shown(value)
    return values


def _shown(value: Any) -> int | float | str:
    if isinstance(value, bool) or value is None:  # torch would turn true into 1.0
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def write_hparams(writer, config: Any, summary: Mapping[str, Any], step: int) -> dict[str, Any]:
    """The run's session of the HPARAMS tab, in `writer`'s own folder: its settings, and `val/best_acc` as a scalar
    (test/acc and test/loss are written when the test ends). Returns the settings written."""
    from torch.utils.tensorboard.summary import hparams

    values = hparam_values(config, [*BASE_KEYS, *command_line_keys()])
    _, start, end = hparams(values, {})
    for proto in (start, end):  # not the experiment summary: see the module's docstring
        writer.file_writer.add_summary(proto, step)
    if summary.get("best_val_acc") is not None:
        writer.add_scalar("val/best_acc", summary["best_val_acc"], global_step=step)
    return values
