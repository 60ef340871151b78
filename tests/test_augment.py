"""Batched on-device augmentations: shapes, exactness of the simple ones, seeded determinism."""

import pytest
import torch

from cnntrain.data import ImageSet
from cnntrain.data.augment import AUGMENTATIONS, build_augmentations
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from cnntrain.errors import ConfigError
from cnntrain.run import train
from tests.conftest import compose_config


def batch(n=6, c=3, size=12):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(0))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_augmentation_keeps_shape_range_and_is_seeded(name):
    [augment] = build_augmentations(
        [{"name": name}]
        if name != "color_jitter"
        else [{"name": name, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4}]
    )
    x = batch()
    first, again, other = augment(x, gen(1)), augment(x, gen(1)), augment(x, gen(2))
    assert first.shape == x.shape and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = batch(n=8)
    out = build_augmentations([{"name": "random_crop", "padding": 2}])[0](x, gen(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = []
    for image, result in zip(padded, out):
        matches = [(t, x) for t in range(5) for x in range(5) if torch.equal(image[:, t : t + 12, x : x + 12], result)]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # each image draws its own offset


def test_flips_with_certainty_and_never():
    x = batch()
    assert torch.equal(build_augmentations([{"name": "hflip", "p": 1.0}])[0](x, gen()), x.flip(-1))
    assert torch.equal(build_augmentations([{"name": "vflip", "p": 1.0}])[0](x, gen()), x.flip(-2))
    assert torch.equal(build_augmentations([{"name": "hflip", "p": 0.0}])[0](x, gen()), x)


def test_zero_strength_geometric_and_colour_augmentations_are_identity():
    x = batch()
    for entry in (
        {"name": "rotation", "degrees": 0},
        {"name": "random_resized_crop", "scale": [1, 1], "ratio": [1, 1]},
        {"name": "color_jitter"},
    ):
        assert torch.allclose(build_augmentations([entry])[0](x, gen()), x, atol=1e-5), entry


def test_bad_entries_are_config_errors():
    with pytest.raises(ConfigError, match="Unknown augmentation 'hfilp'.*Did you mean 'hflip'"):
        build_augmentations(["hfilp"])
    with pytest.raises(ConfigError, match="augmentation 'random_crop' has no setting 'pad'"):
        build_augmentations([{"name": "random_crop", "pad": 4}])
    with pytest.raises(ConfigError, match=r"data.augment\[0\] must be a name or a mapping"):
        build_augmentations([4])


def test_only_the_training_loader_augments_and_it_repeats_per_seed_and_epoch():
    images = (batch(n=10, c=1, size=8) * 255).to(torch.uint8)
    data = ImageSet(images, torch.arange(10))
    transform = BatchTransform(None, None, None, augment=build_augmentations(["hflip", "random_crop"]))

    def epoch(loader, number):
        loader.set_epoch(number)
        return torch.cat([x for x, _ in loader])

    train_a = InMemoryLoader(data, 4, transform, torch.device("cpu"), shuffle=False, seed=1, augment=True)
    train_b = InMemoryLoader(data, 4, transform, torch.device("cpu"), shuffle=False, seed=1, augment=True)
    assert torch.equal(epoch(train_a, 1), epoch(train_b, 1))
    assert not torch.equal(epoch(train_a, 1), epoch(train_a, 2))
    plain = images.float() / 255
    assert not torch.equal(epoch(train_a, 1), plain)
    evaluation = InMemoryLoader(data, 4, transform, torch.device("cpu"))
    assert torch.equal(epoch(evaluation, 1), plain)


def test_augment_from_the_command_line_syntax(tmp_path):
    cfg = compose_config(
        [
            "data=synthetic",
            "trainer.epochs=1",
            "trainer.progress=none",
            "device=cpu",
            "data.augment=[{name:random_crop,padding:4},hflip,{name:rotation,degrees:20}]",
        ]
    )
    summary = train(cfg, run_dir=tmp_path)
    assert summary["status"] == "completed"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["preprocess"]["augment"] == [
        {"name": "random_crop", "padding": 4},
        "hflip",
        {"name": "rotation", "degrees": 20},
    ]


def erased(entry, x, seed=0, value=2.0):
    """Which pixels of each image random_erasing filled (with a value no image pixel has)."""
    [augment] = build_augmentations([{"name": "random_erasing", "value": value, **entry}])
    out = augment(x, gen(seed))
    mask = out == value
    assert torch.equal(out, torch.where(mask, out, x))  # nothing else changed
    assert torch.equal(mask, mask[:, :1].expand_as(mask))  # every channel alike
    return mask[:, 0]


def test_random_erasing_is_seeded_and_p_zero_is_identity():
    x = batch(n=16, size=20)
    assert torch.equal(erased({"p": 0.7}, x, seed=1), erased({"p": 0.7}, x, seed=1))
    assert not torch.equal(erased({"p": 0.7}, x, seed=1), erased({"p": 0.7}, x, seed=2))
    [augment] = build_augmentations([{"name": "random_erasing", "p": 0.0}])
    assert torch.equal(augment(x, gen()), x)


def test_random_erasing_fills_one_rectangle_whose_area_is_within_the_scale_bounds():
    """torchvision's rule: area = share x image, sides sqrt(area x ratio) and sqrt(area / ratio), each
    rounded to whole pixels; so the share erased is within the bounds up to that rounding."""
    size, scale, ratio = 40, (0.05, 0.2), (0.5, 2.0)
    masks = erased({"p": 1.0, "scale": list(scale), "ratio": list(ratio)}, batch(n=64, c=1, size=size))
    for mask in masks:
        rows, cols = mask.nonzero(as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width  # one solid rectangle
        low, high = scale[0] * size**2, scale[1] * size**2
        # each side off by at most half a pixel from sqrt(area * ratio) or sqrt(area / ratio)
        assert (low**0.5 * ratio[0] ** 0.5 - 0.5) * (low**0.5 / ratio[1] ** 0.5 - 0.5) <= len(rows)
        assert len(rows) <= (high**0.5 * ratio[1] ** 0.5 + 0.5) * (high**0.5 / ratio[0] ** 0.5 + 0.5)
        assert ratio[0] * 0.7 <= height / width <= ratio[1] / 0.7
    shares = masks.float().mean(dim=(1, 2))
    assert shares.min() < 0.1 and shares.max() > 0.12  # the shares spread over the range
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 32  # each image its own place


def test_random_erasing_erases_what_torchvision_erases_for_the_same_settings():
    """A square of share 0.09 of a 20x20 image: 6x6 pixels in both, with the default probability 0.5."""
    from torchvision.transforms import v2

    x = batch(n=200, c=3, size=20)
    ours = erased({"scale": [0.09, 0.09], "ratio": [1, 1]}, x).sum(dim=(1, 2))
    theirs = torch.stack(
        [(v2.RandomErasing(scale=(0.09, 0.09), ratio=(1, 1), value=2.0)(image) == 2.0)[0].sum() for image in x]
    )
    assert set(ours.tolist()) == set(theirs.tolist()) == {0, 36}
    assert 0.35 < (ours > 0).float().mean() < 0.65


def test_random_erasing_with_no_rectangle_that_fits_leaves_the_image():
    x = batch(n=4, size=8)
    assert not erased({"p": 1.0, "scale": [1.0, 1.0], "ratio": [1, 1]}, x).any()  # the whole image never fits


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"scale": [0.2, 1.5]}, r"scale must be \[min, max\] with 0 <= min <= max <= 1"),
        ({"scale": [0.3, 0.1]}, r"scale must be \[min, max\]"),
        ({"ratio": [0, 2]}, r"ratio must be \[min, max\] with 0 < min <= max"),
        ({"p": 2}, "p must be a number from 0 to 1, got 2"),
        ({"value": "random"}, r"data.augment\[\].value must be a number, got 'random'"),
    ],
)
def test_bad_random_erasing_settings_are_named(entry, message):
    with pytest.raises(ConfigError, match=message):
        build_augmentations([{"name": "random_erasing", **entry}])
