import pytest

from cnntrain.data import DATASETS
from cnntrain.errors import ConfigError
from cnntrain.models import MODELS
from cnntrain.optim import OPTIMIZERS, SCHEDULERS
from cnntrain.registry import Registry


def make_registry() -> Registry:
    registry = Registry("widget", "widget.name")

    @registry.register("small")
    def small(size: int = 1, colour: str = "red"):
        return ("small", size, colour)

    @registry.register()
    def large():
        return "large"

    return registry


def test_build_passes_settings_and_extras():
    registry = make_registry()
    assert registry.build("small", {"size": 3}, colour="blue") == ("small", 3, "blue")
    assert registry.names() == ["large", "small"]
    assert "large" in registry


def test_duplicate_name_is_rejected():
    registry = make_registry()
    with pytest.raises(ValueError, match="widget 'small' is registered twice"):
        registry.register("small")(lambda: None)


def test_unknown_name_lists_choices_and_suggests():
    with pytest.raises(ConfigError) as err:
        make_registry().get("smal")
    assert str(err.value) == "Unknown widget 'smal' (widget.name). Did you mean 'small'? Available: large, small"


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as err:
        make_registry().get("zzz")
    assert "Did you mean" not in str(err.value)
    assert "Available: large, small" in str(err.value)


def test_unknown_setting_names_the_key_and_valid_ones():
    with pytest.raises(ConfigError) as err:
        make_registry().build("small", {"colur": "green"})
    assert str(err.value) == (
        "widget 'small' has no setting 'colur' (widget.colur). Did you mean 'colour'? Valid settings: size, colour"
    )


def test_real_registries_hold_the_first_components():
    assert {"lenet", "lenet_classic", "mlp", "softmax"} <= set(MODELS.names())
    assert {"fashion_mnist", "mnist", "synthetic"} <= set(DATASETS.names())
    assert OPTIMIZERS.names() == ["adam", "adamw", "rmsprop", "sgd"]
    assert SCHEDULERS.names() == ["cosine", "exponential", "multistep", "none", "onecycle", "plateau", "step"]


def test_every_optimizer_and_scheduler_has_a_config_file_with_valid_settings():
    import yaml

    from cnntrain.config import config_dir
    from cnntrain.optim import OPTIMIZER_KEYS

    for group, registry, reserved in (("optimizer", OPTIMIZERS, OPTIMIZER_KEYS), ("scheduler", SCHEDULERS, ("name",))):
        files = sorted(config_dir().glob(f"{group}/*.yaml"))
        assert [f.stem for f in files] == registry.names()
        for file in files:
            config = yaml.safe_load(file.read_text())
            assert config["name"] == file.stem
            registry.check_settings(file.stem, {k: v for k, v in config.items() if k not in reserved})


def test_settings_cnntrain_passes_itself_are_not_config_settings():
    with pytest.raises(ConfigError, match=r"scheduler 'cosine' has no setting 'epochs' \(scheduler.epochs\)"):
        SCHEDULERS.check_settings("cosine", {"epochs": 5})


def test_model_typo_suggests_the_real_model():
    with pytest.raises(
        ConfigError, match=r"Unknown model 'lenet_clasic' \(model.name\)\. Did you mean 'lenet_classic'\?"
    ):
        MODELS.get("lenet_clasic")


def test_registry_names_are_the_config_file_names_the_cli_checks_without_torch():
    from cnntrain.config import REGISTRY_GROUPS, config_dir

    registries = {"model": MODELS, "data": DATASETS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
    assert set(registries) == set(REGISTRY_GROUPS)
    for group, registry in registries.items():
        # cnntrain's own entries: other test modules register theirs (imported before this one runs, or not).
        builtin = [name for name in registry.names() if registry.get(name).__module__.startswith("cnntrain.")]
        assert sorted(p.stem for p in config_dir().glob(f"{group}/*.yaml")) == builtin, group
