import torch
import torch.nn.functional as F

from cnntrain.data import ImageSet, prepare
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from cnntrain.data.synthetic import synthetic


def make_set(n=10, size=4):
    images = torch.arange(n * size * size, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, size, size)
    return ImageSet(images, torch.arange(n))


def test_shuffled_epoch_visits_every_example_once_in_a_seeded_order():
    loader = InMemoryLoader(
        make_set(10), 4, BatchTransform(None, None, None), torch.device("cpu"), shuffle=True, seed=3
    )
    assert len(loader) == 3
    labels = [y for _, batch in loader for y in batch.tolist()]
    assert sorted(labels) == list(range(10)) and labels != list(range(10))
    again = [y for _, batch in loader for y in batch.tolist()]
    assert labels == again  # same epoch, same order
    loader.set_epoch(2)
    assert [y for _, batch in loader for y in batch.tolist()] != labels


def test_batches_hold_the_images_of_their_labels_scaled_to_unit_range():
    data = make_set(6)
    loader = InMemoryLoader(data, 4, BatchTransform(None, None, None), torch.device("cpu"), shuffle=True, seed=0)
    for images, labels in loader:
        assert images.dtype == torch.float32
        assert torch.equal(images, data.images[labels].float() / 255)


def test_transform_resizes_like_torchvision_and_normalises():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    out = BatchTransform(size=(32, 32), mean=(0.5,), std=(0.25,))(images)
    assert out.shape == (3, 1, 32, 32)
    expected = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(out, (expected - 0.5) / 0.25, atol=1e-5)


def test_channels_last_keeps_values():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = BatchTransform(None, None, None, channels_last=True)(images)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, images.float() / 255)


def test_validation_holdout_is_seeded_and_disjoint():
    data = synthetic(train_size=100, test_size=20)
    first = prepare("synthetic", data, 0.2, seed=5)
    second = prepare("synthetic", data, 0.2, seed=5)
    assert (first.spec.train_size, first.spec.val_size, first.spec.test_size) == (80, 20, 20)
    assert torch.equal(first.val.images, second.val.images)
    assert prepare("synthetic", data, 0.0, seed=5).val is data.test
    assert first.spec.channels == 1 and first.spec.image_size == (28, 28) and first.spec.num_classes == 10


def test_distributed_shards_split_each_global_batch_and_each_evaluation_split_once(tmp_path):
    """Rank r of N takes every N-th example of each global batch (training) and of the split
    (evaluation): together the ranks see exactly what one process sees, each example once."""
    from PIL import Image

    from cnntrain.data.image_files import file_split
    from cnntrain.data.loader import make_loader

    data = make_set(11)
    for i in range(11):
        Image.fromarray(data.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    on_disk = file_split(
        [(tmp_path / f"{i}.png", i) for i in range(11)], channels=1, size=4, skip_bad_files=False, workers=0
    )
    plain = BatchTransform(None, None, None)
    for split in (data, on_disk):
        whole = make_loader(split, 4, plain, torch.device("cpu"), shuffle=True, seed=5)
        shards = [make_loader(split, 4, plain, torch.device("cpu"), shuffle=True, seed=5, shard=(r, 2)) for r in (0, 1)]
        assert len(whole) == len(shards[0]) == len(shards[1]) == 3
        for (_, batch), (_, first), (_, second) in zip(whole, *shards):
            assert first.tolist() == batch[0::2].tolist() and second.tolist() == batch[1::2].tolist()
        assert [whole.global_batch_size(step) for step in (1, 2, 3)] == [4, 4, 3]
        evaluation = [
            [y for _, b in make_loader(split, 4, plain, torch.device("cpu"), shard=(r, 3)) for y in b.tolist()]
            for r in range(3)
        ]
        assert sorted(sum(evaluation, [])) == list(range(11)) and evaluation[0] == [0, 3, 6, 9]
    # A last global batch smaller than the number of processes is left out rather than leave a rank empty.
    assert len(make_loader(make_set(9), 4, plain, torch.device("cpu"), shuffle=True, shard=(0, 2))) == 2
