import gzip

import pytest
import torch

from cnntrain.data.idx import read_idx, write_idx
from cnntrain.data.mnist import load_idx_dataset
from cnntrain.errors import DatasetError
from tests.conftest import write_fake_mnist


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip_raw_and_gzip(tmp_path, name):
    array = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    write_idx(tmp_path / name, array)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    loaded = read_idx(tmp_path / name)
    assert loaded.dtype == torch.uint8 and loaded.shape == (5, 7, 3)
    assert torch.equal(loaded, array)


def test_labels_file(tmp_path):
    labels = torch.tensor([3, 1, 4, 1, 5], dtype=torch.uint8)
    write_idx(tmp_path / "labels", labels)
    assert read_idx(tmp_path / "labels").tolist() == [3, 1, 4, 1, 5]


def test_truncated_raw_file_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, torch.zeros(4, 28, 28, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert "truncated" in str(err.value) and "(4, 28, 28)" in str(err.value)


def test_truncated_gzip_file_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "damaged or truncated" in str(err.value)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"<html>not found</html>"))
    with pytest.raises(DatasetError, match="is not an IDX file"):
        read_idx(path)


def _load(root, system):
    return load_idx_dataset(
        "FashionMNIST",
        str(system),
        "dataset-fashion-mnist",
        [str(i) for i in range(10)],
        mean=0.5,
        std=0.5,
        root=str(root),
        download=False,
    )


def test_root_in_torchvision_layout_wins_over_system_folder(tmp_path):
    write_fake_mnist(tmp_path / "root" / "FashionMNIST" / "raw", train_size=30, test_size=20)
    write_fake_mnist(tmp_path / "system", train_size=40, test_size=20, gz=True)
    data = _load(tmp_path / "root", tmp_path / "system")
    assert data.train.images.shape == (30, 1, 28, 28)
    assert data.train.labels.dtype == torch.int64 and data.test.images.shape == (20, 1, 28, 28)


def test_system_folder_used_when_root_is_empty(tmp_path):
    write_fake_mnist(tmp_path / "system", train_size=40, test_size=20, gz=False)
    data = _load(tmp_path / "empty", tmp_path / "system")
    assert len(data.train) == 40 and len(data.test) == 20


def test_nothing_found_explains_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DatasetError) as err:
        _load(tmp_path / "empty", tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.download=true" in message and "download skipped" in message
