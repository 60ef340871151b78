"""A job of an Optuna search reporting to its trial (`sweep.trial`, set by the sweeper: optuna_search.py).

`TrialPruning` finds the trial through the study's storage (the job may run in another process, with
launcher=joblib), reports each epoch's val_acc to it and, when the study's pruner says so, stops the run
after that epoch with a sentence saying why. The run still tests best.pt and writes summary.json, with a
"pruned" entry; the sweep table and sweep.csv show the job as "pruned" and the sweeper tells the study.
"""

from __future__ import annotations

import statistics
from typing import Any

from cnntrain.optuna_study import open_trial, pruner_label, pruner_name
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import Callback


class TrialPruning(Callback):
    def __init__(self, address: dict[str, Any], say=print):
        self.address, self.say = address, say
        self.study = self.trial = None
        self.pruned: dict[str, Any] | None = None

    def on_fit_start(self, trainer) -> None:
        from optuna.trial import TrialState

        try:
            study, trial = open_trial(self.address)
        except Exception as err:  # a resumed job whose study is gone (moved, in a finished search's memory)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            self.say(
                f"notice: Optuna trial {self.address.get('number')} cannot be reached ({reason}): this run "
                "reports nothing to it"
            )
            return
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if trial.number not in running:  # a resumed job of a search that has told its result already
            self.say(f"notice: Optuna trial {trial.number} has finished already: this run reports nothing to it")
            return
        self.study, self.trial = study, trial

    def on_epoch_end(self, trainer, metrics) -> None:
        if self.trial is None:
            return
        try:
            self.trial.report(metrics.val_acc, metrics.epoch)
        except Exception as err:  # the trial was ended elsewhere (another search marked it failed): train on
            self.say(f"notice: Optuna trial {self.trial.number} takes no more reports ({err}): the run goes on")
            self.trial = None
            return
        # The last epoch is the trial's end anyway: its result is a completed trial's, not a pruned one's.
        if trainer.stop_reason or metrics.epoch >= trainer.epochs or not self.trial.should_prune():
            return
        spec = self._pruner_spec()
        name = pruner_name(spec)
        trainer.stop_reason = (
            f"pruned by Optuna's {pruner_label(spec)} at epoch {metrics.epoch}: val_acc {metrics.val_acc:.4f}"
            + self._median_text(metrics.epoch, name)
        )
        self.pruned = {
            "pruner": name,
            "epoch": metrics.epoch,
            "val_acc": metrics.val_acc,
            "study": self.study.study_name,
            "trial": self.trial.number,
        }

    def on_run_end(self, trainer, summary: dict[str, Any]) -> None:
        """A pruned run's summary.json gets its "pruned" entry (the callbacks after this one see it too)."""
        if self.pruned and trainer.run_folder is not None:
            summary["pruned"] = self.pruned
            RunFolder(trainer.run_folder).write_summary(summary)

    def _pruner_spec(self) -> Any:
        from cnntrain.optuna_study import PRUNER_ATTR

        spec = (self.study.user_attrs.get(PRUNER_ATTR) or {}).get("pruner")
        return spec if spec is not None else type(self.study.pruner).__name__.removesuffix("Pruner").lower()

    def _median_text(self, epoch: int, name: str) -> str:
        """', below the median of the earlier trials at epoch N (0.63)' for the median pruner."""
        from optuna.trial import TrialState

        if name != "median":
            return ""
        others = [
            t.intermediate_values[epoch]
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if epoch in t.intermediate_values
        ]
        return (
            f", below the median of the earlier trials at epoch {epoch} ({statistics.median(others):.4f})"
            if others
            else ""
        )
