"""cnntrain: train classic CNN image classifiers from YAML configs.

The Python API (`cnntrain.train`, `cnntrain.load_run`, `cnntrain.Callback`, ...) is
loaded on first use, so that `cnntrain --help`, `--version` and config errors answer
without importing torch.
"""

import time as _time

__version__ = "0.1.0"
# When this process imported cnntrain (before torch): what a command's trainer.time_limit counts from
# (process.budget_start). The interpreter's own start, a few tens of milliseconds earlier, is not counted.
_IMPORTED_AT = _time.monotonic()

_API = {
    "train": "cnntrain.api",
    "resume": "cnntrain.api",
    "compose": "cnntrain.api",
    "load_run": "cnntrain.api",
    "RunResult": "cnntrain.api",
    "LoadedRun": "cnntrain.api",
    "Callback": "cnntrain.trainer",
    "EpochMetrics": "cnntrain.trainer",
    "StepProgress": "cnntrain.trainer",
    "CnnTrainError": "cnntrain.errors",
    "ConfigError": "cnntrain.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cnntrain' has no attribute '{name}'")
