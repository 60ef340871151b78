"""cnntrain-export: each format round-trips within tolerance at batch sizes it was not exported with, the json
beside the file, predicting with the ONNX file equals predicting with the run, the error messages, and every zoo
model that exports (heavy ones under -m slow)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnntrain import __version__, train
from cnntrain.errors import CnnTrainError, DatasetError
from cnntrain.export import (
    EXPORT_BATCH,
    FORMATS,
    TOLERANCE,
    TORCHSCRIPT_NOTICE,
    VERIFY_BATCHES,
    check_format,
    export_and_verify,
    export_run,
    load_exported_file,
)
from cnntrain.models import MODELS, build_model, builder_settings, model_config
from cnntrain.onnx_export import onnx_export_options
from cnntrain.predict import load_exported, load_run, predict
from cnntrain.run_folder import export_info_path
from tests.helpers import run_cli as run_script

SMOKE = (
    "experiment=smoke",
    "trainer.progress=none",
    "trainer.epochs=1",
    "data.train_size=160",
    "data.test_size=40",
    "data.channels=3",
    "data.num_classes=4",
    "data.normalize=true",
)
SCRIPTS = Path(sys.executable).parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-epoch smoke run: 3-channel images stored at 28x28, the model at 32x32, normalised."""
    return train(*SMOKE, run_dir=tmp_path_factory.mktemp("export") / "run").run_dir


@pytest.fixture(scope="module")
def exports(run_dir) -> dict:
    """Each format exported once with the defaults (<run>/export/model.*), with the lines it said."""
    results = {}
    for format in FORMATS:
        said = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = export_run(run_dir, format, say=said.append)
        results[format] = result, said, [str(w.message) for w in caught]
    return results


@pytest.fixture(scope="module")
def images(run_dir) -> Path:
    folder = run_dir.parent / "new_images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i, image in enumerate(torch.randint(0, 256, (5, 28, 28, 3), dtype=torch.uint8, generator=generator)):
        Image.fromarray(image.numpy()).save(folder / f"{i}.png")
    Image.fromarray(torch.full((40, 30), 200, dtype=torch.uint8).numpy()).save(folder / "grey_other_size.png")
    return folder


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("format", FORMATS)
def test_each_format_round_trips_within_tolerance_at_other_batch_sizes(exports, run_dir, format):
    result, said, caught = exports[format]
    check = result.verification
    assert check.max_abs_diff < TOLERANCE and check.passed
    assert check.batch_sizes == list(VERIFY_BATCHES) and EXPORT_BATCH not in check.batch_sizes
    assert check.export_batch_size == EXPORT_BATCH
    assert check.inputs == "8 validation images of synthetic"
    assert (
        result.path
        == run_dir
        / "export"
        / {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported_program": "model.pt2"}[format]
    )
    assert result.info_path == result.path.with_name(result.path.name + ".json")
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".tmp-")]
    # The file on its own, at two more batch sizes, against the run's model.
    run = load_run(run_dir)
    loaded = load_exported_file(result.path, format)
    for n in (3, 5):
        batch = torch.randn(n, 3, 32, 32)
        with torch.inference_mode():
            assert (loaded(batch) - run.model(batch)).abs().max().item() < TOLERANCE
    assert said[0].startswith("exporting lenet_classic (") and said[0].endswith(f"as {format}")
    if format == "torchscript":
        assert said.count(TORCHSCRIPT_NOTICE) == 1
    else:
        assert not any("notice" in line for line in said)
    assert not [m for m in caught if "torch.jit" in m or "TorchScript" in m]


def test_the_json_beside_the_file_says_how_to_feed_it_and_where_it_came_from(exports, run_dir):
    result, _, _ = exports["onnx"]
    info = json.loads(result.info_path.read_text())
    assert info == result.info
    checkpoint = load_run(run_dir).checkpoint
    assert info["classes"] == checkpoint.classes == [f"class_{i}" for i in range(4)]
    expected = {key: value for key, value in checkpoint.preprocess.items() if key != "augment"}
    assert info["preprocess"] == json.loads(json.dumps(expected))
    assert set(info["preprocess"]) >= {"stored_size", "size", "mean", "std"} and len(info["preprocess"]["mean"]) == 3
    assert info["input"] == {**info["input"], "name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    assert info["output"]["shape"] == ["batch", 4]
    assert info["format"] == "onnx" and info["file"] == "model.onnx" and info["cnntrain_version"] == __version__
    # No path of this machine: the run by its folder's name, the checkpoint relative to the run folder.
    assert info["run"] == run_dir.name and info["checkpoint"] == "best" and info["epoch"] == 1
    assert info["checkpoint_file"] == "checkpoints/best.pt"
    assert str(run_dir.parent) not in result.info_path.read_text()
    assert not [v for v in _strings(info) if v.startswith("/") or "\\" in v]
    assert info["verification"] == result.verification.as_dict()
    assert info["verification"]["runtime"].startswith("onnxruntime ")
    assert info["tta"] is None  # the run's trainer.tta (the smoke run has none)


def test_exporting_again_replaces_the_earlier_export(exports, run_dir):
    result, _, _ = exports["exported_program"]
    again = export_run(run_dir, "exported_program", checkpoint="last", say=lambda line: None)
    assert again.replaced and again.path == result.path and again.info["checkpoint"] == "last"


# ---------------------------------------------------------------- predicting with the ONNX file


def test_predicting_with_the_onnx_file_equals_predicting_with_the_run(exports, run_dir, images):
    onnx_file = exports["onnx"][0].path
    from_run = load_run(run_dir).predict(images, topk=4)
    exported = load_exported(onnx_file)
    assert exported.classes == load_run(run_dir).classes and exported.in_channels == 3
    from_file = exported.predict(images, topk=4, batch_size=4)  # batches of 4 and 2: neither is the export's
    assert [p.file for p in from_file] == [p.file for p in from_run]
    assert [p.label for p in from_file] == [p.label for p in from_run]
    assert [name for p in from_file for name, _ in p.top] == [name for p in from_run for name, _ in p.top]
    assert [q for p in from_file for _, q in p.top] == pytest.approx([q for p in from_run for _, q in p.top], abs=1e-4)
    assert [p.label for p in predict(onnx_file, images)] == [p.label for p in from_run]


def test_an_onnx_file_of_a_run_with_tta_predicts_with_it_as_the_run_does(exports, run_dir, images, tmp_path):
    onnx_file = tmp_path / "model.onnx"  # as exported from a run trained with trainer.tta=hflip
    shutil.copy(exports["onnx"][0].path, onnx_file)
    info = json.loads(exports["onnx"][0].info_path.read_text())
    export_info_path(onnx_file).write_text(json.dumps({**info, "tta": "hflip"}))
    exported = load_exported(onnx_file)
    assert exported.run_tta == "hflip"
    with_tta = load_run(run_dir).predict(images, topk=4, tta="hflip")
    without = load_run(run_dir).predict(images, topk=4, tta="none")
    assert [q for p in exported.predict(images, topk=4) for _, q in p.top] == pytest.approx(
        [q for p in with_tta for _, q in p.top], abs=1e-4
    )
    assert [q for p in exported.predict(images, topk=4, tta="none") for _, q in p.top] == pytest.approx(
        [q for p in without for _, q in p.top], abs=1e-4
    )
    assert [p.probability for p in with_tta] != pytest.approx([p.probability for p in without], abs=1e-4)
    done = run_script("cnntrain-predict", f"run={onnx_file}", f"inputs={images}")
    assert done.returncode == 0, done.stderr
    assert "test-time augmentation: hflip (the run's trainer.tta)" in done.stdout  # cnntrain-eval's line
    done = run_script("cnntrain-predict", f"run={onnx_file}", f"inputs={images}", "tta=none")
    assert done.returncode == 0 and "test-time augmentation: none (the run used trainer.tta=hflip)" in done.stdout
    done = run_script("cnntrain-predict", f"run={onnx_file}", f"inputs={images}", "tta=hflp")
    assert done.returncode == 2 and "Unknown test-time augmentation 'hflp' (tta=). Did you mean 'hflip'?" in done.stderr


def test_the_predict_command_takes_the_onnx_file_and_writes_beside_it(exports, run_dir, images):
    onnx_file = exports["onnx"][0].path
    done = run_script("cnntrain-predict", f"run={onnx_file}", f"inputs={images}")
    assert done.returncode == 0, done.stderr
    assert "predictions (6 images)" in done.stdout
    written = onnx_file.with_name("model.predictions-new_images.csv")
    assert done.stdout.splitlines()[-1] == f"all 6 predictions written to {written}"
    with open(written, newline="") as f:
        rows = list(csv.DictReader(f))
    from_run = load_run(run_dir).predict(images)
    assert [row["predicted"] for row in rows] == [p.label for p in from_run]
    assert [float(row["probability"]) for row in rows] == pytest.approx([p.probability for p in from_run], abs=1e-4)


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_onnx_file_carries_its_classes_input_size_normalisation_and_version(exports, run_dir):
    import onnxruntime

    result = exports["onnx"][0]
    meta = onnxruntime.InferenceSession(str(result.path)).get_modelmeta().custom_metadata_map
    info = result.info
    assert json.loads(meta["classes"]) == info["classes"] == [f"class_{i}" for i in range(4)]
    assert json.loads(meta["input_size"]) == [3, 32, 32]
    assert json.loads(meta["mean"]) == info["preprocess"]["mean"] and len(json.loads(meta["mean"])) == 3
    assert json.loads(meta["std"]) == info["preprocess"]["std"]
    assert meta["cnntrain_version"] == __version__
    # The whole description, as the json beside the file holds it less the verification (which needs the file).
    described = json.loads(meta["cnntrain_export_info"])
    assert described == {key: value for key, value in info.items() if key != "verification"}
    assert str(run_dir.parent) not in "".join(meta.values())


@pytest.mark.parametrize("format", ["torchscript", "exported_program"])
def test_the_torch_formats_carry_the_description_as_an_extra_file(exports, format):
    result = exports[format][0]
    extra = {"cnntrain_export_info.json": ""}
    if format == "torchscript":
        torch.jit.load(str(result.path), _extra_files=extra)
    else:
        torch.export.load(str(result.path), extra_files=extra)
    described = json.loads(extra["cnntrain_export_info.json"])
    assert described["classes"] == result.info["classes"] and described["format"] == format
    assert described["preprocess"] == result.info["preprocess"] and "verification" not in described


def test_an_onnx_file_alone_predicts_as_with_its_json(exports, run_dir, images, tmp_path):
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(exports["onnx"][0].path.read_bytes())
    exported = load_exported(alone)
    assert exported.classes == load_run(run_dir).classes and exported.in_channels == 3
    assert exported.preprocess == exports["onnx"][0].info["preprocess"]
    assert [p.label for p in exported.predict(images)] == [p.label for p in load_run(run_dir).predict(images)]
    done = run_script("cnntrain-predict", f"run={alone}", f"inputs={images}")
    assert done.returncode == 0 and "predictions (6 images)" in done.stdout, done.stderr


def test_an_onnx_file_without_its_json_or_description_or_onnxruntime_is_explained(exports, tmp_path, monkeypatch):
    import onnx

    plain = onnx.load(str(exports["onnx"][0].path))
    del plain.metadata_props[:]  # as an ONNX file from another tool, without the json
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(plain.SerializeToString())
    with pytest.raises(CnnTrainError, match=r"alone\.onnx\.json is missing, and .*alone\.onnx does not carry the"):
        load_exported(alone)
    tampered = tmp_path / "tampered.onnx"
    plain.metadata_props.add(key="cnntrain_export_info", value=json.dumps({"exported_by": "cnntrain-export"}))
    tampered.write_bytes(plain.SerializeToString())
    with pytest.raises(CnnTrainError, match=r"^the metadata of .*tampered\.onnx is not a description written by"):
        load_exported(tampered)
    short = tmp_path / "short.onnx"  # a description whose classes do not fit the model: named as the metadata
    metadata = {entry.key: entry.value for entry in onnx.load(str(exports["onnx"][0].path)).metadata_props}
    described = json.loads(metadata["cnntrain_export_info"])
    del plain.metadata_props[:]
    plain.metadata_props.add(key="cnntrain_export_info", value=json.dumps({**described, "classes": ["a", "b"]}))
    short.write_bytes(plain.SerializeToString())
    with pytest.raises(CnnTrainError, match=r"^the metadata of .*short\.onnx names 2 classes, but the model gives 4"):
        load_exported(short)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # without the json, onnxruntime reads the metadata
    with pytest.raises(CnnTrainError, match=r"short\.onnx needs onnxruntime, which is not installed"):
        load_exported(short)
    with pytest.raises(CnnTrainError, match="does not exist"):
        load_exported(tmp_path / "nothing.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(
        CnnTrainError,
        match=r"needs onnxruntime, which is not installed. Install it with: pip "
        r"install onnxruntime",
    ):
        load_exported(exports["onnx"][0].path)


# ---------------------------------------------------------------- errors


def test_errors_name_the_problem_and_the_fix(exports, run_dir, tmp_path, monkeypatch):
    quiet = {"say": lambda line: None}
    with pytest.raises(
        CnnTrainError,
        match=r"Unknown export format 'onx' \(format=onx\). Did you mean 'onnx'\? "
        r"Choose one of: onnx, torchscript, exported_program",
    ):
        export_run(run_dir, "onx", **quiet)
    assert check_format("ONNX") == "onnx" and check_format("Exported_Program") == "exported_program"
    with pytest.raises(CnnTrainError, match="run=.*nothing is not a folder. Give a run folder"):
        export_run(tmp_path / "nothing", "onnx", **quiet)
    with pytest.raises(CnnTrainError, match="is not a run folder"):
        export_run(tmp_path, "onnx", **quiet)
    with pytest.raises(CnnTrainError, match=r"Unknown checkpoint 'worst' \(checkpoint=\)\. Use checkpoint=best"):
        export_run(run_dir, "onnx", checkpoint="worst", **quiet)
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    with pytest.raises(CnnTrainError, match="exists and is not a model written by cnntrain-export .* left as it is"):
        export_run(run_dir, "onnx", output=notes, **quiet)
    assert notes.read_text() == "my notes"
    best = run_dir / "checkpoints" / "best.pt"
    before = best.read_bytes()
    with pytest.raises(CnnTrainError, match="exists and is not a model written by cnntrain-export"):
        export_run(run_dir, "torchscript", output=best, **quiet)
    assert best.read_bytes() == before
    with pytest.raises(CnnTrainError, match=r"a format=onnx file must end in \.onnx, e\.g\. output=.*model\.onnx"):
        export_run(run_dir, "onnx", output=tmp_path / "model.pt", **quiet)
    with pytest.raises(CnnTrainError, match="is a folder; give a file name"):
        export_run(run_dir, "onnx", output=tmp_path, **quiet)
    # A json beside the output name that is not an export's is not overwritten either.
    (tmp_path / "other.onnx.json").write_text('{"mine": true}')
    with pytest.raises(CnnTrainError, match=r"other\.onnx\.json exists and is not the json of a format=onnx export"):
        export_run(run_dir, "onnx", output=tmp_path / "other.onnx", **quiet)
    assert (tmp_path / "other.onnx.json").read_text() == '{"mine": true}'
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    with pytest.raises(
        CnnTrainError,
        match=r"format=onnx needs onnx, onnxruntime, onnxscript; not installed: "
        r"onnxscript. Install them with: pip install 'cnntrain\[onnx\]'",
    ):
        export_run(run_dir, "onnx", output=tmp_path / "new.onnx", **quiet)
    assert not (tmp_path / "new.onnx").exists()


def test_a_run_without_the_checkpoint_asked_for_points_to_the_other(run_dir, tmp_path):
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "last.pt").write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(
        CnnTrainError,
        match=r"has no checkpoints/best\.pt \(it was deleted or lost\)\. It has "
        r"checkpoints/last\.pt: use checkpoint=last\.$",
    ):
        export_run(partial, "exported_program", say=lambda line: None)


def test_the_command_exits_2_with_the_message_and_no_traceback(run_dir, tmp_path):
    bad = run_script("cnntrain-export", f"run={run_dir}", "format=torchscrpt")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Unknown export format 'torchscrpt'" in bad.stderr and "Did you mean 'torchscript'?" in bad.stderr
    missing = run_script("cnntrain-export", f"run={tmp_path / 'gone'}", "format=onnx")
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    usage = run_script("cnntrain-export", f"run={run_dir}")
    assert usage.returncode == 2 and "Missing format=" in usage.stderr and "usage: cnntrain-export" in usage.stderr


def test_the_command_exports_and_prints_the_difference(run_dir, tmp_path):
    output = tmp_path / "lenet.pt"
    done = run_script("cnntrain-export", f"run={run_dir}", "format=torchscript", f"output={output}")
    assert done.returncode == 0, done.stderr
    out = done.stdout.replace("\n", " ")
    assert "notice: TorchScript is deprecated" in out and "max abs difference" in out
    assert f"written to {output}" in out and output.with_name("lenet.pt.json").is_file()
    assert "FutureWarning" not in done.stderr and "deprecated" not in done.stderr


def test_random_images_stand_in_when_the_data_cannot_be_loaded(run_dir, tmp_path, monkeypatch):
    def no_data(checked):
        raise DatasetError("Image folder /gone does not exist (data.root).")

    monkeypatch.setattr("cnntrain.export_images.build_data", no_data)
    said = []
    result = export_run(run_dir, "exported_program", output=tmp_path / "m.pt2", say=said.append)
    assert (
        "notice: the run's data could not be loaded (Image folder /gone does not exist (data.root)); "
        "verifying on 8 random images instead, converted the same way."
    ) in said
    assert result.verification.inputs == "8 random images" and result.verification.passed
    assert result.info["verification"]["inputs"] == "8 random images"


# ---------------------------------------------------------------- models that fail


class BatchBakedIn(torch.nn.Module):
    """Reshapes with a fixed batch size: exportable only for that batch."""

    def forward(self, x):
        return x.reshape(2, -1)[:, :3]


class BranchOnData(torch.nn.Module):
    """A data-dependent branch: tracing keeps the one the example took."""

    def forward(self, x):
        flat = x.flatten(1)[:, :3]
        return flat * 2 if bool(x.sum() > 0) else -flat


@pytest.mark.parametrize(
    "model, format, error",
    [
        (BatchBakedIn(), "exported_program", r"Constraints violated \(batch\)!"),
        (BranchOnData(), "onnx", r"Failed to export the model with torch.export: Could not guard on data-dependent"),
    ],
)
def test_a_model_the_exporter_refuses_is_named_with_the_exporters_error(model, format, error, tmp_path, capfd):
    example = torch.ones(2, 1, 4, 4)
    name = type(model).__name__
    others = " or ".join(f"format={other}" for other in FORMATS if other != format)
    with pytest.raises(
        CnnTrainError,
        match=rf"Cannot export {name} as {format}: {error}.* Try another format "
        rf"\({others}\)\.$",
    ):
        export_and_verify(
            model, example, format, tmp_path / f"m.{'onnx' if format == 'onnx' else 'pt2'}", [example[:1]], name=name
        )
    assert list(tmp_path.iterdir()) == []
    printed = capfd.readouterr()
    assert "def forward" not in printed.err + printed.out  # torch.export's graph dump stays off the screen


def test_an_export_that_does_not_match_pytorch_fails_and_writes_nothing(tmp_path):
    example = torch.ones(2, 1, 4, 4)
    negative = -torch.ones(3, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TracerWarning about the branch
        with pytest.raises(
            CnnTrainError,
            match=r"The torchscript export of BranchOnData does not match PyTorch: .*"
            r"max abs difference 3\.00e\+00 .* Nothing was written",
        ):
            export_and_verify(
                BranchOnData(), example, "torchscript", tmp_path / "m.pt", [negative], name="BranchOnData"
            )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the torch versions pyproject.toml accepts

# torch.onnx.export's parameters in torch 2.4 (the floor) and 2.5 (where dynamo= and dynamic_shapes= appeared).
TORCH_2_4 = dict.fromkeys(
    "model args f export_params verbose training input_names output_names operator_export_type opset_version "
    "do_constant_folding dynamic_axes keep_initializers_as_inputs custom_opsets export_modules_as_functions "
    "autograd_inlining".split()
)
TORCH_2_5 = {
    **TORCH_2_4,
    **dict.fromkeys("kwargs dynamo external_data dynamic_shapes report verify profile dump_exported_program".split()),
}
LEGACY = {"dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}


def test_the_onnx_call_uses_only_what_each_torch_version_has():
    assert onnx_export_options(TORCH_2_4, "2.4.1+cpu") == LEGACY  # no dynamo= there
    assert onnx_export_options(TORCH_2_5, "2.5.1") == {**LEGACY, "dynamo": False}
    current = onnx_export_options()  # this torch (2.6 and later: the torch.export-based exporter)
    assert current["dynamo"] is True and current["external_data"] is False and "dynamic_axes" not in current
    (batch_dim,) = current["dynamic_shapes"]
    assert list(batch_dim) == [0] and batch_dim[0].min == 1


def test_the_older_torchs_onnx_exporter_writes_a_verified_file_with_its_metadata(tmp_path, monkeypatch):
    import onnxruntime

    # What torch 2.4/2.5 run (the TorchScript-based exporter, dynamic_axes), run here by this torch's dynamo=False.
    monkeypatch.setattr("cnntrain.export_formats.onnx_export_options", lambda: onnx_export_options(TORCH_2_5, "2.5"))
    recipe = {"name": "lenet", "settings": {}, "num_classes": 10, "in_channels": 1, "input_size": 28}
    model = build_model(recipe).eval()
    example, batches = torch.randn(2, 1, 28, 28), [torch.randn(n, 1, 28, 28) for n in VERIFY_BATCHES]
    description = {
        "exported_by": "cnntrain-export",
        "cnntrain_version": __version__,
        "classes": [str(i) for i in range(10)],
        "in_channels": 1,
        "preprocess": {"stored_size": [28, 28], "size": 28, "mean": [0.5], "std": [0.25]},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "You are using the legacy TorchScript-based ONNX export"
        check = export_and_verify(model, example, "onnx", tmp_path / "m.onnx", batches, description=description)
    assert check.passed and check.batch_sizes == list(VERIFY_BATCHES)
    meta = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["input_size"]) == [1, 28, 28] and json.loads(meta["std"]) == [0.25]


# ---------------------------------------------------------------- the zoo

# Quick at their native size on 2 cores (about a second per format); the others (224-pixel AlexNets and VGGs,
# GoogLeNet, ResNet-18 at 96, any model added later) run with -m slow.
QUICK_MODELS = {"softmax", "mlp", "lenet", "lenet_classic", "lenet_bn", "cifar_cnn", "nin"}
ZOO_FORMATS = ("exported_program", "onnx", "torchscript")


def zoo_cases():
    for name in MODELS.names():
        for format in ZOO_FORMATS:
            marks = () if name in QUICK_MODELS else (pytest.mark.slow,)
            yield pytest.param(name, format, id=f"{name}-{format}", marks=marks)


@pytest.mark.parametrize("name, format", list(zoo_cases()))
def test_every_zoo_model_exports_within_tolerance(name, format, tmp_path):
    torch.manual_seed(0)
    config = model_config(name)
    size = config["input_size"]
    model = build_model(
        {
            "name": name,
            "settings": builder_settings(config),
            "num_classes": 5,
            "in_channels": 1,
            "input_size": size,
            "init": config.get("init", "default"),
        }
    )
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 1, size, size, generator=generator) for n in (1, 3)]
    path = tmp_path / {"onnx": "m.onnx", "torchscript": "m.pt", "exported_program": "m.pt2"}[format]
    check = export_and_verify(model, torch.randn(EXPORT_BATCH, 1, size, size), format, path, batches, name=name)
    print(f"{name} {format}: max abs difference {check.max_abs_diff:.2e}")
    assert check.max_abs_diff < TOLERANCE and check.batch_sizes == [1, 3]


def test_predict_keeps_earlier_predictions_and_fits_80_columns(run_dir, images, tmp_path):
    first = run_script("cnntrain-predict", str(run_dir), str(images), cwd=tmp_path)  # bare run folder and inputs
    assert first.returncode == 0, first.stderr
    written = run_dir / "predictions-new_images.csv"
    assert first.stdout.splitlines()[-1] == f"all 6 predictions written to {written}"
    before = written.read_text()
    second = run_script("cnntrain-predict", f"run={run_dir}", f"inputs={images}", "topk=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1].endswith("predictions-new_images-2.csv")
    assert written.read_text() == before  # the first one is kept
    assert (run_dir / "predictions-new_images-2.csv").read_text() != before  # top 2 instead of top 3
    # The table (80 columns when not a terminal): paths relative to the input folder, whole, in lines of 80.
    table = first.stdout.splitlines()[:-1]
    assert max(len(line) for line in table) <= 80
    rows = [line.split("│")[1].strip() for line in table if line.startswith("│") and line.split("│")[1].strip()]
    assert rows == ["0.png", "1.png", "2.png", "3.png", "4.png", "grey_other_size.png"]
    assert str(images) not in first.stdout
    one = run_script("cnntrain-predict", f"run={run_dir}", f"inputs={images / '3.png'}", cwd=tmp_path)
    assert one.returncode == 0 and "│ 3.png " in one.stdout
    assert one.stdout.splitlines()[-1] == f"all 1 predictions written to {run_dir / 'predictions-3.csv'}"


def test_predict_on_more_images_than_a_screen_prints_a_summary(run_dir, images, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(45):
        shutil.copy(images / f"{i % 5}.png", many / f"image_{i:02d}.png")
    result = run_script(
        "cnntrain-predict", f"run={run_dir}", f"inputs={many}", f"output={tmp_path / 'all.csv'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "all.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 45  # every prediction is in the CSV
    counts = {}
    for row in rows:
        counts[row["predicted"]] = counts.get(row["predicted"], 0) + 1
    assert "45 images per predicted class" in result.stdout and "the 5 least confident" in result.stdout
    shown = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("│") and line.count("│") == 4
    }
    assert shown == {label: str(count) for label, count in counts.items()}  # the per-class table
    least = sorted(rows, key=lambda row: (float(row["probability"]), row["file"]))[:5]
    assert [Path(row["file"]).name for row in least] == [
        line.split("│")[1].strip() for line in result.stdout.splitlines() if "image_" in line
    ]
    assert len(result.stdout.splitlines()) < 30
    assert result.stdout.splitlines()[-1] == "all 45 predictions written to all.csv"


# ---------------------------------------------------------------- the json is checked against the model it describes

JSON_AGAIN = "It does not describe the model it was written with: export again with cnntrain-export."


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": ["a", "b"]}, "names 2 classes, but the model gives 4 outputs per image."),
        ({"classes": ["a", "b", "c", "d", "e"]}, "names 5 classes, but the model gives 4 outputs per image."),
        ({"classes": "abcd"}, "has classes='abcd'; it needs the list of the model's class names (at least 2)."),
        ({"classes": ["a", "a", "b", "c"]}, "names a class twice in classes=['a', 'a', 'b', 'c']."),
        ({"in_channels": 1}, "has preprocess.mean=[0.5, 0.5, 0.5]; it needs one finite number per channel (1)"),
        (
            {"in_channels": 1, "preprocess": {"mean": [], "std": []}},
            "says the model takes 1-channel 32x32 images, but the model refuses them: ",
        ),
        ({"in_channels": 5}, "has in_channels=5; the models take 1 (grey) or 3 (RGB) channels."),
        (
            {"preprocess": {"std": [0, 0, 0]}},
            "has preprocess.std=[0, 0, 0]; images are divided by it, so each must be above 0.",
        ),
        ({"preprocess": {"std": [-1, 1, 1]}}, "has preprocess.std=[-1, 1, 1]; images are divided by it"),
        (
            {"preprocess": {"std": [float("nan")] * 3}},
            "has preprocess.std=[nan, nan, nan]; it needs one finite number per channel (3), or [] for none.",
        ),
        (
            {"preprocess": {"mean": [0.5, 0.5]}},
            "has preprocess.mean=[0.5, 0.5]; it needs one finite number per channel",
        ),
        ({"preprocess": {"size": 0}}, "has preprocess.size=0; it needs the model's input size in pixels (>= 1)."),
        ({"preprocess": {"stored_size": [28]}}, "has preprocess.stored_size=[28]; it needs [height, width]"),
        (
            {"preprocess": {"resize_before_crop": 8}},
            "has preprocess.resize_before_crop=8; it needs null or a size >= preprocess.size (32).",
        ),
        ({"preprocess": None}, "has preprocess=None; it needs stored_size, size, mean and std."),
        ({"tta": "vflip"}, "has tta='vflip'; it needs null or one of hflip."),
    ],
)
def test_a_json_that_does_not_fit_its_onnx_file_is_refused(exports, tmp_path, change, message):
    onnx_file = tmp_path / "model.onnx"
    shutil.copy(exports["onnx"][0].path, onnx_file)
    info = json.loads(export_info_path(exports["onnx"][0].path).read_text())
    if isinstance(change.get("preprocess"), dict):
        change = {**change, "preprocess": {**info["preprocess"], **change["preprocess"]}}
    export_info_path(onnx_file).write_text(json.dumps({**info, **change}))
    with pytest.raises(CnnTrainError) as caught:
        load_exported(onnx_file)
    assert str(caught.value).startswith(f"{export_info_path(onnx_file)} {message}")
    assert str(caught.value).endswith(JSON_AGAIN)


def test_predict_with_a_json_whose_class_list_is_short_exits_2(exports, images, tmp_path):
    onnx_file = tmp_path / "model.onnx"
    shutil.copy(exports["onnx"][0].path, onnx_file)
    info = json.loads(export_info_path(exports["onnx"][0].path).read_text())
    export_info_path(onnx_file).write_text(json.dumps({**info, "classes": ["class0", "class1"]}))
    done = run_script("cnntrain-predict", f"run={onnx_file}", f"inputs={images}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{onnx_file}.json names 2 classes, but the model gives 4 outputs per image." in done.stderr
    assert not list(tmp_path.glob("model.predictions*.csv"))
