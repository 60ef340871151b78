"""Every model in the zoo learns with its own recipe (configs/model/<name>.yaml `recipe:`).

For each model, `cnntrain model=X data=fashion_mnist` as composed (the recipe's optimizer,
lr, batch size and init; nothing overridden but the input size where the native one is
too slow on a CPU) trains until its training loss, averaged over the last WINDOW steps,
is below DROP times its start (the first step's loss, or chance level ln(10) when the
first step is worse than guessing), and must get there within the model's step budget. The
data is real Fashion-MNIST when the system copy is installed (`make data`), else learnable
images written in its IDX format.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cnntrain.build import build_training
from cnntrain.checks import check_config
from cnntrain.config import compose
from cnntrain.trainer import Callback, StepProgress, Trainer
from tests.conftest import write_fake_mnist

SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
WINDOW = 10
DROP = 0.8
CHANCE = math.log(10)  # the loss of a uniform guess over Fashion-MNIST's 10 classes
# model: (data.resize, at most this many steps); None keeps the native size. The budgets are
# about twice the steps each took on real Fashion-MNIST: the book's plain-SGD, Xavier-init
# nets without BatchNorm sit near chance level for hundreds of steps before they learn.
CASES = {
    "softmax": (None, 100),
    "mlp": (None, 300),
    "lenet": (None, 900),
    "lenet_bn": (None, 100),
    "lenet_classic": (None, 300),
    "cifar_cnn": (None, 1500),
    "resnet18": (32, 60),
    "resnet_small": (None, 60),
    "airnet": (None, 60),
    "googlenet": (32, 600),
    "nin": (67, 1500),
    "vgg": (32, 2000),
    "vgg11": (32, 700),
    "alexnet": (65, 1500),
    "alexnet_small": (65, 1200),
    "alexnet_tv": (63, 600),
}
# Over about a minute on 2 CPU cores: run with `make test-all` (or -m slow).
SLOW = {"googlenet", "nin", "vgg", "vgg11", "alexnet", "alexnet_small", "alexnet_tv"}


class StepLosses(Callback):
    """Each training step's loss, recovered from the running means the trainer reports
    (log_every=1: after step k the mean over steps 1..k), and a stop request once the
    last WINDOW steps average below DROP times the start."""

    def __init__(self):
        self.losses: list[float] = []
        self._mean = 0.0

    def on_train_progress(self, trainer: Trainer, progress: StepProgress) -> None:
        previous = 0.0 if progress.step == 1 else self._mean  # the means restart each epoch
        # Exact when the epoch's batches so far are equal in size (only its last may be smaller).
        self.losses.append(progress.step * progress.loss - (progress.step - 1) * previous)
        self._mean = progress.loss
        if len(self.losses) > WINDOW and self.recent() < DROP * self.start():
            trainer.request_stop()

    def start(self) -> float:
        return min(self.losses[0], CHANCE)

    def recent(self) -> float:
        return sum(self.losses[-WINDOW:]) / WINDOW


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    """A data.root: empty when the system's real Fashion-MNIST is installed (so that one is
    used), else holding learnable fake images in its files."""
    root = tmp_path_factory.mktemp("data")
    if not (SYSTEM_COPY / "train-images-idx3-ubyte.gz").exists():
        write_fake_mnist(root / "FashionMNIST" / "raw", train_size=6000, test_size=500)
    return root


def train_until_learned(model: str, resize: int | None, max_steps: int, root: Path) -> StepLosses:
    overrides = [
        f"model={model}",
        "data=fashion_mnist",
        f"data.root={root}",
        "data.download=false",
        "device=cpu",
        "trainer.progress=none",
    ]
    cfg = compose(overrides + ([f"data.resize={resize}"] if resize else []))
    parts = build_training(check_config(cfg))
    recorder = StepLosses()
    trainer = parts.trainer([recorder])
    trainer.log_every = 1
    epoch = 0
    while len(recorder.losses) < max_steps and not trainer.stop_requested:
        epoch += 1
        try:
            trainer.train_one_epoch(epoch)
        except KeyboardInterrupt:  # what request_stop raises after the step
            break
    return recorder


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in CASES])
def test_default_recipe_learns(model, fashion_root, record_property):
    resize, max_steps = CASES[model]
    recorder = train_until_learned(model, resize, max_steps, fashion_root)
    losses = recorder.losses
    record_property(
        "losses", f"step 1 {losses[0]:.3f}, steps {len(losses) - WINDOW + 1}-{len(losses)} {recorder.recent():.3f}"
    )
    assert all(math.isfinite(loss) for loss in losses), losses
    assert recorder.recent() < DROP * recorder.start(), (
        f"{model}: mean loss of the last {WINDOW} of {len(losses)} steps {recorder.recent():.3f}, "
        f"first step {losses[0]:.3f}"
    )
