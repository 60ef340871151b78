"""The model zoo: the MODELS registry (models/catalog.py) and the model families registered in it.

Adding a family: a new module with `@MODELS.register(...)` builders (importing MODELS from
cnntrain.models.catalog), imported below; `from cnntrain.models import MODELS` keeps working.
"""

# Importing the family modules registers their builders.
from cnntrain.models import (  # noqa: F401  # noqa: F401  # noqa: F401
    airnet,
    alexnet,
    cifar_cnn,
    googlenet,
    lenet,
    lenet_bn,
    mlp,
    nin,
    resnet,
    resnet_small,
    timm_models,
    torchvision_models,
    vgg,
)
from cnntrain.models.catalog import MODEL_KEYS, MODELS, build_model, builder_settings, model_config  # noqa: F401
from cnntrain.models.init import INIT_SCHEMES, init_weights  # noqa: F401
