"""One way to reopen a run (opened_run.py): resume, cnntrain-eval, cnntrain-export, load_run and cnntrain-predict
say the same thing for the same wrong folder or checkpoint, and make a run's saved config safe the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cnntrain import train
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.evaluation import evaluate_run
from cnntrain.export import export_run
from cnntrain.opened_run import apply_override, open_run, rebuildable_config
from cnntrain.predict import load_run, predictions_path
from cnntrain.resuming import MAY_CHANGE, resume_config

SMOKE = ("experiment=smoke", "trainer.epochs=1", "trainer.progress=none", "data.train_size=64", "data.test_size=32")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A finished run, and folders that are not one: missing, a file, empty, holding runs, a run that never
    saved a checkpoint, a run whose best.pt was lost."""
    base = tmp_path_factory.mktemp("opened")
    run = base / "runs" / "run"
    train(*SMOKE, run_dir=run)
    (base / "empty").mkdir()
    (base / "file.txt").write_text("not a run")
    (base / "started").mkdir()
    (base / "started" / "train.log").write_text("epoch 1/3 ...\n")
    (base / "lost" / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "last.pt", base / "lost" / "checkpoints" / "last.pt")
    return {
        "run": run,
        "runs": base / "runs",
        "missing": base / "nowhere",
        "file": base / "file.txt",
        "empty": base / "empty",
        "started": base / "started",
        "lost": base / "lost",
    }


def message(call) -> str:
    with pytest.raises(CnnTrainError) as err:
        call()
    return str(err.value)


def said_for(path) -> dict[str, str]:
    """What load_run, cnntrain-eval, cnntrain-export and a resume say for `path`."""
    return {
        "load_run": message(lambda: load_run(path)),
        "eval": message(lambda: evaluate_run(path)),
        "export": message(lambda: export_run(path, "exported_program", say=lambda line: None)),
        "resume": message(lambda: resume_config(path, [])),
    }


def test_every_command_says_the_same_for_a_folder_that_is_no_run(folders):
    for name, key in (("missing", "not a folder"), ("file", "a file")):
        path = folders[name]
        said = said_for(path)
        expected = f"{path} is {key}. Give a run folder (outputs/<date>/<time>_<model>_<data>)."
        assert said == {
            "load_run": expected,
            "eval": f"run={expected}",
            "export": f"run={expected}",
            "resume": f"resume={expected}",
        }
    predict_said = message(lambda: predictions_path(folders["file"]))
    assert predict_said == (
        f"run={folders['file']} is a file. Give a run folder (outputs/<date>/<time>_<model>_"
        f"<data>) or an .onnx file written by cnntrain-export."
    )
    # A folder of runs: the same list, each command's own line for the newest.
    runs = folders["runs"]
    for call, use in (
        (lambda: load_run(runs), f"load_run('{folders['run']}')"),
        (lambda: evaluate_run(runs), f"cnntrain-eval run={folders['run']}"),
        (lambda: resume_config(runs, []), f"cnntrain resume={folders['run']}"),
        (lambda: predictions_path(runs, "images"), f"cnntrain-predict run={folders['run']} inputs=images"),
    ):
        assert message(call).endswith(
            f"is not a run folder; the runs in it are, newest first: {folders['run']}. The newest: {use}"
        )


def test_every_command_says_the_same_for_a_checkpoint_that_is_not_there(folders):
    bad_name = (
        "Unknown checkpoint 'bset' (checkpoint=). Did you mean 'best'? Use checkpoint=best (the run's best epoch "
        "by its trainer.checkpoint.monitor, val_acc unless set) or checkpoint=last (the last epoch)."
    )
    assert message(lambda: load_run(folders["run"], "bset")) == bad_name
    assert message(lambda: evaluate_run(folders["run"], checkpoint="bset")) == bad_name
    assert message(lambda: export_run(folders["run"], "onnx", "bset", say=lambda line: None)) == bad_name
    lost = (
        f"{folders['lost']} has no checkpoints/best.pt (it was deleted or lost). It has checkpoints/last.pt: "
        f"use checkpoint=last."
    )
    assert message(lambda: load_run(folders["lost"])) == lost
    assert message(lambda: evaluate_run(folders["lost"])) == lost
    assert message(lambda: export_run(folders["lost"], "exported_program", say=lambda line: None)) == lost
    never = (
        "has no checkpoints/{}.pt, so no epoch of it finished (it has no checkpoint at all). Start the run "
        "again, or give the folder of a run that finished an epoch."
    )
    started = folders["started"]
    assert message(lambda: load_run(started)) == f"{started} {never.format('best')}"
    assert message(lambda: evaluate_run(started, checkpoint="last")) == f"{started} {never.format('last')}"
    assert message(lambda: resume_config(started, [])) == f"{started} {never.format('last')}"


def test_a_reopened_config_never_takes_the_folders_callbacks_or_unconfirmed_code(folders):
    opened = open_run(folders["run"], "last")
    assert opened.name == "last" and opened.checkpoint.epoch == 1 and opened.imports == []
    saved = dict(opened.checkpoint.config, callbacks=[{"_target_": "evil.Callback"}], imports=["evil"])
    saved["model"] = dict(saved["model"], weights="DEFAULT")
    saved["data"] = dict(saved["data"], download=True)
    kept = rebuildable_config(saved, [])
    assert (list(kept.callbacks), list(kept.imports), kept.model.weights, kept.data.download) == (
        [],
        [],
        "DEFAULT",
        True,
    )
    assert kept.logger == opened.checkpoint.config["logger"]
    bare = rebuildable_config(saved, ["mine"], keep_loggers=False, keep_weights=False, download=False)
    assert (list(bare.imports), bare.model.weights, bare.data.download, dict(bare.logger)) == (
        ["mine"],
        None,
        False,
        {"csv": {}},
    )
    assert saved["callbacks"] == [{"_target_": "evil.Callback"}]  # a copy: the checkpoint's config is left alone


def test_apply_override_takes_only_what_may_change(folders):
    cfg = open_run(folders["run"]).config()
    apply_override(cfg, "trainer.epochs=5", folders["run"], MAY_CHANGE)
    assert cfg.trainer.epochs == 5
    with pytest.raises(ConfigError, match=r"Cannot resume with optimizer.lr=0.5 \(the run has optimizer.lr=0.1\)"):
        apply_override(cfg, "optimizer.lr=0.5", folders["run"], MAY_CHANGE)
    null = r"Cannot resume with trainer.class_weights=balanced \(the run has trainer.class_weights=null\)"
    with pytest.raises(ConfigError, match=null):  # as the config spells it, not Python's None
        apply_override(cfg, "trainer.class_weights=balanced", folders["run"], MAY_CHANGE)
    with pytest.raises(ConfigError, match="Unknown setting 'data.rooot'"):
        apply_override(cfg, "data.rooot=/x", folders["run"], ("data", "device"))
