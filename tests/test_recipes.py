"""Each model's training recipe (configs/model/*.yaml `recipe:`) reaches the composed config
through the optimizer/data/trainer files' `${oc.select:model.recipe...}` interpolations,
values set explicitly (command line, experiment) win, and `recipe_summary` says which is which.

Compose only: no data, no torch, no training.
"""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from cnntrain.config import config_dir
from cnntrain.recipes import RECIPE_KEYS, recipe_path, recipe_summary
from tests.conftest import compose_config
from tests.helpers import run_cli

MODELS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
FAMILIES = sorted(p.stem for p in (config_dir() / "optimizer").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("d2l_*.yaml"))

# The book's table (TUTORIALS.md): model -> (sgd lr, batch, epochs); plain SGD, Xavier-uniform init.
BOOK = {
    "lenet": (0.9, 256, 10),
    "alexnet": (0.01, 128, 10),
    "vgg": (0.05, 128, 10),
    "nin": (0.1, 128, 10),
    "googlenet": (0.1, 128, 10),
    "lenet_bn": (1.0, 256, 10),
    "resnet18": (0.05, 256, 10),
}
# What each optimizer/data file falls back to when the model's recipe has no value.
OPTIMIZER_FALLBACK_LR = {"sgd": 0.1, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.01}
DATA_FALLBACK_BATCH = {
    "fashion_mnist": 256,
    "mnist": 256,
    "cifar10": 128,
    "cifar100": 128,
    "image_folder": 32,
    "synthetic": 64,
}


def recipe_of(model: str) -> dict:
    return yaml.safe_load((config_dir() / "model" / f"{model}.yaml").read_text())["recipe"]


# ---------------------------------------------------------------- the files


@pytest.mark.parametrize("model", MODELS)
def test_every_model_file_has_a_complete_recipe(model):
    text = (config_dir() / "model" / f"{model}.yaml").read_text()
    config = yaml.safe_load(text)
    recipe = config["recipe"]
    assert isinstance(recipe["source"], str) and recipe["source"].strip()
    assert isinstance(recipe["batch_size"], int) and recipe["batch_size"] > 0
    assert isinstance(recipe["epochs"], int) and recipe["epochs"] > 0
    assert set(recipe) == {"source", "batch_size", "epochs", *FAMILIES}
    for family in FAMILIES:
        settings = recipe[family]
        assert isinstance(settings["lr"], float) and settings["lr"] > 0, (model, family)
        assert set(settings) <= set(RECIPE_KEYS), (model, family)  # only what the optimizer files read
        assert all(isinstance(v, float) for v in settings.values()), (model, family)
    assert "init" in config and "init" not in recipe  # the model's init stays its own key
    assert "recipe:" in text and "# " in text.split("recipe:", 1)[1]  # every number says where it is from


def test_book_models_have_the_book_recipe():
    for model, (lr, batch, epochs) in BOOK.items():
        recipe = recipe_of(model)
        assert (recipe["sgd"], recipe["batch_size"], recipe["epochs"]) == ({"lr": lr}, batch, epochs), model
        assert recipe["source"].startswith("the book, ch. "), model
    assert recipe_of("alexnet")["adam"]["lr"] == recipe_of("vgg")["adam"]["lr"] == 0.001  # the tutorials


@pytest.mark.parametrize("family", FAMILIES)
def test_optimizer_files_read_the_recipe_keys_they_have(family):
    config = yaml.safe_load((config_dir() / "optimizer" / f"{family}.yaml").read_text())
    wired = [key for key in RECIPE_KEYS if key in config]
    assert "lr" in wired
    for key in wired:
        assert recipe_path(config[key]) == f"{family}.{key}", config[key]
    fallback = OmegaConf.create({"optimizer": config}).optimizer.lr  # no model.recipe: the fallback
    assert fallback == OPTIMIZER_FALLBACK_LR[family]


@pytest.mark.parametrize("data", sorted(DATA_FALLBACK_BATCH))
def test_data_files_read_the_batch_size_from_the_recipe(data):
    config = yaml.safe_load((config_dir() / "data" / f"{data}.yaml").read_text())
    assert recipe_path(config["batch_size"]) == "batch_size"
    assert OmegaConf.create({"data": config}).data.batch_size == DATA_FALLBACK_BATCH[data]
    assert compose_config([f"data={data}", "~model.recipe"]).data.batch_size == DATA_FALLBACK_BATCH[data]


def test_train_yaml_reads_epochs_from_the_recipe():
    assert compose_config(["model=cifar_cnn"]).trainer.epochs == 30
    assert compose_config(["model=cifar_cnn", "trainer.epochs=2"]).trainer.epochs == 2
    assert compose_config(["~model.recipe"]).trainer.epochs == 10


# ---------------------------------------------------------------- composing


def test_default_run_keeps_its_values():
    cfg = compose_config()
    assert OmegaConf.to_container(cfg.optimizer, resolve=True) == {
        "name": "sgd",
        "lr": 0.9,
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "no_decay_bias_norm": False,
    }
    assert (cfg.model.name, cfg.model.init, cfg.data.name, cfg.data.batch_size) == (
        "lenet",
        "xavier_uniform",
        "fashion_mnist",
        256,
    )
    assert cfg.trainer.epochs == 10 and cfg.scheduler.name == "none"


@pytest.mark.parametrize("model", MODELS)
def test_model_trains_with_its_recipe(model):
    recipe = recipe_of(model)
    cfg = compose_config([f"model={model}", "data=fashion_mnist"])
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.lr == recipe["sgd"]["lr"] and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.momentum == recipe["sgd"].get("momentum", 0.0)
    assert cfg.optimizer.weight_decay == recipe["sgd"].get("weight_decay", 0.0)
    assert cfg.data.batch_size == recipe["batch_size"] and isinstance(cfg.data.batch_size, int)
    assert cfg.trainer.epochs == recipe["epochs"]
    assert cfg.model.init == yaml.safe_load((config_dir() / "model" / f"{model}.yaml").read_text())["init"]
    assert compose_config([f"model={model}", "data=fashion_mnist"]).optimizer.lr == recipe["sgd"]["lr"]


@pytest.mark.parametrize("family", ["adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("model", MODELS)
def test_other_optimizers_take_the_models_lr(model, family):
    recipe = recipe_of(model)[family]
    cfg = compose_config([f"model={model}", f"optimizer={family}"])
    assert cfg.optimizer.name == family and cfg.optimizer.lr == recipe["lr"]
    file_defaults = {"adamw": 0.05}
    assert cfg.optimizer.weight_decay == recipe.get("weight_decay", file_defaults.get(family, 0.0))


@pytest.mark.parametrize("model", MODELS)
def test_explicit_values_win(model):
    cfg = compose_config([f"model={model}", "optimizer.lr=0.3", "data.batch_size=64", "trainer.epochs=3"])
    assert (cfg.optimizer.lr, cfg.data.batch_size, cfg.trainer.epochs) == (0.3, 64, 3)
    cfg = compose_config([f"model={model}", "optimizer=adam", "optimizer.lr=0.3", "optimizer.weight_decay=0.01"])
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.3, 0.01)


def test_explicit_momentum_wins_over_the_recipes():
    assert recipe_of("alexnet_tv")["sgd"]["momentum"] == 0.9
    assert compose_config(["model=alexnet_tv"]).optimizer.momentum == 0.9
    assert compose_config(["model=alexnet_tv", "optimizer.momentum=0"]).optimizer.momentum == 0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_keep_their_explicit_values(experiment):
    preset = yaml.safe_load((config_dir() / "experiment" / f"{experiment}.yaml").read_text())
    expected = (preset["optimizer"]["lr"], preset["data"]["batch_size"], preset["trainer"]["epochs"])
    # A recipe changed on the command line still loses to the experiment's explicit values.
    for overrides in ([], ["model.recipe.sgd.lr=0.123", "model.recipe.batch_size=7", "model.recipe.epochs=99"]):
        cfg = compose_config([f"experiment={experiment}", *overrides])
        assert (cfg.optimizer.lr, cfg.data.batch_size, cfg.trainer.epochs) == expected, overrides


def test_smoke_experiment_keeps_its_small_batch():
    cfg = compose_config(["experiment=smoke"])
    assert recipe_of("lenet_classic")["batch_size"] == 256
    assert (cfg.model.name, cfg.data.batch_size, cfg.optimizer.lr, cfg.trainer.epochs) == ("lenet_classic", 32, 0.1, 3)


def test_model_name_alone_keeps_the_files_recipe():
    cfg = compose_config(["model.name=mlp"])  # the lenet file, another builder: lenet's recipe
    assert (cfg.model.name, cfg.optimizer.lr, cfg.data.batch_size) == ("mlp", 0.9, 256)


def test_model_without_recipe_gets_the_file_fallbacks():
    cfg = compose_config(["model=alexnet", "~model.recipe"])
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.data.batch_size) == (0.1, 0.0, 256)


def test_partial_recipe_falls_back_per_key():
    cfg = compose_config(["model=alexnet", "~model.recipe.adam", "optimizer=adam"])
    assert (cfg.optimizer.lr, cfg.data.batch_size) == (0.001, 128)


USER_MODEL = """# A user's model with its own recipe.
name: tiny
input_size: 28
init: default
recipe:
  source: my notes
  batch_size: 64
  epochs: 5
  sgd:
    lr: 0.05
    momentum: 0.9
"""


def test_users_config_dir_model_brings_its_recipe(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text(USER_MODEL)
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "model=tiny"])
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.data.batch_size, cfg.trainer.epochs) == (0.05, 0.9, 64, 5)
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "model=tiny", "optimizer=adam"])
    assert cfg.optimizer.lr == 0.001  # the recipe has no adam entry: adam.yaml's fallback
    # The command line as the README shows it (--config-dir); --cfg job composes only.
    result = run_cli(
        "cnntrain", "--config-dir", tmp_path, "--cfg", "job", "--resolve", "model=tiny", cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert (printed["optimizer"]["lr"], printed["optimizer"]["momentum"], printed["data"]["batch_size"]) == (
        0.05,
        0.9,
        64,
    )


def test_cfg_job_shows_the_interpolation_and_resolve_the_value(tmp_path):
    plain = run_cli("cnntrain", "--cfg", "job", "model=alexnet", cwd=tmp_path, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert "lr: ${oc.select:model.recipe.sgd.lr,0.1}" in plain.stdout
    resolved = run_cli(
        "cnntrain", "--cfg", "job", "--resolve", "model=alexnet", "optimizer=adam", cwd=tmp_path, timeout=120
    )
    assert resolved.returncode == 0, resolved.stderr
    printed = yaml.safe_load(resolved.stdout)
    assert (printed["optimizer"]["lr"], printed["data"]["batch_size"]) == (0.001, 128)


# ---------------------------------------------------------------- recipe_summary


def test_summary_of_the_default_run():
    line = recipe_summary(compose_config())
    assert line == (
        "recipe: lenet's (the book, ch. 7.6): sgd lr 0.9, batch 256, 10 epochs, init xavier_uniform; "
        "defaults: optimizer.momentum=0.0, optimizer.weight_decay=0.0"
    )
    assert "\n" not in line


def test_summary_names_what_was_set_explicitly():
    line = recipe_summary(compose_config(["model=alexnet", "optimizer.lr=0.02", "data.batch_size=64"]))
    assert line.startswith(
        "recipe: alexnet's (the book, ch. 8.1): sgd lr 0.01, batch 128, 10 epochs, init xavier_uniform; "
    )
    assert line.endswith("; set by you: optimizer.lr=0.02, data.batch_size=64")
    assert "defaults: optimizer.momentum=0.0, optimizer.weight_decay=0.0" in line


def test_summary_of_an_experiment_and_of_other_optimizers():
    line = recipe_summary(compose_config(["experiment=d2l_vgg"]))
    assert "set by you: optimizer.lr=0.05, data.batch_size=128, trainer.epochs=10" in line
    line = recipe_summary(compose_config(["model=alexnet_tv"]))
    assert ": sgd lr 0.01, momentum 0.9, weight_decay 0.0001, batch 256, 10 epochs, init default" in line
    assert "defaults" not in line and "set by you" not in line
    line = recipe_summary(compose_config(["model=vgg", "optimizer=adamw"]))
    assert ": adamw lr 0.001, batch 128, 10 epochs, init xavier_uniform; defaults: optimizer.weight_decay=0.05" in line


def test_summary_tells_typed_values_from_the_experiments():
    command_line = ["experiment=d2l_vgg", "optimizer.lr=0.02", "+trainer.epochs=3"]
    line = recipe_summary(compose_config(["experiment=d2l_vgg", "optimizer.lr=0.02", "trainer.epochs=3"]), command_line)
    assert line.endswith(
        "; set by you: optimizer.lr=0.02, trainer.epochs=3; set by experiment=d2l_vgg: data.batch_size=128"
    )
    line = recipe_summary(compose_config(["experiment=d2l_vgg"]), ["experiment=d2l_vgg"])
    assert line.endswith("; set by experiment=d2l_vgg: optimizer.lr=0.05, data.batch_size=128, trainer.epochs=10")
    assert "set by you" not in line
    # Set explicitly, yet neither typed nor by an experiment: an edited config file (here: the composed
    # config given without the command line that set it).
    line = recipe_summary(compose_config(["data.batch_size=64"]), [])
    assert line.endswith("; set in the config files: data.batch_size=64")


def test_summary_of_a_model_without_recipe():
    line = recipe_summary(compose_config(["model=alexnet", "~model.recipe", "data.batch_size=32"]))
    assert line == (
        "recipe: model alexnet has none: init xavier_uniform; defaults: optimizer.lr=0.1, "
        "optimizer.momentum=0.0, optimizer.weight_decay=0.0, trainer.epochs=10; "
        "set by you: data.batch_size=32"
    )


def test_summary_of_a_resolved_config():
    cfg = compose_config(["model=alexnet", "optimizer.lr=0.02"])
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # as a checkpoint saves it
    assert recipe_summary(resolved) == (
        "recipe: alexnet's (the book, ch. 8.1); resolved config: sgd lr 0.02, "
        "momentum 0.0, weight_decay 0.0, batch 128, 10 epochs, init xavier_uniform"
    )


def test_summary_works_on_the_real_train_yaml():
    line = recipe_summary(compose_config(["model=nin", "optimizer=rmsprop"]))
    assert line.startswith(
        "recipe: nin's (the book, ch. 8.3): rmsprop lr 0.0001, batch 128, 10 epochs, init xavier_uniform"
    )
