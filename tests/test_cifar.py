"""CIFAR-10/100 in torchvision's python format, read through the restricted unpickler."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cnntrain.data import DATASETS
from cnntrain.data.cifar import cifar10, load_pickle
from cnntrain.errors import DatasetError
from tests.conftest import compose_config

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the original CIFAR files (cPickle, protocol 2) do.

    Python 3 would pickle bytes at protocol 2 as calls to `_codecs.encode`, a global the
    real files never reference.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj) -> None:
    """Pickle `obj` as Python 2 + numpy 1 did: bytes as str opcodes, numpy.core module path."""
    import io

    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    payload = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(payload)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_fake_cifar10(root: Path, per_batch: int = 8, test_size: int = 10) -> Path:
    """A tiny CIFAR-10 in `<root>/cifar-10-batches-py/`, every file in the original format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        data = _images(per_batch, seed=i)
        write_py2_pickle(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"data": data,
                b"labels": [(i + j) % 10 for j in range(per_batch)],
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            },
        )
    write_py2_pickle(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"data": _images(test_size, seed=99),
            b"labels": [j % 10 for j in range(test_size)],
            b"filenames": [f"test_{j}.png".encode() for j in range(test_size)],
        },
    )
    write_py2_pickle(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072,
        },
    )
    return folder


def write_fake_cifar100(root: Path, train_size: int = 12, test_size: int = 6) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", train_size, 1), ("test", test_size, 2)):
        write_py2_pickle(
            folder / name,
            {
                b"filenames": [f"{name}_{j}.png".encode() for j in range(n)],
                b"batch_label": name.encode(),
                b"fine_labels": [(7 * j) % 100 for j in range(n)],
                b"coarse_labels": [j % 20 for j in range(n)],
                b"data": _images(n, seed),
            },
        )
    write_py2_pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
    )
    return folder


def test_cifar10_loads_shapes_values_and_classes(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    data = cifar10(root=str(tmp_path), download=False)
    assert data.classes == CIFAR10_NAMES
    assert data.train.images.shape == (40, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (10, 3, 32, 32)
    assert data.train.labels.dtype == torch.int64 and data.train.labels.shape == (40,)
    assert data.train.labels[:8].tolist() == [(1 + j) % 10 for j in range(8)]
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)
    # A row is 1024 red, 1024 green, 1024 blue values, each plane 32x32 row-major.
    rows = _images(8, seed=2)  # data_batch_2 -> train images 8..15
    channel, row, col = 2, 5, 7
    assert data.train.images[8 + 3, channel, row, col] == rows[3, channel * 1024 + row * 32 + col]
    assert data.train.images[8, 1, 0, 31] == rows[0, 1024 + 31]
    assert torch.equal(data.train.images[8].reshape(-1), torch.from_numpy(rows[0]))
    assert (folder / "test_batch").read_bytes().count(b"cnumpy.core.multiarray\n_reconstruct") == 1


def test_cifar100_uses_fine_labels_and_names(tmp_path):
    write_fake_cifar100(tmp_path)
    data = DATASETS.build("cifar100", {"root": str(tmp_path), "download": False})
    assert len(data.classes) == 100 and data.classes[7] == "fine7"
    assert data.train.images.shape == (12, 3, 32, 32) and data.test.images.shape == (6, 3, 32, 32)
    assert data.train.labels.tolist() == [(7 * j) % 100 for j in range(12)]
    assert data.mean == (0.5071, 0.4865, 0.4409) and data.std == (0.2673, 0.2564, 0.2762)


def test_str_keys_and_numpy2_module_path_are_accepted(tmp_path):
    path = tmp_path / "batch"
    data = _images(2, seed=5)
    path.write_bytes(pickle.dumps({"data": data, "labels": [1, 2]}, protocol=4))
    loaded = load_pickle(path)
    assert np.array_equal(loaded["data"], data) and loaded["labels"] == [1, 2]


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    path = folder / "data_batch_3"
    write_py2_pickle(path, {b"data": _Evil(f"echo pwned > {marker}"), b"labels": []})
    # os.system pickles as posix.system on Linux; an attacker would write the portable name.
    payload = (
        path.read_bytes().replace(b"cposix\nsystem\n", b"cos\nsystem\n").replace(b"cnt\nsystem\n", b"cos\nsystem\n")
    )
    assert b"cos\nsystem\n" in payload
    path.write_bytes(payload)
    with pytest.raises(DatasetError) as err:
        cifar10(root=str(tmp_path), download=False)
    message = str(err.value)
    assert str(folder / "data_batch_3") in message and "refused to load os.system" in message
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("_codecs", "encode"), ("numpy", "load")])
def test_other_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "meta"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R.")
    with pytest.raises(DatasetError, match=f"refused to load {module}.{name}"):
        load_pickle(path)


def test_truncated_file_names_the_file(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError) as err:
        cifar10(root=str(tmp_path), download=False)
    assert str(path) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_missing_labels_key_is_a_dataset_error(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    write_py2_pickle(folder / "data_batch_1", {b"data": _images(4, seed=0)})
    with pytest.raises(DatasetError) as err:
        cifar10(root=str(tmp_path), download=False)
    assert str(folder / "data_batch_1") in str(err.value) and "'labels'" in str(err.value)


@pytest.mark.parametrize(
    "batch,expected",
    [
        ({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, "shape (N, 3072)"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "uint8"),
        ({b"data": _images(4, seed=0), b"labels": [0] * 3}, "4 images but 3 labels"),
        ({b"data": _images(4, seed=0), b"labels": [0, 1, 2, 10]}, "labels range over 0..10"),
    ],
)
def test_wrong_structure_is_a_dataset_error(tmp_path, batch, expected):
    folder = write_fake_cifar10(tmp_path)
    write_py2_pickle(folder / "data_batch_5", batch)
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        cifar10(root=str(tmp_path), download=False)


def test_missing_folder_without_download_explains_the_fixes(tmp_path):
    with pytest.raises(DatasetError) as err:
        cifar10(root=str(tmp_path / "nowhere"), download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "download skipped (data.download=false)" in message and "data.download=true" in message
    assert "copy the extracted cifar-10-batches-py folder" in message


def test_train_one_epoch_on_tiny_cifar10(tmp_path):
    from cnntrain.run import train

    root = tmp_path / "data"
    write_fake_cifar10(root)
    cfg = compose_config(
        [
            "data=cifar10",
            f"data.root={root}",
            "data.download=false",
            "model=cifar_cnn",
            "trainer.epochs=1",
            "trainer.progress=none",
            "device=cpu",
            "data.batch_size=8",
        ]
    )
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["status"] == "completed" and summary["data"] == "cifar10" and summary["epochs"] == 1
    assert (summary["train_size"], summary["val_size"], summary["test_size"]) == (36, 4, 10)
    assert summary["input_size"] == 32 and 0.0 <= summary["test_acc"] <= 1.0
    assert (tmp_path / "run" / "summary.json").is_file()
