"""The MODELS registry and the model families registered in it.

Every builder is called as `builder(num_classes=, in_channels=, input_size=, **settings)`:
the first three come from the dataset spec and the model config's `input_size`, the
rest from the model config. Adding a family: a new module with `@MODELS.register(...)`
builders, imported below.
"""

from cnntrain.registry import Registry

MODELS = Registry("model", "model.name")

# Importing the family modules registers their builders.
from cnntrain.models import lenet, mlp  # noqa: E402,F401
from cnntrain.models import alexnet, cifar_cnn, googlenet, lenet_bn, nin, resnet, vgg  # noqa: E402,F401
from cnntrain.models.init import INIT_SCHEMES, init_weights  # noqa: E402,F401
