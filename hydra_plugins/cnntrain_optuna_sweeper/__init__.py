"""cnntrain's Optuna sweeper for Hydra (`hparams_search=optuna`, or `hydra/sweeper=optuna`).

Hydra instantiates only sweepers whose class lives in the `hydra_plugins` namespace package, and
imports every module here when it scans for plugins, on every cnntrain command: optuna_sweeper.py
imports neither optuna nor torch at import time. The search itself is cnntrain/optuna_search.py.
"""
