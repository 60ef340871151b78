"""The MODELS registry and what every model config goes through: the keys that are not builder
settings, a model's config file or defaults, and building a model from a checkpoint's recipe.

Every builder is called as `builder(num_classes=, in_channels=, input_size=, **settings)`:
the first three come from the dataset spec and the model config's `input_size`, the
rest from the model config. The family modules register their builders here
(`@MODELS.register(...)`); cnntrain/models/__init__.py imports them.
"""

from cnntrain.config import config_dir, settings_of
from cnntrain.models.init import init_weights
from cnntrain.registry import Registry

MODELS = Registry("model", "model.name", code_arguments=("num_classes", "in_channels", "input_size"))

# Keys of a model config that are not builder settings (`recipe`: how it trains, read by the
# optimizer, data and trainer configs; see cnntrain/recipes.py; `weights` and `freeze`: where
# the starting weights come from and what stays fixed, see cnntrain/pretrained.py and finetune.py).
MODEL_KEYS = ("name", "input_size", "init", "recipe", "weights", "freeze")


def model_config(name: str) -> dict:
    """configs/model/<name>.yaml as a plain dict, or the builder's defaults when there is none."""
    import inspect

    import yaml

    path = config_dir() / "model" / f"{name}.yaml"
    if path.exists():
        return yaml.safe_load(path.read_text())
    params = inspect.signature(MODELS.get(name)).parameters
    return {"name": name, "input_size": params["input_size"].default, "init": "default"}


def builder_settings(config) -> dict:
    """The keys of a model config that go to the builder as keyword arguments."""
    return settings_of(config, MODEL_KEYS)


def build_model(recipe: dict):
    """The model a recipe describes (what checkpoints save as "model": name, settings, classes,
    channels, input size, init), with freshly initialised weights."""
    model = MODELS.build(
        recipe["name"],
        recipe["settings"],
        num_classes=recipe["num_classes"],
        in_channels=recipe["in_channels"],
        input_size=recipe["input_size"],
    )
    return init_weights(model, recipe.get("init", "default"))
