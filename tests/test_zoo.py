"""The model zoo: every registered model trains a step at its native size, the
tutorial models have the parameter counts their layer lists imply (counted by hand
below), the torchvision look-alikes match torchvision, and the inspector reports the
shapes the tutorials print and refuses input sizes that collapse a layer."""

from __future__ import annotations

import inspect
import io
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from cnntrain import inspector
from cnntrain.errors import ConfigError
from cnntrain.models import MODELS, builder_settings, init_weights, model_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "model"

# Forward/backward overrides that keep the test cheap on a 2-core CPU: full-width
# VGG-11 is ~129M parameters; its count is checked by arithmetic below instead.
CHEAP = {"vgg11": {"ratio": 8}}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, in_channels: int = 1, num_classes: int = 10, **overrides) -> torch.nn.Module:
    cfg = model_config(name)
    input_size = overrides.pop("input_size", cfg["input_size"])
    return MODELS.build(
        name,
        {**builder_settings(cfg), **overrides},
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
    )


def build_meta(name: str, **kwargs) -> torch.nn.Module:
    """Build without allocating weights: parameter counts and shapes only."""
    with torch.device("meta"):
        return build(name, **kwargs)


# ---------------------------------------------------------------- configs


def test_every_model_has_a_config_and_every_config_a_model():
    files = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(MODELS.names()) <= files
    for path in CONFIGS.glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("#"), f"{path.name} should start with a one-line comment"
        cfg = yaml.safe_load(text)
        assert cfg["name"] in MODELS, path.name
        assert isinstance(cfg["input_size"], int) and cfg["input_size"] > 0
        MODELS.check_settings(cfg["name"], builder_settings(cfg))  # raises on unknown keys


# ---------------------------------------------------------------- training step


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward_at_native_size(name, in_channels):
    torch.manual_seed(0)
    cfg = model_config(name)
    size = cfg["input_size"]
    model = MODELS.build(
        name, {**builder_settings(cfg), **CHEAP.get(name, {})}, num_classes=10, in_channels=in_channels, input_size=size
    )
    init_weights(model, cfg.get("init", "default"))
    model.train()
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


def test_builders_follow_the_contract():
    for name in MODELS.names():
        params = inspect.signature(MODELS.get(name)).parameters
        for arg in ("num_classes", "in_channels", "input_size"):
            assert params[arg].default is not inspect.Parameter.empty, f"{name}.{arg} has no default"
        assert MODELS.get(name).__doc__, f"{name} has no docstring"


# ---------------------------------------------------------------- parameter counts by hand


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cout * cin * k * k + (cout if bias else 0)


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers


def lenet_count() -> int:
    return conv(1, 6, 5) + conv(6, 16, 5) + linear(16 * 5 * 5, 120) + linear(120, 84) + linear(84, 10)


def lenet_bn_count() -> int:
    # No padding on the first conv: 28 -> 24 -> 12 -> 8 -> 4, so 16*4*4 = 256 features.
    return (
        conv(1, 6, 5)
        + bn(6)
        + conv(6, 16, 5)
        + bn(16)
        + linear(16 * 4 * 4, 120)
        + bn(120)
        + linear(120, 84)
        + bn(84)
        + linear(84, 10)
    )


def alexnet_convs(cin: int = 1) -> int:
    return conv(cin, 96, 11) + conv(96, 256, 5) + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)


def alexnet_count() -> int:
    # 224 -> 54 (conv 11/4/1) -> 26 -> 12 -> 5 after three 3/2 pools: 256*5*5 = 6400.
    return alexnet_convs() + linear(6400, 4096) + linear(4096, 4096) + linear(4096, 10)


def alexnet_small_count() -> int:
    return alexnet_convs() + linear(6400, 4096) + linear(4096, 10)


def vgg_count(ratio: int) -> int:
    widths = [
        64 // ratio,
        128 // ratio,
        256 // ratio,
        256 // ratio,
        512 // ratio,
        512 // ratio,
        512 // ratio,
        512 // ratio,
    ]
    convs = sum(conv(cin, cout, 3) for cin, cout in zip([1] + widths[:-1], widths))
    # Five 2x2 pools: 224 -> 7. The hidden linears stay 4096 wide whatever the ratio.
    return convs + linear(widths[-1] * 7 * 7, 4096) + linear(4096, 4096) + linear(4096, 10)


def nin_count() -> int:
    def block(cin, cout, k):
        return conv(cin, cout, k) + 2 * conv(cout, cout, 1)

    return block(1, 96, 11) + block(96, 256, 5) + block(256, 384, 3) + block(384, 10, 3)


def googlenet_count() -> int:
    def inception(cin, c1, c2, c3, c4):
        return (
            conv(cin, c1, 1)
            + conv(cin, c2[0], 1)
            + conv(c2[0], c2[1], 3)
            + conv(cin, c3[0], 1)
            + conv(c3[0], c3[1], 5)
            + conv(cin, c4, 1)
        )

    blocks = [
        (192, 64, (96, 128), (16, 32), 32),
        (256, 128, (128, 192), (32, 96), 64),
        (480, 192, (96, 208), (16, 48), 64),
        (512, 160, (112, 224), (24, 64), 64),
        (512, 128, (128, 256), (24, 64), 64),
        (512, 112, (144, 288), (32, 64), 64),
        (528, 256, (160, 320), (32, 128), 128),
        (832, 256, (160, 320), (32, 128), 128),
        (832, 384, (192, 384), (48, 128), 128),
    ]
    stem = conv(1, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    return stem + sum(inception(*b) for b in blocks) + linear(1024, 10)


def resnet18_count(cin: int = 1, classes: int = 10, conv_bias: bool = False, shortcut_bn: bool = True) -> int:
    def residual(c_in, c_out):
        n = conv(c_in, c_out, 3, conv_bias) + bn(c_out) + conv(c_out, c_out, 3, conv_bias) + bn(c_out)
        if c_in != c_out:  # projection shortcut
            n += conv(c_in, c_out, 1, conv_bias) + (bn(c_out) if shortcut_bn else 0)
        return n

    stem = conv(cin, 64, 7, conv_bias) + bn(64)
    stages = sum(residual(a, b) + residual(b, b) for a, b in [(64, 64), (64, 128), (128, 256), (256, 512)])
    return stem + stages + linear(512, classes)


def cifar_cnn_count(cin: int = 3) -> int:
    # 32 -> 16 -> 8 -> 4 after three pools: 64*4*4 = 1024.
    return conv(cin, 16, 3) + conv(16, 32, 3) + conv(32, 64, 3) + linear(1024, 512) + linear(512, 10)


def test_hand_counts_match_the_tutorials_totals():
    assert lenet_count() == 61_706
    assert alexnet_count() == 46_764_746
    assert resnet18_count(3, 1000) == 11_689_512


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("lenet", {}, lenet_count()),
        ("lenet_classic", {}, lenet_count()),  # 32 -> 28 -> 14 -> 10 -> 5: the same 400 features
        ("lenet_bn", {}, lenet_bn_count()),
        ("mlp", {}, linear(784, 256) + linear(256, 128) + linear(128, 10)),
        ("softmax", {}, linear(784, 10)),
        ("alexnet", {}, alexnet_count()),
        ("alexnet_small", {}, alexnet_small_count()),
        ("vgg", {}, vgg_count(4)),
        ("vgg11", {}, vgg_count(1)),
        ("nin", {}, nin_count()),
        ("googlenet", {}, googlenet_count()),
        ("resnet18", {}, resnet18_count()),
        ("resnet18", {"conv_bias": True, "shortcut_bn": False}, resnet18_count(conv_bias=True, shortcut_bn=False)),
        # 3x3 stem + BN; one block per stage (the 2nd and 3rd with a 1x1 projection + BN); fc.
        (
            "resnet_small",
            {},
            (9 * 32 + 64)
            + 2 * (9 * 32 * 32 + 64)
            + (9 * 32 * 64 + 128 + 9 * 64 * 64 + 128 + 32 * 64 + 128)
            + (9 * 64 * 128 + 256 + 9 * 128 * 128 + 256 + 64 * 128 + 256)
            + linear(128, 10),
        ),
        # 3x3 stem + BN; per block conv (BN) conv (BN), each BN 2 x channels; bias-free fc.
        (
            "airnet",
            {},
            (9 * 32 + 64)
            + (9 * 32 * 32 + 64 + 9 * 32 * 32 + 64)
            + (9 * 32 * 64 + 128 + 9 * 64 * 64 + 128)
            + (9 * 64 * 128 + 256 + 9 * 128 * 128 + 256)
            + 128 * 10,
        ),
        (
            "airnet",
            {"stem": 16, "widths": [8, 16]},
            (9 * 16 + 32) + (9 * 16 * 8 + 16 + 9 * 8 * 8 + 16) + (9 * 8 * 16 + 32 + 9 * 16 * 16 + 32) + 16 * 10,
        ),
        ("cifar_cnn", {"in_channels": 3}, cifar_cnn_count(3)),
        ("cifar_cnn", {"in_channels": 1}, cifar_cnn_count(1)),
    ],
)
def test_parameter_count_by_hand(name, kwargs, expected):
    assert count(build_meta(name, **kwargs)) == expected


@pytest.mark.parametrize("name, reference", [("alexnet_tv", "alexnet"), ("resnet18", "resnet18")])
def test_torchvision_lookalikes_have_torchvision_parameter_counts(name, reference):
    import torchvision  # only these tests need it

    with torch.device("meta"):
        expected = count(getattr(torchvision.models, reference)(num_classes=1000))
        ours = MODELS.build(name, num_classes=1000, in_channels=3, input_size=224)
    assert count(ours) == expected


def test_classifier_width_follows_input_size():
    # Size-dependent flatten layers are computed, not hard-coded: other sizes work.
    for name, size in [("alexnet", 100), ("alexnet_small", 160), ("vgg", 64), ("cifar_cnn", 64), ("lenet_bn", 32)]:
        model = build_meta(name, input_size=size)
        inspector.check_input_size(model, 1, size)
        assert inspector.layer_table(model, (1, size, size))[-1].output_shape == (10,)


def test_vgg_settings_from_yaml_and_errors():
    arch = OmegaConf.create({"arch": [[1, 32], [2, 64]]}).arch  # a ListConfig, as Hydra passes it
    with torch.device("meta"):
        model = MODELS.build("vgg", {"arch": arch, "ratio": 2}, input_size=32)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 32, 32]
    assert model.classifier[0].in_features == 32 * 8 * 8
    with pytest.raises(ConfigError, match="ratio"):
        MODELS.build("vgg", {"ratio": 0})
    with pytest.raises(ConfigError, match="num_convs, channels"):
        MODELS.build("vgg", {"arch": [[1, 64, 3]]})
    with pytest.raises(ConfigError, match="smaller ratio"):
        MODELS.build("vgg", {"arch": [[1, 4]], "ratio": 8})


# ---------------------------------------------------------------- inspector


# What the book prints for its AlexNet on a 1x224x224 image (batch dimension dropped).
ALEXNET_SHAPES = [
    ("Conv2d", (96, 54, 54)),
    ("ReLU", (96, 54, 54)),
    ("MaxPool2d", (96, 26, 26)),
    ("Conv2d", (256, 26, 26)),
    ("ReLU", (256, 26, 26)),
    ("MaxPool2d", (256, 12, 12)),
    ("Conv2d", (384, 12, 12)),
    ("ReLU", (384, 12, 12)),
    ("Conv2d", (384, 12, 12)),
    ("ReLU", (384, 12, 12)),
    ("Conv2d", (256, 12, 12)),
    ("ReLU", (256, 12, 12)),
    ("MaxPool2d", (256, 5, 5)),
    ("Flatten", (6400,)),
    ("Linear", (4096,)),
    ("ReLU", (4096,)),
    ("Dropout", (4096,)),
    ("Linear", (4096,)),
    ("ReLU", (4096,)),
    ("Dropout", (4096,)),
    ("Linear", (10,)),
]


def test_layer_table_shows_the_tutorials_alexnet_shapes():
    model = build("alexnet")
    rows = inspector.layer_table(model, (1, 224, 224))
    assert [(r.type, r.output_shape) for r in rows if r.is_leaf] == ALEXNET_SHAPES
    by_name = {r.name: r for r in rows}
    assert by_name["features.0"].params == conv(1, 96, 11)
    assert by_name["features"].output_shape == (256, 5, 5) and not by_name["features"].is_leaf
    assert by_name["classifier"].params == linear(6400, 4096) + linear(4096, 4096) + linear(4096, 10)
    # The inspector leaves the model as it found it: training mode, real weights.
    assert model.training and next(model.parameters()).device.type == "cpu"


def test_totals_count_params_macs_and_activations():
    model = build_meta("alexnet")
    rows = inspector.layer_table(model, (1, 224, 224))
    one = inspector.model_totals(model, (1, 224, 224), rows, batch_size=1)
    assert one.params == one.trainable_params == alexnet_count()
    assert one.output_shape == (10,)
    conv_macs = (
        96 * 54 * 54 * 1 * 11 * 11
        + 256 * 26 * 26 * 96 * 5 * 5
        + 384 * 12 * 12 * 256 * 9
        + 384 * 12 * 12 * 384 * 9
        + 256 * 12 * 12 * 384 * 9
    )
    assert one.macs == conv_macs + 6400 * 4096 + 4096 * 4096 + 4096 * 10
    # Every leaf output except Flatten's view, float32.
    leaf_numel = sum(torch.Size(s).numel() for t, s in ALEXNET_SHAPES if t != "Flatten")
    assert one.activation_bytes == leaf_numel * 4
    assert inspector.model_totals(model, (1, 224, 224), rows, batch_size=128).activation_bytes == 128 * leaf_numel * 4


def test_layer_table_blocks_and_repeated_modules():
    rows = {r.name: r for r in inspector.layer_table(build("googlenet"), (1, 96, 96))}
    assert (rows["b3.0"].type, rows["b3.0"].output_shape) == ("Inception", (256, 12, 12))
    assert rows["b5"].output_shape == (1024,)
    assert rows["b3.0"].macs == sum(r.macs for n, r in rows.items() if n.startswith("b3.0.") and r.is_leaf)

    shared = torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), shared, torch.nn.Linear(4, 4), shared)
    rows = inspector.layer_table(model, (1, 1, 4))
    assert [r.name for r in rows] == ["0", "1", "2"]
    assert rows[1].calls == 2


def test_render_table():
    model = build("lenet")
    rows = inspector.layer_table(model, (1, 28, 28))
    table = inspector.render_table(
        rows, inspector.model_totals(model, (1, 28, 28), rows, batch_size=256), title="lenet"
    )
    assert isinstance(table, Table)
    console = Console(file=io.StringIO(), width=120)
    console.print(table)
    text = console.file.getvalue()
    assert "Conv2d" in text and "6x28x28" in text and "61,706" in text and "batch 256" in text


def number_cells(table: Table) -> list[str]:
    """Every non-empty cell of the number columns (output shape, parameters, MACs, memory) of a layer table."""
    return [
        cell for column in table.columns if column.header in inspector.NUMBER_COLUMNS for cell in column._cells if cell
    ]


@pytest.mark.parametrize(
    "name, size", [("resnet18", 96), pytest.param("googlenet", 96, marks=pytest.mark.slow), ("lenet", 28)]
)
def test_a_layer_table_fits_any_width_and_never_cuts_a_number(name, size):
    """Rich on its own squeezed every column at 80 columns ("Pa…", "19…", "32… MiB"): numbers are kept whole."""
    model = build(name)
    rows = inspector.layer_table(model, (1, size, size))
    table = inspector.render_table(
        rows, inspector.model_totals(model, (1, size, size), rows, batch_size=256), title=name
    )
    numbers = number_cells(table)
    assert "7.23 M" in numbers or name == "lenet"
    for width in (120, 80, 60, 50, 45):
        console = Console(file=io.StringIO(), width=width)
        console.print(table)
        lines = console.file.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width
        # Each number whole, on one line (the lines of a row are never wrapped apart), in the rows' order.
        found = [
            next((i for i, line in enumerate(lines) if re.search(rf"(^|\s){re.escape(cell)}(\s|$)", line)), None)
            for cell in numbers
        ]
        assert None not in found, (width, [cell for cell, i in zip(numbers, found) if i is None])
        assert not any(line.rstrip(" │┃").endswith("…") for line in lines), width  # no number column cut


def test_long_layer_names_are_shortened_in_the_middle():
    assert inspector.shorten_middle("encoder.layers.encoder_layer_11.mlp.0", 22) == "encoder…layer_11.mlp.0"
    assert inspector.shorten_middle("encoder.layers.encoder_layer_11.mlp.0", 12) == "…er_11.mlp.0"  # its end
    assert inspector.shorten_middle("features.0", 22) == "features.0"


def test_a_layer_table_at_its_natural_width_is_unchanged():
    model = build("lenet")
    rows = inspector.layer_table(model, (1, 28, 28))
    table = inspector.render_table(rows, inspector.model_totals(model, (1, 28, 28), rows, batch_size=256))
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    assert "Conv2d" in console.file.getvalue() and "…" not in console.file.getvalue()


@pytest.mark.parametrize("built_at", [224, 28])
def test_check_input_size_names_the_collapsing_layer(built_at):
    # Built at 224 and fed 28 (a data.resize override), or built at 28 (model.input_size
    # override): either way the third pool gets a 2x2 map and its 3x3 window does not fit.
    model = build("alexnet", input_size=built_at)
    with pytest.raises(ConfigError) as err:
        inspector.check_input_size(model, 1, 28, native_size=224)
    message = str(err.value)
    assert "features.5 (MaxPool2d)" in message
    assert "Input size 28" in message
    # 65 -> 15 -> 7 -> 7 -> 3 -> 3 -> 1: the smallest size all three pools accept.
    assert "smallest input size that works is 65" in message
    assert "data.resize=65" in message and "224" in message


def test_smallest_input_size():
    assert inspector.smallest_input_size(build_meta("alexnet"), 1) == 65
    assert inspector.smallest_input_size(build_meta("vgg"), 1) == 32  # five 2x2 pools
    assert inspector.smallest_input_size(build_meta("lenet_bn"), 1) == 16


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", MODELS.names())
def test_check_input_size_passes_at_native_size(name, in_channels):
    cfg = model_config(name)
    model = build_meta(name, in_channels=in_channels)
    inspector.check_input_size(model, in_channels, cfg["input_size"])


def test_check_input_size_other_failures():
    model = build_meta("alexnet")
    with pytest.raises(ConfigError, match="not only a size problem"):
        inspector.check_input_size(model, 3, 224)  # built for 1 channel
    with pytest.raises(ConfigError, match="built for another input size"):
        inspector.check_input_size(model, 1, 100)  # classifier sized for 224
    with pytest.raises(ConfigError, match="positive"):
        inspector.check_input_size(model, 1, 0)


def test_airnet_head_scales_logits_and_takes_any_size_from_8_pixels():
    torch.manual_seed(0)
    model = MODELS.build("airnet", {"logit_scale": 0.25}, num_classes=7, in_channels=3).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model[:-1](images)  # everything before the head: (2, 128) after the global max-pool
        assert features.shape == (2, 128)
        assert torch.allclose(model(images), features @ model.fc.weight.T * 0.25)
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 7)
    with pytest.raises(ConfigError, match="model.widths must be a list of positive whole numbers"):
        MODELS.build("airnet", {"widths": [32, 0]})
