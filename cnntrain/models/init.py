"""Weight initialisation schemes, chosen by `model.init`.

The tutorials initialise Conv2d and Linear weights (not biases) with Xavier-uniform;
'default' keeps PyTorch's own initialisation.
"""

from __future__ import annotations

from torch import nn

from cnntrain.errors import ConfigError
from cnntrain.registry import unknown_name_message

INIT_SCHEMES = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "default": None,
}


def check_init_scheme(scheme: str) -> None:
    if scheme not in INIT_SCHEMES:
        raise ConfigError(unknown_name_message("weight init", "model.init", str(scheme), INIT_SCHEMES))


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise the weights of every Conv2d and Linear layer with `scheme`."""
    check_init_scheme(scheme)
    fn = INIT_SCHEMES[scheme]
    if fn is not None:
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fn(module.weight)
    return model
