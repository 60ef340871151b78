"""The fast data path gives the same numbers as the tutorials' torchvision pipeline."""

import torch
from torchvision import datasets, transforms
from torchvision.transforms import v2

from cnntrain.data import load_image_data
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from tests.conftest import write_fake_mnist


def test_in_memory_batches_equal_torchvision_dataset_with_to_tensor(tmp_path):
    raw = write_fake_mnist(tmp_path / "FashionMNIST" / "raw", train_size=50, test_size=20, gz=False)
    reference = datasets.FashionMNIST(str(tmp_path), train=True, transform=transforms.ToTensor(), download=False)
    ours = load_image_data("fashion_mnist", {"root": str(tmp_path), "download": False})
    assert raw.exists()
    loader = InMemoryLoader(ours.train, 16, BatchTransform(None, None, None), torch.device("cpu"), shuffle=True, seed=7)
    loader.set_epoch(3)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(7 + 3))
    for batch_number, (images, labels) in enumerate(loader):
        index = order[batch_number * 16 : (batch_number + 1) * 16]
        expected = torch.stack([reference[i][0] for i in index.tolist()])
        assert torch.equal(images, expected)  # bit for bit: both divide the uint8 values by 255
        assert labels.tolist() == [reference[i][1] for i in index.tolist()]


def test_device_resize_matches_torchvision_resize():
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    for size in (32, 96, 224, 20):
        ours = BatchTransform((size, size), None, None)(images)
        theirs = v2.Resize((size, size), antialias=True)(images.float() / 255)
        assert ours.shape == (4, 3, size, size)
        assert torch.allclose(ours, theirs, atol=1e-5), size


def test_dataset_cache_reuses_parsed_data_and_follows_the_root(tmp_path):
    write_fake_mnist(tmp_path / "a" / "FashionMNIST" / "raw", train_size=30, test_size=10)
    write_fake_mnist(tmp_path / "b" / "FashionMNIST" / "raw", train_size=40, test_size=10)
    first = load_image_data("fashion_mnist", {"root": str(tmp_path / "a"), "download": False})
    again = load_image_data("fashion_mnist", {"root": str(tmp_path / "a"), "download": False})
    assert again is first  # a multirun's next job in the same process parses nothing
    other = load_image_data("fashion_mnist", {"root": str(tmp_path / "b"), "download": False})
    assert len(other.train) == 40 and len(first.train) == 30
