"""The Python API: cnntrain.train / resume / load_run, user callbacks (from Python and config), --version."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cnntrain
from cnntrain import Callback, CnnTrainError, load_run, train
from cnntrain.checkpoint import load_checkpoint
from cnntrain.resuming import resume_config
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parent.parent
SMOKE = ("experiment=smoke", "trainer.progress=none", "data.train_size=160", "data.test_size=40")


class ValAccuracy(Callback):
    def __init__(self):
        self.values = []
        self.hooks = []

    def on_fit_start(self, trainer):
        self.hooks.append("fit_start")

    def on_epoch_start(self, trainer, epoch, steps):
        self.hooks.append(f"epoch_start {epoch} {steps}")

    def on_epoch_end(self, trainer, metrics):
        self.values.append(metrics.val_acc)

    def on_fit_end(self, trainer):
        self.hooks.append("fit_end")

    def on_test_end(self, trainer, metrics):
        self.hooks.append("test_end")

    def on_run_end(self, trainer, summary):
        # summary.json is on disk by now, holding what the hook is given
        written = json.loads((trainer.run_folder / "summary.json").read_text())
        self.hooks.append(f"run_end {summary['status']} {written == summary}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch smoke run through cnntrain.train, with a callback recording val accuracy."""
    recorder = ValAccuracy()
    result = train(*SMOKE, "trainer.epochs=2", callbacks=[recorder], run_dir=tmp_path_factory.mktemp("api") / "run")
    return result, recorder


def test_train_returns_the_model_summary_and_absolute_run_folder(trained):
    result, recorder = trained
    assert result.run_dir.is_absolute() and result.run_dir.name == "run"
    assert result.summary["status"] == "completed" and result.summary["epochs"] == 2
    assert recorder.values == [m.val_acc for m in result.history]
    assert result.best_val_acc == max(recorder.values)
    assert recorder.hooks == [
        *("fit_start", "epoch_start 1 4", "epoch_start 2 4", "fit_end"),  # 128 train / 32
        *("test_end", "run_end completed True"),
    ]
    # The recipe line tells the overrides given to train() from the experiment's values, as the CLI does.
    [recipe_line] = [line for line in (result.run_dir / "train.log").read_text().splitlines() if "recipe: " in line]
    assert recipe_line.endswith(
        "; set by you: trainer.epochs=2; set by experiment=smoke: optimizer.lr=0.1, data.batch_size=32"
    )
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["state_dict"]
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor.cpu(), best[name]), name


def test_load_run_predicts_paths_pil_images_and_tensors_alike(trained, tmp_path):
    result, _ = trained
    run = load_run(result.run_dir)
    assert run.classes == result.classes and len(run.classes) == 10
    assert run.preprocess["size"] == 32 and run.preprocess["stored_size"] == [28, 28]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=generator)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"{i}.png")
    from_files = run.predict(tmp_path, topk=2)
    from_pil = run.predict([Image.open(tmp_path / f"{i}.png") for i in range(3)], topk=2)
    from_batch = run.predict(images, topk=2)
    from_floats = run.predict([image.float() / 255 for image in images], topk=2)
    assert [p.file for p in from_files] == [str(tmp_path / f"{i}.png") for i in range(3)]
    assert [p.file for p in from_batch] == ["<image 0>", "<image 1>", "<image 2>"]
    assert [p.file for p in run.predict([images[0], images])][1:] == ["<image 1.0>", "<image 1.1>", "<image 1.2>"]
    for other in (from_pil, from_batch, from_floats):
        assert [[name for name, _ in p.top] for p in other] == [[name for name, _ in p.top] for p in from_files]
        assert [q for p in other for _, q in p.top] == pytest.approx([q for p in from_files for _, q in p.top])
    # The same numbers as the model itself gives on the transformed batch.
    with torch.inference_mode():
        expected = run.model(run.transform()(images)).softmax(dim=1).max(dim=1)
    assert [p.probability for p in from_batch] == pytest.approx(expected.values.tolist())
    assert [p.label for p in from_batch] == [run.classes[i] for i in expected.indices.tolist()]


def test_load_run_and_predict_refuse_bad_input_with_a_message(trained, tmp_path):
    result, _ = trained
    with pytest.raises(CnnTrainError, match=r"Unknown checkpoint 'worst' \(checkpoint=\)\. Use checkpoint=best"):
        load_run(result.run_dir, checkpoint="worst")
    with pytest.raises(CnnTrainError, match="is not a folder"):
        load_run(tmp_path / "nothing")
    with pytest.raises(CnnTrainError, match="Cannot predict on a dict"):
        load_run(result.run_dir).predict([{"not": "an image"}])


def test_a_callback_can_stop_training(tmp_path):
    class StopAfterOne(Callback):
        def on_epoch_end(self, trainer, metrics):
            trainer.stop_reason = "enough"

    result = train(*SMOKE, callbacks=[StopAfterOne()], run_dir=tmp_path / "run")
    assert result.summary["epochs"] == 1 and result.summary["stopped_early"] == "enough"


def test_a_failing_on_run_end_is_a_notice_and_the_run_stays_completed(tmp_path):
    class BrokenUpload(Callback):
        def on_run_end(self, trainer, summary):
            raise ConnectionError("tracker went away")

    result = train(*SMOKE, "trainer.epochs=1", callbacks=[BrokenUpload()], run_dir=tmp_path / "run")
    assert result.summary["status"] == "completed"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    notice = "notice: BrokenUpload.on_run_end failed: ConnectionError: tracker went away"
    assert notice in (tmp_path / "run" / "train.log").read_text()  # progress=none: said in train.log


def test_callbacks_from_config_are_created_and_called(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "my_callbacks.py").write_text(
        "from cnntrain import Callback\n\n"
        "class EpochFile(Callback):\n"
        "    def __init__(self, path):\n        self.path = path\n"
        "    def on_epoch_end(self, trainer, metrics):\n"
        "        with open(self.path, 'a') as f:\n            f.write(f'{metrics.epoch} {metrics.val_acc}\\n')\n"
    )
    result = train(*SMOKE, "trainer.epochs=2", "callbacks=[{_target_: my_callbacks.EpochFile, path: epochs.txt}]")
    lines = (tmp_path / "epochs.txt").read_text().splitlines()
    assert lines == [f"{m.epoch} {m.val_acc}" for m in result.history]
    assert result.run_dir.parent.parent == tmp_path / "outputs"  # outputs/<date>/<time>_...


def test_bad_callbacks_are_config_errors(tmp_path):
    with pytest.raises(CnnTrainError, match=r"callbacks\[0\] must be a mapping with a _target_ key"):
        train(*SMOKE, "callbacks=[hflip]", run_dir=tmp_path / "a")
    with pytest.raises(CnnTrainError, match=r"Cannot create callbacks\[0\] \(no_such_module.Thing\)"):
        train(*SMOKE, "callbacks=[{_target_: no_such_module.Thing}]", run_dir=tmp_path / "b")
    with pytest.raises(CnnTrainError, match="OrderedDict .* is not a cnntrain Callback"):
        train(*SMOKE, "callbacks=[{_target_: collections.OrderedDict}]", run_dir=tmp_path / "c")
    with pytest.raises(CnnTrainError, match=r"Unknown model 'lenett' \(model=lenett\). Did you mean 'lenet'\?"):
        train("model=lenett")


def test_train_takes_a_composed_config(tmp_path):
    cfg = cnntrain.compose([*SMOKE, "trainer.epochs=1"])
    result = train(cfg, run_dir=tmp_path / "run")
    assert result.summary["epochs"] == 1 and (tmp_path / "run" / "summary.json").is_file()
    # Without the overrides it was composed from, the explicit values are all the user's.
    assert (
        "; set by you: optimizer.lr=0.1, data.batch_size=32, trainer.epochs=1"
        in (tmp_path / "run" / "train.log").read_text()
    )


def test_resume_does_not_recreate_callbacks_from_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "counting.py").write_text("from cnntrain import Callback\n\nclass Count(Callback):\n    pass\n")
    train(*SMOKE, "trainer.epochs=1", "callbacks=[{_target_: counting.Count}]", run_dir=tmp_path / "run")
    cfg, _ = resume_config(tmp_path / "run", [])
    assert list(cfg.callbacks) == []
    recorder = ValAccuracy()
    result = cnntrain.resume(tmp_path / "run", "trainer.epochs=2", callbacks=[recorder])
    assert result.summary["epochs"] == 2 and len(recorder.values) == 1  # only the resumed epoch


def test_version_is_cnntrains():
    result = run_cli("python -m cnntrain", "--version", timeout=60)
    assert result.returncode == 0 and result.stdout.splitlines()[0] == f"cnntrain {cnntrain.__version__}"


def test_the_readme_optuna_example_prunes(tmp_path, monkeypatch):
    """The README's Optuna example, as written there, with fewer trials."""
    pytest.importorskip("optuna")
    readme = (REPO / "README.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "OptunaPruning" in block]
    code = code.replace("n_trials=8", "n_trials=4").replace(
        "experiment=smoke", 'experiment=smoke", "data.train_size=96'
    )
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    study = namespace["study"]
    assert len(study.trials) == 4 and 0 < study.best_value <= 1
    assert set(study.best_params) == {"lr"}


class ZeroWeightsAtEpoch(Callback):
    """From epoch `epoch` on, every weight is zero and stays so (lr 0): the model guesses one class."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch, steps):
        if epoch == self.epoch:
            for group in trainer.optimizer.param_groups:
                group["lr"] = 0.0
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.zero_()


def test_a_best_epoch_chosen_on_the_test_images_is_called_flattering(tmp_path, capsys):
    result = train(
        *SMOKE,
        "trainer.progress=plain",
        "trainer.epochs=4",
        "data.val_fraction=0",
        callbacks=[ZeroWeightsAtEpoch(4)],
        run_dir=tmp_path / "run",
    )
    summary = result.summary
    last_acc = result.history[-1].val_acc
    assert summary["test_is_validation"] is True
    assert summary["best_epoch"] < 4 and summary["test_acc"] == summary["best_val_acc"] > last_acc
    out = " ".join(capsys.readouterr().out.split())
    assert "from the test split (data.val_fraction=0)" in out
    assert (
        f"notice: validation and the test used the same images (the first line says why), so best.pt (epoch "
        f"{summary['best_epoch']}) was chosen on the images it is tested on and its test accuracy flatters it; "
        f"the last epoch (4) measured {last_acc:.4f}."
    ) in out


def test_a_held_out_validation_split_gets_no_chosen_on_test_notice(tmp_path, capsys):
    result = train(
        *SMOKE,
        "trainer.progress=plain",
        "trainer.epochs=4",
        callbacks=[ZeroWeightsAtEpoch(4)],
        run_dir=tmp_path / "run",
    )
    assert result.summary["test_is_validation"] is False
    assert result.summary["best_val_acc"] > result.history[-1].val_acc
    out = capsys.readouterr().out
    assert "cnntrain result" in out and "flatters" not in out


def test_the_chosen_on_test_notice_names_the_remedy_for_each_cause():
    from types import SimpleNamespace

    from cnntrain.run_report import chosen_on_test_notice

    last = SimpleNamespace(epoch=5, val_acc=0.81234)
    validated_on_test = chosen_on_test_notice(3, last, has_test_split=True)
    assert "best.pt (epoch 3)" in validated_on_test and "the last epoch (5) measured 0.8123" in validated_on_test
    assert validated_on_test.endswith("hold out validation images with data.val_fraction=0.1.")
    no_test_split = chosen_on_test_notice(3, last, has_test_split=False)
    assert no_test_split.endswith("give the dataset a test split (a test/ folder).")


def test_a_dataset_without_a_test_split_is_told_to_get_one(tmp_path, capsys):
    from tests.test_folder import make_class_folder

    make_class_folder(tmp_path / "pets" / "train", per_class=6)
    make_class_folder(tmp_path / "pets" / "val", per_class=3)  # its own val split, no test/: val_fraction is moot
    result = train(
        "model=lenet_classic",
        "data=image_folder",
        f"data.root={tmp_path / 'pets'}",
        "data.image_size=16",
        "data.val_fraction=0",
        "data.batch_size=4",
        "optimizer.lr=0.05",
        "trainer.epochs=3",
        "trainer.progress=plain",
        "device=cpu",
        callbacks=[ZeroWeightsAtEpoch(3)],
        run_dir=tmp_path / "run",
    )
    assert result.summary["test_is_validation"] is True
    out = " ".join(capsys.readouterr().out.split())
    assert "no test split, so the final test is on the validation data" in out
    assert result.summary["best_val_acc"] > result.history[-1].val_acc == 0.5  # zero weights: one class guessed
    assert "For a test figure nothing was chosen on, give the dataset a test split (a test/ folder)." in out
    assert "data.val_fraction=0.1" not in out
