"""Every config file composes, and wrong names fail before any data is loaded."""

import json

import pytest

from cnntrain.checks import check_config
from cnntrain.config import GROUPS, check_group_choices, config_dir
from cnntrain.errors import ConfigError
from cnntrain.run import train
from tests.conftest import compose_config

GROUP_CHOICES = [(group, path.stem) for group in GROUPS for path in sorted((config_dir() / group).glob("*.yaml"))]


def test_every_group_has_choices():
    assert {group for group, _ in GROUP_CHOICES} == set(GROUPS)


@pytest.mark.parametrize("group,choice", GROUP_CHOICES, ids=[f"{g}={c}" for g, c in GROUP_CHOICES])
def test_every_config_composes_and_checks(group, choice):
    cfg = compose_config([f"{group}={choice}"])
    if group not in ("experiment", "hparams_search", "launcher"):  # those are presets: # @package _global_
        assert cfg[group] is not None
    check_config(cfg)


def test_defaults_are_the_book_lenet_recipe():
    cfg = compose_config()
    assert (cfg.model.name, cfg.model.init, cfg.model.input_size) == ("lenet", "xavier_uniform", 28)
    assert (cfg.data.name, cfg.data.batch_size) == ("fashion_mnist", 256)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.9, 0.0)
    assert cfg.trainer.epochs == 10 and cfg.scheduler.name == "none" and cfg.device.type == "auto"


def test_unknown_group_choice_suggests_the_close_one():
    message = check_group_choices(["model=lenet_clasic", "trainer.epochs=1"])
    assert message.startswith("Unknown model 'lenet_clasic' (model=lenet_clasic). Did you mean 'lenet_classic'?")
    assert "Available: " in message and "softmax" in message


def test_unknown_choice_inside_a_sweep_list_is_found():
    assert "Unknown optimizer 'adamm'" in check_group_choices(["-m", "optimizer=sgd,adamm"])


def test_valid_choices_pass():
    assert check_group_choices(["model=mlp", "data=synthetic", "experiment=smoke", "optimizer.lr=0.1"]) is None


def test_choices_from_user_config_dir_are_accepted(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mlp\n")
    assert check_group_choices(["--config-dir", str(tmp_path), "model=mine"]) is None


@pytest.mark.parametrize(
    "override,expected",
    [
        ("model.name=lenet5", "Unknown model 'lenet5' (model.name). Did you mean 'lenet'?"),
        ("optimizer.name=sdg", "Unknown optimizer 'sdg' (optimizer.name). Did you mean 'sgd'?"),
        ("scheduler.name=steps", "Unknown scheduler 'steps' (scheduler.name). Did you mean 'step'?"),
        ("data.name=fashion_mnst", "Unknown dataset 'fashion_mnst' (data.name). Did you mean 'fashion_mnist'?"),
        (
            "+optimizer.momentun=0.9",
            "optimizer 'sgd' has no setting 'momentun' (optimizer.momentun). Did you mean 'momentum'?",
        ),
        ("model.init=xavier", "Unknown weight init 'xavier' (model.init)."),
        ("trainer.epochs=0", "trainer.epochs must be a positive whole number up to 2,147,483,647, got 0."),
        (
            "model.input_size=abc",
            "model.input_size must be null (the data's size) or a whole number of pixels >= 1, got 'abc'.",
        ),
        ("trainer.progress=fancy", "trainer.progress must be one of auto, bar, plain, none"),
    ],
)
def test_bad_values_fail_before_data_loads(tmp_path, override, expected):
    # data.root points nowhere and downloads are off: if data were loaded first,
    # the error would be about the missing dataset instead.
    cfg = compose_config([override, f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(ConfigError) as err:
        train(cfg, run_dir=tmp_path / "run")
    assert expected in str(err.value)
    # Recorded for sweep tables: the job's folder says why it failed.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and expected in summary["error"]


# ------------------------------------------------------------------ one typed settings object


def test_one_augmentation_given_bare_is_a_list_of_one():
    """data.augment=hflip (no brackets) is recorded as ["hflip"], not letter by letter."""
    assert check_config(compose_config(["data=synthetic", "data.augment=hflip"])).data.augment == ["hflip"]


def test_check_config_returns_frozen_typed_settings_read_from_the_config():
    import dataclasses

    checked = check_config(
        compose_config(
            [
                "data=synthetic",
                "trainer.epochs=3",
                "trainer.ema=0.99",
                "data.batch_size=16",
                "data.resize=40",
                "trainer.limit_val_batches=2",
                "trainer.early_stopping.patience=4",
                "model.freeze=backbone",
                "finetune.unfreeze_at=1",
                "finetune.lr_scale=0.5",
            ]
        )
    )
    trainer, data, plan, finetune = checked.trainer, checked.data, checked.model, checked.finetune
    assert (trainer.epochs, trainer.ema, trainer.precision, trainer.batch_limits) == (
        3,
        0.99,
        32,
        {"limit_val_batches": 2},
    )
    assert (trainer.early_stopping.patience, trainer.early_stopping.metric) == (4, "val_acc")  # the monitor's
    assert (data.batch_size, data.eval_batch_size, data.resize) == (16, 32, 40)  # null eval size: 2 x batch_size
    assert (plan.name, plan.resize, plan.native_size, plan.input_size()) == ("lenet", 40, 28, 40)
    assert (finetune.unfreeze_at, finetune.lr_scale, finetune.keep_norm_statistics) == (1, 0.5, False)
    assert checked.limits == {"limit_val_batches": 2}
    for settings in (checked, trainer, data, plan, finetune):
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.epochs = 1


def test_a_config_without_the_optional_keys_gets_the_yaml_defaults_once():
    """A config saved by an older cnntrain (no finetune section, no trainer.precision ...) still checks,
    with the values configs/train.yaml gives: settings.FALLBACKS, the one place Python writes them."""
    from omegaconf import open_dict

    from cnntrain.settings import FALLBACKS

    full, cfg = compose_config(["data=synthetic"]), compose_config(["data=synthetic"])
    with open_dict(cfg):
        for section, key in (
            ("finetune", None),
            ("trainer", "precision"),
            ("trainer", "ema"),
            ("model", "weights"),
            ("data", "resize"),
            ("trainer", "early_stopping"),
        ):
            cfg.pop(section) if key is None else cfg[section].pop(key)
    checked, reference = check_config(cfg), check_config(full)
    assert checked.finetune == reference.finetune and checked.finetune.lr_scale == full.finetune.lr_scale == 0.01
    assert checked.trainer.precision == full.trainer.precision == FALLBACKS["trainer.precision"]
    assert checked.trainer.early_stopping == reference.trainer.early_stopping
    assert checked.model.weights is None and checked.data.resize is None


@pytest.mark.parametrize(
    "resize, weights_size, native, data_size, expected",
    [
        (40, 224, 28, 32, 40),
        (None, 224, 28, 32, 224),
        (None, None, 28, 32, 28),
        (None, None, None, 32, 32),
        (None, None, None, None, None),
    ],
)
def test_one_input_size_rule(resize, weights_size, native, data_size, expected):
    from cnntrain.settings import input_size

    assert input_size(resize, weights_size, native, data_size) == expected


def test_the_batch_memory_check_uses_the_same_input_size_as_the_build():
    """model.input_size alone decides the size here: the check names it, as the build would use it."""
    with pytest.raises(ConfigError, match=r"^model.input_size=100000 would need at least"):
        check_config(compose_config(["data=synthetic", "model=mlp", "model.input_size=100000"]))
