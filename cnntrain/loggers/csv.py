"""`logger=csv` (configs/logger/csv.yaml), the default: metrics.csv and curves.png.

Every run writes both (`callbacks.MetricsWriter`, `plots.CurvesPlot`): what resuming, the
plots and a sweep's report read. So this logger adds nothing; it is the name of the default
choice and of "no more than that" in a list (logger=[csv,tensorboard]).
"""

from __future__ import annotations

from cnntrain.loggers.catalog import LOGGERS
from cnntrain.trainer import Callback


@LOGGERS.register("csv")
class CsvLogger(Callback):
    """metrics.csv and curves.png, which every run writes anyway: no hooks of its own."""
