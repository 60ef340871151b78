"""randaugment, trivialaugment and augmix (data.augment): torchvision's definitions, batched and seeded.

Each batched operation is compared with torchvision.transforms.v2.functional applied to one image
at a time with the same magnitude, on uint8 images as torchvision defines them; each policy's
whole draw likewise; then the draws' statistics, determinism, the settings' messages and a run.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnntrain.data import ImageSet
from cnntrain.data.augment import build_augmentations
from cnntrain.data.augment_ops import (
    AUGMIX_ALL_OPS,
    AUGMIX_OPS,
    OPERATIONS,
    RANDAUGMENT_OPS,
    TRIVIALAUGMENT_OPS,
    Resampling,
)
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from cnntrain.errors import ConfigError
from tests.helpers import run_cli


def reference(image, name, magnitude, interpolation="nearest", fill=None):
    """One uint8 image through torchvision's functional op, as its auto-augment policies call it
    (`_AutoAugmentBase._apply_image_or_video_transform`)."""
    geometry = {"interpolation": interpolation, "fill": fill}
    if name == "Identity":
        return image
    if name in ("ShearX", "ShearY"):
        shear = (
            [math.degrees(math.atan(magnitude)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(magnitude))]
        )
        return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0], **geometry)
    if name in ("TranslateX", "TranslateY"):
        move = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return F.affine(image, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], **geometry)
    if name == "Rotate":
        return F.rotate(image, angle=magnitude, **geometry)
    colour = {
        "Brightness": F.adjust_brightness,
        "Color": F.adjust_saturation,
        "Contrast": F.adjust_contrast,
        "Sharpness": F.adjust_sharpness,
    }
    if name in colour:
        return colour[name](image, 1.0 + magnitude)
    if name == "Posterize":
        return F.posterize(image, bits=int(magnitude))
    if name == "Solarize":
        return F.solarize(image, threshold=255 * magnitude)
    return {"AutoContrast": F.autocontrast, "Equalize": F.equalize}[name](image)


def images(n=24, channels=3, height=20, width=20, seed=0):
    """uint8 images with structure (a gradient, a bright square) and noise, some low-contrast."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, width).view(1, 1, 1, width) * torch.linspace(0.3, 1, height).view(1, 1, height, 1)
    x = ramp * torch.rand(n, channels, 1, 1, generator=g) + 0.3 * torch.rand(n, channels, height, width, generator=g)
    x[:, :, height // 4 : height // 2, width // 3 : width // 2] += 0.5
    x = x * torch.rand(n, 1, 1, 1, generator=g).clamp(min=0.2)  # some images dark, with a narrow range
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def magnitudes_of(name, n, seed=0):
    """Magnitudes the three policies can give operation `name` (every table, both signs), n of them."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for ops, bins in ((RANDAUGMENT_OPS, 31), (TRIVIALAUGMENT_OPS, 31), (AUGMIX_ALL_OPS, 10)):
        for op in ops:
            if op.name == name and op.magnitudes:
                table = op.magnitudes(bins, 20, 20).double()
                values += [*table, *(-table if op.signed else [])]
    if not values:
        return torch.zeros(n, dtype=torch.float64)
    return torch.stack(values)[torch.randint(len(values), (n,), generator=g)].double()


def mismatch(batched, expected):
    """(largest difference, share of values that differ) between two uint8 batches."""
    diff = (batched.int() - expected.int()).abs()
    return int(diff.max()), float((diff > 0).float().mean())


@pytest.mark.parametrize("size", [(20, 20), (16, 24)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_operation_equals_torchvision_per_image(name, channels, size):
    """Exactly equal on the CPU: the same float32 arithmetic in the same order (the blends' fused
    multiply-add, the grid's bmm, rounding before the cast), every pixel of every image."""
    x = images(n=48, channels=channels, height=size[0], width=size[1])
    magnitude = magnitudes_of(name, len(x))
    settings = [("nearest", None), ("bilinear", None), ("nearest", 128), ("bilinear", 128)]
    if name not in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        settings = settings[:1]  # resampling only matters to the geometric operations
    for interpolation, fill in settings:
        batched = OPERATIONS[name](x, magnitude, Resampling(interpolation, fill))
        expected = torch.stack([reference(i, name, float(m), interpolation, fill) for i, m in zip(x, magnitude)])
        assert batched.dtype == torch.uint8 and batched.shape == x.shape
        assert torch.equal(batched, expected), (interpolation, fill, mismatch(batched, expected))
    assert (
        not torch.equal(OPERATIONS[name](x, magnitude, Resampling()), x)
        or name == "Identity"
        or (name == "Color" and channels == 1)
    )


@pytest.mark.parametrize(
    "ours, theirs, bins",
    [
        (RANDAUGMENT_OPS, v2.RandAugment._AUGMENTATION_SPACE, 31),
        (TRIVIALAUGMENT_OPS, v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31),
        (AUGMIX_ALL_OPS, v2.AugMix._AUGMENTATION_SPACE, 10),
        (AUGMIX_OPS, v2.AugMix._PARTIAL_AUGMENTATION_SPACE, 10),
    ],
)
def test_operation_lists_and_magnitude_tables_are_torchvisions(ours, theirs, bins):
    """The lists read off torchvision's classes (private attributes: this test is what notices a change)."""
    assert [op.name for op in ours] == list(theirs)
    for op in ours:
        table, signed = theirs[op.name]
        assert op.signed == signed, op.name
        expected = table(bins, 28, 32)
        assert (op.magnitudes is None) == (expected is None), op.name
        if expected is not None:
            assert torch.equal(op.magnitudes(bins, 28, 32), expected), op.name


def policy_reference(policy, x, draw, interpolation, fill):
    """Each image of a drawn batch through torchvision's functional ops, one at a time."""

    def name(index):
        return policy.ops[index].name if index < len(policy.ops) else "Identity"

    def chain(image, ops, magnitudes):
        for op, magnitude in zip(ops.tolist(), magnitudes.tolist()):
            image = reference(image, name(op), magnitude, interpolation, fill)
        return image

    out = []
    for i, image in enumerate(x):
        if draw.weights is None:
            out.append(chain(image, draw.ops[:, i], draw.magnitudes[:, i]))
            continue
        mix = draw.weights[i, 0] * image  # torchvision's AugMix, for one image
        for c in range(len(draw.ops)):
            mix.add_(draw.weights[i, c + 1] * chain(image, draw.ops[c, :, i], draw.magnitudes[c, :, i]))
        out.append(mix.to(torch.uint8))
    return torch.stack(out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "entry",
    [
        "randaugment",
        {"name": "randaugment", "num_ops": 3, "magnitude": 30, "fill": 0.5},
        "trivialaugment",
        {"name": "trivialaugment", "interpolation": "bilinear", "num_magnitude_bins": 7},
        "augmix",
        {"name": "augmix", "severity": 10, "mixture_width": 2, "chain_depth": 2, "all_ops": False, "alpha": 0.5},
        {"name": "augmix", "interpolation": "nearest", "fill": 1.0},
    ],
)
def test_each_policy_is_torchvision_applied_with_the_drawn_parameters(entry, channels):
    [policy] = build_augmentations([entry])
    x = images(n=40, channels=channels, height=24, width=24, seed=channels)
    draw = policy.draw(len(x), 24, 24, torch.Generator().manual_seed(7))
    settings = entry if isinstance(entry, dict) else {}
    interpolation = settings.get("interpolation", "bilinear" if str(entry).count("augmix") else "nearest")
    fill = None if settings.get("fill") is None else 255.0 * settings["fill"]
    expected = policy_reference(policy, x, draw, interpolation, fill)
    batched = policy.apply_uint8(x, draw)
    assert torch.equal(batched, expected), mismatch(batched, expected)
    # The float batch the loader gives (uint8 / 255) comes back as the same levels / 255.
    assert torch.equal(policy.apply(x.float() / 255, draw), expected.float() / 255)


def test_randaugment_draws_each_operation_equally_at_its_one_magnitude_with_random_signs():
    [policy] = build_augmentations([{"name": "randaugment", "num_ops": 2, "magnitude": 9}])
    draw = policy.draw(7000, 28, 28, torch.Generator().manual_seed(0))
    assert draw.ops.shape == draw.magnitudes.shape == (2, 7000)
    counts = torch.bincount(draw.ops.flatten(), minlength=14)
    assert len(counts) == 14 and counts.min() > 850 and counts.max() < 1150  # 1000 each expected
    table = policy.table(31, 28, 28)[:, 9]
    assert torch.equal(draw.magnitudes.abs(), table[draw.ops])
    assert [round(float(table[i]), 4) for i in (1, 3, 5, 10, 11)] == [
        0.09,
        3.8066,
        9.0,
        7.0,
        0.7,
    ]  # ShearX, TranslateX, Rotate, Posterize bits, Solarize
    signed = policy.signed[draw.ops]
    negative = (draw.magnitudes[signed] < 0).float().mean()
    assert 0.46 < negative < 0.54
    assert (draw.magnitudes[~signed] >= 0).all()


def test_trivialaugment_draws_one_operation_and_a_uniform_magnitude_bin_per_image():
    [policy] = build_augmentations(["trivialaugment"])
    draw = policy.draw(62000, 32, 32, torch.Generator().manual_seed(1))
    assert draw.ops.shape == (1, 62000)
    rotations = draw.magnitudes[draw.ops == 5]  # Rotate: 0 to 135 degrees in 31 bins of 4.5
    bins = torch.bincount((rotations.abs() / 4.5).round().long(), minlength=31)
    assert len(bins) == 31 and bins.min() > 90 and bins.max() < 200  # about 143 each
    assert {90.0, -90.0, 135.0} <= set(rotations.tolist())


def test_augmix_draws_weights_that_sum_to_one_and_chains_of_one_to_three_operations():
    [policy] = build_augmentations([{"name": "augmix", "severity": 3}])
    draw = policy.draw(6000, 32, 32, torch.Generator().manual_seed(2))
    assert draw.weights.shape == (6000, 4) and draw.ops.shape == (3, 3, 6000)
    assert torch.allclose(draw.weights.sum(1), torch.ones(6000), atol=1e-5) and (draw.weights >= 0).all()
    assert 0.48 < float(draw.weights[:, 0].mean()) < 0.52  # the original's share: Beta(1, 1), mean 1/2
    padding = len(policy.ops)
    depth = (draw.ops != padding).sum(1)  # (chains, images)
    assert set(depth.unique().tolist()) == {1, 2, 3}
    assert (draw.ops[:, 0] != padding).all()  # a chain pads only after its operations
    shares = torch.bincount(depth.flatten(), minlength=4)[1:] / depth.numel()
    assert all(0.31 < float(share) < 0.36 for share in shares)
    rotations = draw.magnitudes[draw.ops == 4].abs()  # Rotate: severity 3 keeps bins 0-2 of 10 up to 30 degrees
    assert sorted({round(v, 3) for v in rotations.tolist()}) == [0.0, 3.333, 6.667]


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "augmix"])
def test_policies_repeat_per_seed_for_grey_and_colour(name):
    [policy] = build_augmentations([name])
    for channels in (1, 3):
        x = images(n=16, channels=channels).float() / 255
        first = policy(x, torch.Generator().manual_seed(5))
        assert first.shape == x.shape and first.dtype == torch.float32 and 0 <= first.min() <= first.max() <= 1
        assert torch.equal(first, policy(x, torch.Generator().manual_seed(5)))
        assert not torch.equal(first, policy(x, torch.Generator().manual_seed(6)))
        assert torch.equal(first * 255, (first * 255).round())  # whole levels, as torchvision's uint8 output


def test_a_resumed_pass_continues_the_policies_stream_exactly():
    data = ImageSet(images(n=20, channels=1, height=12, width=12), torch.arange(20) % 4)
    transform = BatchTransform(None, None, None, augment=build_augmentations(["randaugment", "augmix"]))

    def loader():
        made = InMemoryLoader(data, 4, transform, torch.device("cpu"), shuffle=True, seed=3, augment=True)
        made.set_epoch(1)
        return made

    whole, states = [], []
    first = loader()
    for x, _ in first:
        whole.append(x)
        states.append(first.generator.get_state())
    again = loader()
    again.resume_at(2, states[1])  # as a checkpoint taken after the second batch has it
    for x, (x2, _) in zip(whole[2:], again, strict=True):
        assert torch.equal(x, x2)
    assert not torch.equal(whole[0], data.images[first._order(20)[:4]].float() / 255)  # augmented


def test_ops_keeps_only_the_named_operations():
    [policy] = build_augmentations([{"name": "randaugment", "ops": ["rotate", "Contrast"]}])
    assert [op.name for op in policy.ops] == ["Rotate", "Contrast"]
    draw = policy.draw(100, 28, 28, torch.Generator().manual_seed(0))
    assert set(draw.ops.unique().tolist()) == {0, 1}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "randaugment", "magnitude": 31}, r"magnitude must be a whole number from 0 to 30 .*got 31"),
        ({"name": "randaugment", "magnitude": 9, "num_magnitude_bins": 5}, r"from 0 to 4 .*got 9"),
        ({"name": "randaugment", "num_ops": -1}, r"num_ops must be a whole number from 0 to 16 .*got -1"),
        # Bounds on the work per batch: a typo's 100000 bins took 24 GB, 100000 chains minutes per batch.
        ({"name": "randaugment", "num_magnitude_bins": 100000000}, r"num_magnitude_bins must be .* 2 to 1000"),
        ({"name": "augmix", "mixture_width": 100000}, r"mixture_width must be a whole number from 1 to 16 "),
        ({"name": "augmix", "chain_depth": 17}, r"chain_depth must be -1 .* from 1 to 16, got 17"),
        ({"name": "randaugment", "ops": ["Rotat"]}, r"unknown operation 'Rotat' in ops. Did you mean 'Rotate'\?"),
        ({"name": "augmix", "ops": ["Brightness"], "all_ops": False}, r"unknown operation 'Brightness'.*Available: Sh"),
        ({"name": "trivialaugment", "interpolation": "bicubic"}, r"interpolation must be nearest or bilinear"),
        ({"name": "trivialaugment", "fill": 128}, r"fill must be null .* or a pixel value from 0 to 1, got 128"),
        ({"name": "augmix", "severity": 11}, r"severity must be a whole number from 1 to 10, got 11"),
        ({"name": "augmix", "chain_depth": 0}, r"chain_depth must be -1"),
        ({"name": "augmix", "alpha": 0}, r"alpha must be a number above 0, got 0"),
        ({"name": "randaugment", "magnitudes": 9}, r"has no setting 'magnitudes'.*Did you mean 'magnitude'\?"),
        ("randaugmnet", r"Unknown augmentation 'randaugmnet'.*Did you mean 'randaugment'\?"),
    ],
)
def test_bad_settings_are_named(entry, message):
    with pytest.raises(ConfigError, match=message):
        build_augmentations([entry])


def test_a_run_with_randaugment_from_the_command_line(tmp_path):
    args = ("experiment=smoke", "trainer.epochs=1", "trainer.progress=none", "data.train_size=160")
    done = run_cli("python -m cnntrain", *args, "data.test_size=40", "data.augment=[randaugment]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [summary] = tmp_path.glob("outputs/*/*/summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"
    assert "augment:\n  - randaugment\n" in (summary.parent / ".hydra" / "config.yaml").read_text()
    bad = run_cli("python -m cnntrain", *args, "data.augment=[{name: randaugment, magnitude: 40}]", cwd=tmp_path)
    assert bad.returncode == 2
    assert "error: data.augment[0]" in bad.stderr and "magnitude must be a whole number from 0 to 30" in bad.stderr


def test_the_benchmark_script_prints_one_row_per_policy_and_batch_shape(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "augment_policies.py"
    done = subprocess.run(
        [sys.executable, str(script), "--batch", "4", "--repeats", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("CPU: ") and "batch 4" in done.stdout.splitlines()[0]
    rows = [line.split("|")[1:3] for line in done.stdout.splitlines() if line.startswith("| ") and "x" in line]
    assert [(policy.strip(), shape.strip()) for policy, shape in rows] == [
        (policy, shape)
        for policy in ("randaugment", "trivialaugment", "augmix")
        for shape in ("4x1x28x28", "4x3x32x32")
    ]


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "augmix"])
def test_an_empty_batch_comes_back_empty(policy):
    [augmentation] = build_augmentations([policy])
    out = augmentation(torch.rand(0, 3, 16, 16), torch.Generator().manual_seed(0))
    assert out.shape == (0, 3, 16, 16)
