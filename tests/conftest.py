"""Shared fixtures: composed configs and small datasets written in the real file formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cnntrain.config import config_dir
from cnntrain.data.idx import write_idx
from cnntrain.data.synthetic import synthetic
from cnntrain.trainer import Callback

REPO = Path(__file__).resolve().parent.parent

# A fixed thread count for every run the tests start, in this process and the ones it spawns: many tests
# compare two runs to the last bit (a resume against the uninterrupted run), and trainer.threads=auto
# changes the count (and the last bits) while other processes are busy, as a shared CI machine's are.
# tests/test_contention.py runs the governor itself, with this variable removed.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `cnntrain <overrides>` would run with."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def write_fake_mnist(folder: Path, train_size: int = 400, test_size: int = 200, gz: bool = True) -> Path:
    """Learnable 28x28 images in the four MNIST IDX files, as torchvision lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    data = synthetic(
        num_classes=10, channels=1, image_size=28, train_size=train_size, test_size=test_size, noise=0.15, seed=1
    )
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", data.train.images[:, 0])
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", data.train.labels)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", data.test.images[:, 0])
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", data.test.labels)
    return folder


def make_job(sweep_dir, name, overrides, summary=None):
    """A sweep job's folder as Hydra and a run leave it: .hydra/overrides.yaml and, when given, summary.json."""
    folder = sweep_dir / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def assert_same_weights(a, b):
    """Two state dicts with the same keys, in the same order, and bit-equal tensors."""
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


class StopAt(Callback):
    """Interrupt a run after step `step` of epoch `epoch`: what Ctrl-C does at that moment."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_train_step(self, trainer, step, steps):
        if (trainer.history[-1].epoch + 1 if trainer.history else 1, step) == self.at:
            trainer.request_stop()


@pytest.fixture
def fashion_root(tmp_path) -> Path:
    """A data.root holding a tiny Fashion-MNIST in torchvision's layout."""
    root = tmp_path / "data"
    write_fake_mnist(root / "FashionMNIST" / "raw")
    return root


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    """Each test parses its own files (the cache is for multirun jobs in one process)."""
    from cnntrain import data

    data._CACHE.clear()
    yield
    data._CACHE.clear()
