"""The book's recipes as experiment presets, the input-size check in a run, and cnntrain-info."""

import re
from pathlib import Path

import pytest

from cnntrain.build import inspect_model
from cnntrain.config import config_dir
from cnntrain.errors import ConfigError
from cnntrain.run import train
from cnntrain.speed_switches import cpu_has_native_bf16
from tests.conftest import compose_config, write_fake_mnist
from tests.helpers import run_cli

# (preset, model, lr, batch, input size) as in TUTORIALS.md's recipe table.
BOOK_RECIPES = [
    ("d2l_lenet", "lenet", 0.9, 256, 28),
    ("d2l_alexnet", "alexnet", 0.01, 128, 224),
    ("d2l_vgg", "vgg", 0.05, 128, 224),
    ("d2l_nin", "nin", 0.1, 128, 224),
    ("d2l_googlenet", "googlenet", 0.1, 128, 96),
    ("d2l_lenet_bn", "lenet_bn", 1.0, 256, 28),
    ("d2l_resnet18", "resnet18", 0.05, 256, 96),
]
# One tiny step: 4 synthetic training images in 2 batches, 2 test images validate.
TINY = [
    "data=synthetic",
    "data.train_size=4",
    "data.test_size=2",
    "data.batch_size=2",
    "data.val_fraction=0",
    "trainer.epochs=1",
    "trainer.progress=none",
    "device=cpu",
]


def test_every_d2l_preset_is_listed_here():
    presets = {p.stem for p in (config_dir() / "experiment").glob("d2l_*.yaml")}
    assert presets == {recipe[0] for recipe in BOOK_RECIPES}


@pytest.mark.parametrize("preset,model,lr,batch,size", BOOK_RECIPES, ids=[r[0] for r in BOOK_RECIPES])
def test_preset_holds_the_book_recipe(preset, model, lr, batch, size):
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.model.name == model and cfg.model.init == "xavier_uniform" and cfg.model.input_size == size
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", lr, 0.0)
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.val_fraction) == ("fashion_mnist", batch, 0)
    assert cfg.trainer.epochs == 10 and cfg.scheduler.name == "none"


@pytest.mark.parametrize("preset,model,lr,batch,size", BOOK_RECIPES, ids=[r[0] for r in BOOK_RECIPES])
def test_preset_runs_one_tiny_step(tmp_path, preset, model, lr, batch, size):
    cfg = compose_config([f"experiment={preset}", *TINY])
    summary = train(cfg, run_dir=tmp_path)
    assert summary["model"] == model and summary["input_size"] == size and summary["epochs"] == 1
    assert summary["train_size"] == 4 and 0 <= summary["test_acc"] <= 1
    assert summary["channels_last"] is (model != "lenet_bn")  # trainer.channels_last=auto on the CPU


# (preset, epochs, batch, widths, augmentations, precision, parameters, time limit): the Fashion-MNIST
# accuracy recipes (README's "Accuracy recipes for a CPU" has what they measured, on which CPU).
FMNIST_PRESETS = [
    ("fmnist_fast", 30, 64, [32, 64, 128], ["hflip"], "auto", 297_440, "2m"),
    ("fmnist_5min", 40, 128, [32, 64, 128], ["hflip"], "auto", 297_440, "5m"),
    ("fmnist_best", 32, 128, [64, 128, 256], ["hflip", "random_crop", "random_erasing"], 32, 1_165_920, None),
]
PRESET_FIELDS = "preset,epochs,batch,widths,augment,precision,params,time_limit"


@pytest.mark.parametrize(PRESET_FIELDS, FMNIST_PRESETS, ids=[p[0] for p in FMNIST_PRESETS])
def test_fmnist_preset_holds_its_recipe(preset, epochs, batch, widths, augment, precision, params, time_limit):
    cfg = compose_config([f"experiment={preset}"])
    assert (cfg.model.name, list(cfg.model.widths), cfg.data.name) == ("airnet", widths, "fashion_mnist")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.scheduler.name) == ("adamw", 0.004, "onecycle")
    assert (cfg.trainer.epochs, cfg.data.batch_size, cfg.data.val_fraction) == (epochs, batch, 0.1)
    assert [a["name"] for a in cfg.data.augment] == augment
    assert (cfg.trainer.label_smoothing, cfg.trainer.tta, cfg.trainer.ema) == (0.1, "hflip", None)
    assert cfg.trainer.precision == precision and cfg.trainer.time_limit == time_limit
    assert cfg.trainer.threads == "auto"


@pytest.mark.parametrize(PRESET_FIELDS, FMNIST_PRESETS, ids=[p[0] for p in FMNIST_PRESETS])
def test_fmnist_preset_runs_a_few_steps(
    tmp_path, preset, epochs, batch, widths, augment, precision, params, time_limit
):
    root = tmp_path / "data"
    write_fake_mnist(root / "FashionMNIST" / "raw", train_size=400, test_size=100)
    cfg = compose_config(
        [
            f"experiment={preset}",
            f"data.root={root}",
            "trainer.epochs=1",
            "trainer.progress=none",
            "trainer.limit_train_batches=2",
            "data.batch_size=16",
            "device=cpu",
        ]
    )
    summary = train(cfg, run_dir=tmp_path / "run")
    assert (summary["model"], summary["params"], summary["tta"]) == ("airnet", params, "hflip")
    assert summary["train_size"] == 360 and summary["val_size"] == 40 and summary["test_size"] == 100
    assert summary["channels_last"] is True and 0 <= summary["test_acc"] <= 1
    # bf16 where the CPU has it natively, else float32: never emulated.
    native = precision == "auto" and cpu_has_native_bf16()
    assert summary["precision"] == ("bfloat16" if native else "float32")


def test_too_small_input_fails_before_training_naming_the_layer(tmp_path):
    cfg = compose_config(["model=alexnet", "data.resize=28", *TINY])
    with pytest.raises(ConfigError) as err:
        train(cfg, run_dir=tmp_path)
    message = str(err.value)
    assert "Input size 28 is too small" in message and "features.5 (MaxPool2d)" in message
    assert "The smallest input size that works is 65. Fix: set data.resize=65" in message
    assert not (tmp_path / "metrics.csv").exists()


def test_inspect_model_from_python():
    rows, totals, size = inspect_model(compose_config(["model=alexnet", *TINY]))
    assert size == 224 and totals.params == 46_764_746 and totals.input_shape == (1, 224, 224)
    shapes = {row.name: tuple(row.output_shape) for row in rows}
    assert shapes["features.0"] == (96, 54, 54) and shapes["flatten"] == (6400,)


def test_info_command_prints_the_layer_table(tmp_path):
    result = run_cli(
        "cnntrain-info",
        "model=lenet",
        "data=synthetic",
        cwd=tmp_path,
        timeout=120,
        env={"COLUMNS": "120", "PATH": ""},
        inherit_env=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first_conv = next(line for line in lines if " 0 " in line and "Conv2d" in line)
    assert "6x28x28" in first_conv and "156" in first_conv
    assert any("Total" in line and "61,706" in line for line in lines)
    assert not (tmp_path / "outputs").exists()  # inspecting writes no run folder


def info_lines(tmp_path, columns, *overrides):
    result = run_cli("cnntrain-info", *overrides, cwd=tmp_path, timeout=600, env={"COLUMNS": str(columns)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 60])
def test_info_keeps_every_number_whole_at_80_and_60_columns(tmp_path, columns):
    lines = info_lines(tmp_path, columns, "model=resnet18", "data=synthetic")
    assert max(map(len, lines)) <= columns
    total = next(line for line in lines if "Total" in line)
    assert re.search(r"│ +10 │ +11,175,370 │ +318\.66 M │", total), total  # output shape, parameters, MACs
    assert any(re.search(r"Activations, .*│ +\d[\d,]*\.\d MiB │", line) for line in lines)
    number_fields = [field for line in lines if line.startswith("│") for field in line.split("│")[-4:-1]]
    assert len(number_fields) > 100 and not any("…" in field for field in number_fields)


def test_the_readmes_cnntrain_info_sample_is_what_the_command_prints(tmp_path):
    """README.md's sample (batch 256 / 1,302.4 MiB went stale when alexnet's recipe batch became 128)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    command = "$ cnntrain-info model=alexnet data=fashion_mnist\n"
    sample = readme[readme.index(command) + len(command) :].split("```")[0].splitlines()
    assert len(sample) > 8 and "..." in sample and any("Activations, batch" in line for line in sample)
    lines = [line.rstrip() for line in info_lines(tmp_path, 100, "model=alexnet", "data=fashion_mnist")]
    for line in sample:
        assert line == "..." or line in lines, f"README.md's line is not printed any more: {line!r}"


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 60])
def test_info_on_vit_b_16_keeps_numbers_whole_and_shortens_names(tmp_path, columns):
    """The issue's case: ViT-B/16 (architecture only, no weights downloaded) at 80 columns printed "Pa…", "19…"."""
    lines = info_lines(tmp_path, columns, "model=torchvision", "model.arch=vit_b_16")
    text = "\n".join(lines)
    assert max(map(len, lines)) <= columns
    assert re.search(r"Total .* 10 .* 85,413,130 .* 11\.19 G", text) and "325.8 MiB" in text
    assert "197x768" in text and "197x3072" in text and "768x14x14" in text
    assert "…" in text  # long names shortened (encoder.layers.encoder_layer_0.self_attention ...)
    assert not re.search(r"\d…|…\d", text.replace("…layer", ""))  # no number cut


def test_info_command_reports_a_bad_size(tmp_path):
    result = run_cli("cnntrain-info", "model=nin", "data=synthetic", "data.resize=20", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "too small" in result.stderr and "Traceback" not in result.stderr
