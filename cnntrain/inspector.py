"""Look inside a model without training it: per-layer output shapes, parameter and
multiply-add counts, activation memory, and an input-size check with a useful error.

Everything here pushes a single image through the model with forward hooks, the way
the tutorials print "<layer> output shape: ..." after each layer. The forward runs on
PyTorch's 'meta' device, which computes shapes (and raises the same size errors as a
real run) without allocating or computing anything, so even VGG-11 at 224x224 costs a
fraction of a second and no memory. Should a layer lack a meta implementation, the same forward is
repeated for real on the model's own device with a batch of one.

Public API: `layer_table`, `model_totals`, `render_table`, `check_input_size`,
`smallest_input_size`; they return plain data (plus a rich Table) for the
`cnntrain-info` command to print.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.cells import cell_len
from rich.markup import escape
from rich.table import Table
from torch import nn
from torch.func import functional_call
from torch.nn.modules.conv import _ConvNd

from cnntrain.errors import ConfigError, first_line

# Largest side `check_input_size` tries when looking for a size that works.
MAX_SEARCH_SIZE = 512


@dataclass(frozen=True)
class LayerRow:
    """One module's part in a forward pass of a single image.

    `params` and `macs` cover the module's whole subtree, so for a block (a Sequential,
    an Inception, a Residual) they are subtotals of the rows below it; sum leaf rows
    only (`is_leaf`) to get model totals. `output_shape` has no batch dimension.
    """

    name: str  # dotted path as in `model.named_modules()`, e.g. "features.5"
    type: str  # class name, e.g. "MaxPool2d"
    output_shape: tuple[int, ...]
    params: int
    macs: int  # multiply-adds per image (Conv and Linear layers; summed over calls)
    output_bytes: int  # bytes of this module's outputs for one image (summed over calls;
    # 0 for layers that return a view of their input: Identity, Flatten, in-place ops)
    depth: int  # 0 for the model's direct children
    is_leaf: bool
    calls: int = 1  # how many times the forward called it (a shared module runs twice)


@dataclass(frozen=True)
class ModelTotals:
    """Whole-model numbers for one input size."""

    input_shape: tuple[int, int, int]  # (channels, height, width)
    output_shape: tuple[int, ...]  # per image, e.g. (10,)
    params: int
    trainable_params: int
    macs: int  # multiply-adds per image in Conv and Linear layers (FLOPs are about twice this)
    batch_size: int
    activation_bytes: int  # leaf outputs of one forward pass of `batch_size` images


# --------------------------------------------------------------------------- tracing


@dataclass
class _Record:
    name: str
    module: nn.Module
    depth: int
    is_leaf: bool
    output_shape: tuple[int, ...] = ()
    macs: int = 0
    output_bytes: int = 0
    calls: int = 0


@dataclass
class _Failure:
    """Where a forward pass went wrong."""

    name: str  # module path; "" when the error came from the top-level forward itself
    type: str
    input_shape: tuple[int, ...]  # per image, of the failing module's first tensor input
    message: str  # first line of PyTorch's error, or a description of the empty output
    mismatch: bool  # a Linear got the wrong number of features: the model was built for
    # another input size. Rebuilding it at this size would fix it, so size searches
    # treat it as "the convolutional part fits".


@dataclass
class _Trace:
    records: list[_Record] = field(default_factory=list)  # in order of first call
    output_shape: tuple[int, ...] = ()
    failure: _Failure | None = None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds for one image (the trace runs a batch of one), biases not counted."""
    if isinstance(module, _ConvNd):
        # Each output element is a dot product over (in_channels / groups) x kernel window.
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _returns_view(module: nn.Module) -> bool:
    """Layers whose output shares its input's memory (so it costs no activation memory)."""
    return isinstance(module, (nn.Identity, nn.Flatten, nn.Unflatten)) or getattr(module, "inplace", False) is True


def _meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Shape-only stand-ins for every parameter and buffer (no memory, no copy)."""
    named = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    return {name: torch.empty_like(t, device="meta") for name, t in named}


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _trace(model: nn.Module, input_shape: Sequence[int], meta: bool = True) -> _Trace:
    """Run one image of shape (C, H, W) through `model` with hooks on every submodule.

    Errors raised by the forward are caught and reported in `_Trace.failure`, naming the
    innermost module that was running, so callers decide what is fatal.
    """
    device, dtype = _model_device_dtype(model)
    if meta:
        device = torch.device("meta")
    trace = _Trace()
    records: dict[nn.Module, _Record] = {}
    running: list[tuple[_Record, tuple[int, ...]]] = []  # modules entered, not yet left
    handles = []

    def on_enter(module: nn.Module, args: tuple) -> None:
        record = records[module]
        if record.calls == 0:
            trace.records.append(record)
        record.calls += 1
        first = _first_tensor(args)
        running.append((record, tuple(first.shape[1:]) if first is not None else ()))

    def on_exit(module: nn.Module, args: tuple, output: Any) -> None:
        record, in_shape = running.pop()
        out = _first_tensor(output)
        if out is None:
            return
        if record.calls == 1:
            record.output_shape = tuple(out.shape[1:])
        if record.is_leaf:
            record.macs += _macs(module, out)
            if not _returns_view(module):
                record.output_bytes += out.numel() * out.element_size()
        # Some layers return an empty tensor instead of raising; the first one to do so
        # is where the image became too small.
        if trace.failure is None and out.numel() == 0:
            trace.failure = _Failure(
                record.name,
                type(module).__name__,
                in_shape,
                f"output shape {_fmt_shape(tuple(out.shape[1:]))} is empty",
                mismatch=False,
            )

    modes = {m: m.training for m in model.modules()}
    retry_for_real = False
    try:
        for name, module in model.named_modules():
            if module is model:
                continue
            is_leaf = next(module.children(), None) is None
            records[module] = _Record(name, module, name.count("."), is_leaf)
            handles.append(module.register_forward_pre_hook(on_enter))
            handles.append(module.register_forward_hook(on_exit))
        # Eval mode: BatchNorm1d refuses a batch of one in training mode, and dropout
        # is irrelevant to shapes.
        model.eval()
        x = torch.zeros((1, *input_shape), device=device, dtype=dtype)
        with torch.no_grad():
            try:
                if meta:
                    out = functional_call(model, _meta_state(model), (x,))
                else:
                    out = model(x)
                first = _first_tensor(out)
                trace.output_shape = tuple(first.shape[1:]) if first is not None else ()
            except NotImplementedError:
                if not meta:
                    raise
                retry_for_real = True  # an op without a meta kernel: redo it on real tensors
            except Exception as err:  # noqa: BLE001 - any failure is reported, with its layer
                if meta and "meta" in str(err).lower():
                    # Data-dependent code (`.item()`, `.tolist()`) cannot run on shapes
                    # alone: redo it on real tensors.
                    retry_for_real = True
                elif trace.failure is None:
                    if running:
                        record, in_shape = running[-1]
                        culprit, type_name = record.name, type(record.module).__name__
                    else:
                        culprit, type_name, in_shape = "", type(model).__name__, tuple(input_shape)
                    mismatch = bool(running) and isinstance(running[-1][0].module, nn.Linear)
                    text = first_line(err)
                    trace.failure = _Failure(culprit, type_name, in_shape, text, mismatch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    if retry_for_real:
        return _trace(model, input_shape, meta=False)
    return trace


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


# --------------------------------------------------------------------------- tables


def _normalise_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:  # (batch, C, H, W): the batch does not matter here
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[LayerRow]:
    """One row per submodule the forward pass uses, in the order they first run.

    `input_shape` is (channels, height, width) of one image. Raises `ConfigError` when
    the image does not fit through the model (see `check_input_size`).
    """
    shape = _normalise_shape(input_shape)
    trace = _trace(model, shape)
    if trace.failure is not None:
        raise _size_error(model, shape[0], shape[1:], trace.failure)
    # A block's MACs are the sum over its subtree: add each leaf's to every enclosing block.
    subtree_macs: dict[str, int] = {}
    for record in trace.records:
        if record.is_leaf:
            for prefix in _ancestors(record.name):
                subtree_macs[prefix] = subtree_macs.get(prefix, 0) + record.macs
    rows = []
    for record in trace.records:
        params = sum(p.numel() for p in record.module.parameters())
        rows.append(
            LayerRow(
                name=record.name,
                type=type(record.module).__name__,
                output_shape=record.output_shape,
                params=params,
                macs=record.macs if record.is_leaf else subtree_macs.get(record.name, 0),
                output_bytes=record.output_bytes,
                depth=record.depth,
                is_leaf=record.is_leaf,
                calls=record.calls,
            )
        )
    return rows


def _ancestors(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b'] (the blocks containing module 'a.b.c')."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def model_totals(
    model: nn.Module, input_shape: Sequence[int], rows: Sequence[LayerRow] | None = None, batch_size: int = 1
) -> ModelTotals:
    """Parameters, multiply-adds per image and forward activation memory for `batch_size`.

    The activation figure adds up every leaf module's output except views of the input
    (Identity, Flatten, in-place layers): roughly what a training step keeps alive for
    the backward pass (autograd also saves some inputs and masks), not counting weights,
    gradients or optimizer state.
    """
    shape = _normalise_shape(input_shape)
    if rows is None:
        rows = layer_table(model, shape)
    leaves = [row for row in rows if row.is_leaf]
    output_shape = _trace(model, shape).output_shape
    return ModelTotals(
        input_shape=shape,
        output_shape=output_shape,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(row.macs for row in leaves),
        batch_size=batch_size,
        activation_bytes=sum(row.output_bytes for row in leaves) * batch_size,
    )


def _human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()


def _bytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


NUMBER_COLUMNS = ("Output shape", "Params", "MACs")
MIN_NAME_WIDTH = 8  # below this a layer name says too little; the Type column goes first
MIN_TYPE_WIDTH = 8


def render_table(
    rows: Sequence[LayerRow], totals: ModelTotals, title: str | None = None, max_depth: int | None = None
) -> Table:
    """A `rich.table.Table` of the rows (blocks in bold, children indented) and totals.

    `max_depth` hides rows nested deeper than that (0 shows only the model's direct
    children, as the tutorials print for GoogLeNet and ResNet). The table fits the width it is
    printed at (`LayerTable`): numbers are never cut; long layer names are shortened in the middle.
    """
    cells = []
    for row in rows:
        if max_depth is not None and row.depth > max_depth:
            continue
        block = not row.is_leaf and (max_depth is None or row.depth < max_depth)
        suffix = f" (x{row.calls})" if row.calls > 1 else ""
        cells.append(
            _Cells(
                row.name,
                row.depth,
                suffix,
                row.type,
                _fmt_shape(row.output_shape),
                f"{row.params:,}" if row.params else "",
                _human(row.macs) if row.macs else "",
                "bold" if block else None,
            )
        )
    c, h, w = totals.input_shape
    footer = [_Cells("Input", 0, "", "", f"{c}x{h}x{w}", "", "")]
    footer.append(
        _Cells("Total", 0, "", "", _fmt_shape(totals.output_shape), f"{totals.params:,}", _human(totals.macs), "bold")
    )
    if totals.trainable_params != totals.params:
        footer.append(_Cells("Trainable", 0, "", "", "", f"{totals.trainable_params:,}", ""))
    footer.append(_Cells(f"Activations, batch {totals.batch_size}", 0, "", "", "", _bytes(totals.activation_bytes), ""))
    footer.append(_Cells("Parameter memory (fp32)", 0, "", "", "", _bytes(totals.params * 4), ""))
    return LayerTable(cells, footer, title)


@dataclass(frozen=True)
class _Cells:
    """One line of the layer table, before it is fitted to a width."""

    name: str
    depth: int
    suffix: str  # " (x2)" for a module the forward called twice
    type: str
    shape: str
    params: str
    macs: str
    style: str | None = None

    def layer(self, width: int | None = None) -> str:
        """The indented name (with its suffix), shortened in the middle to `width` characters."""
        if width is None:
            return "  " * self.depth + self.name + self.suffix
        room = width - len(self.suffix)
        unit = 2 if room >= 24 else 1 if room >= 14 else 0  # a narrow column indents less, alike at every depth
        indent = " " * min(unit * self.depth, max(0, room - MIN_NAME_WIDTH))
        return indent + shorten_middle(self.name, room - len(indent)) + self.suffix


def shorten_middle(text: str, width: int) -> str:
    """`text` in at most `width` characters, a third from its start and the rest from its end around an
    ellipsis: a layer's path keeps its top block and its own name (encoder…layer_11.mlp.0); under 16
    characters only its end (…layer_11.mlp.0)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[-max(width, 0) :] if width > 0 else ""
    head = (width - 1) // 3 if width >= 16 else 0
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


class LayerTable(Table):
    """`render_table`'s table, which fits the width it is printed at.

    At its natural width it is an ordinary table. Narrower, the number columns (output shape,
    parameters, multiply-adds, memory) keep their full width, never cut or wrapped; the room
    left goes to the Type column (shortened with an ellipsis, down to MIN_TYPE_WIDTH, then
    dropped) and to the layer names, shortened in the middle (`shorten_middle`). Rich on its
    own squeezes every column alike, numbers included ("19…", "32… MiB")."""

    def __init__(self, cells: list[_Cells], footer: list[_Cells], title: str | None):
        super().__init__(title=title, title_justify="left")
        self._cells, self._footer = cells, footer
        _fill(self, cells, footer, layer_width=None, type_width=None)

    def __rich_console__(self, console, options):
        yield from Table.__rich_console__(self._fitted(console, options), console, options)

    def __rich_measure__(self, console, options):
        return Table.__rich_measure__(self._fitted(console, options), console, options)

    def _fitted(self, console, options) -> Table:
        """This table, or a copy narrowed to options.max_width as the class docstring says."""
        width = options.max_width
        natural = self._width(self, console, options)
        if natural <= width:
            return self
        widths = {
            column.header: max(cell_len(str(column.header)), *(cell_len(c) for c in column._cells))
            for column in self.columns
        }
        room = width - (natural - sum(widths.values())) - sum(widths[name] for name in NUMBER_COLUMNS)
        # The footer's labels ("Parameter memory (fp32)") wrap: only the layer names count, and the longest word.
        longest_name = max([cell_len(line.layer()) for line in self._cells] + [len("Activations,")])
        # The names first, up to a readable width; the Type column takes what is left, or goes.
        name_target = min(longest_name, max(3 * MIN_NAME_WIDTH, room - widths["Type"]))
        type_width = min(widths["Type"], max(MIN_TYPE_WIDTH, room - name_target))
        if room - type_width < MIN_NAME_WIDTH:
            type_width = None
        fitted = None
        for plain in (False, True):  # then without borders: each one is a character numbers can have
            layer_width = max(1, room - (type_width or 0))
            for _ in range(3):  # the freed border and padding of a left-out column give the names more room
                fitted = self._narrowed(layer_width, type_width, plain)
                excess = self._width(fitted, console, options) - width
                if excess == 0 or (excess > 0 and layer_width == 1):
                    break
                layer_width = max(1, layer_width - excess)
            if excess <= 0 and layer_width >= MIN_NAME_WIDTH:
                return fitted
        return fitted  # narrower than the numbers themselves: the terminal cuts the lines

    def _narrowed(self, layer_width: int, type_width: int | None, plain: bool) -> Table:
        table = Table(title=self.title, title_justify="left", **(dict(box=None, pad_edge=False) if plain else {}))
        _fill(table, self._cells, self._footer, layer_width, type_width)
        return table

    @staticmethod
    def _width(table: Table, console, options) -> int:
        """The width `table` takes when nothing limits it."""
        return Table.__rich_measure__(table, console, options.update(max_width=10**6)).maximum


def _fill(
    table: Table, cells: list[_Cells], footer: list[_Cells], layer_width: int | None, type_width: int | None
) -> None:
    """The columns and rows of a layer table: names shortened to `layer_width` (None: in full), the Type
    column `type_width` wide (None with a `layer_width`: left out)."""
    narrowed = layer_width is not None
    show_type = not narrowed or type_width is not None
    # Footer labels ("Parameter memory (fp32)") wrap in a narrowed Layer column; layer names never do.
    table.add_column("Layer", no_wrap=not narrowed, width=layer_width)
    if show_type:
        table.add_column("Type", no_wrap=narrowed, overflow="ellipsis", width=type_width)
    for header in NUMBER_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for line in cells:
        type_cell = [escape(line.type)] if show_type else []
        table.add_row(escape(line.layer(layer_width)), *type_cell, line.shape, line.params, line.macs, style=line.style)
    table.add_section()
    for line in footer:
        type_cell = [""] if show_type else []
        table.add_row(line.name, *type_cell, line.shape, line.params, line.macs, style=line.style)


# --------------------------------------------------------------------------- size check


def _fits(model: nn.Module, in_channels: int, size: int) -> bool:
    """Whether an image of side `size` gets through the model's layers.

    A Linear that receives the wrong number of features counts as fitting: builders
    size their classifier from `input_size`, so a model rebuilt at `size` would work.
    """
    failure = _trace(model, (in_channels, size, size)).failure
    return failure is None or failure.mismatch


def smallest_input_size(
    model: nn.Module, in_channels: int, start: int = 1, max_size: int = MAX_SEARCH_SIZE
) -> int | None:
    """Smallest square input side in [start, max_size] that fits, or None.

    Uses bisection: output sides of convs and pools never shrink as the input grows,
    so once a size fits every larger one does too.
    """
    start = max(start, 1)
    if start > max_size or not _fits(model, in_channels, max_size):
        return None
    lo, hi = start, max_size  # hi always fits
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(model, in_channels, mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _where(failure: _Failure) -> str:
    return f"{failure.name} ({failure.type})" if failure.name else f"the model's forward ({failure.type})"


def _size_error(
    model: nn.Module,
    in_channels: int,
    input_size: Sequence[int] | int,
    failure: _Failure,
    native_size: int | None = None,
) -> ConfigError:
    sides = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    given = f"{sides[0]}x{sides[1]}"
    where = _where(failure)
    reason = failure.message.rstrip(".")
    if failure.mismatch:
        return ConfigError(
            f"The model does not accept {given} images: {where} gets "
            f"{_fmt_shape(failure.input_shape)} features ({reason}). It was built for another "
            f"input size; build it with input_size={sides[0]} (the model config's input_size "
            f"and data.resize must agree)."
        )
    smallest = smallest_input_size(model, in_channels, start=max(sides) + 1)
    native = f" (this model's native size is {native_size})" if native_size else ""
    if smallest is None:
        return ConfigError(
            f"A {in_channels}-channel {given} image does not get through the model: {where} "
            f"fails on its {_fmt_shape(failure.input_shape)} input ({reason}). "
            f"No input size up to {MAX_SEARCH_SIZE} works either, so this is not only a "
            f"size problem: check the model settings and that in_channels={in_channels} "
            f"matches the data."
        )
    return ConfigError(
        f"Input size {sides[0]} is too small for this model: by {where} the image is down "
        f"to {_fmt_shape(failure.input_shape)} and that layer's output collapses ({reason}). "
        f"The smallest input size that works is {smallest}. Fix: set data.resize={smallest} "
        f"or larger, or drop the model.input_size/data.resize override so the model gets its "
        f"native size{native}."
    )


def check_input_size(model: nn.Module, in_channels: int, input_size: int, native_size: int | None = None) -> None:
    """Raise `ConfigError` unless a `in_channels` x `input_size` x `input_size` image gets
    through `model`.

    The message names the first layer whose output collapsed (e.g. "features.5
    (MaxPool2d)"), the size given, the smallest size that works (searched up to
    MAX_SEARCH_SIZE) and the override to change. `native_size`, when known (the model
    config's input_size), is mentioned in the fix. Runs on the meta device, so it is
    cheap for any model size; the model's parameters and modes are left untouched.
    """
    if int(input_size) < 1:
        raise ConfigError(f"Input size must be a positive number of pixels, got {input_size}.")
    failure = _trace(model, (in_channels, int(input_size), int(input_size))).failure
    if failure is not None:
        raise _size_error(model, in_channels, int(input_size), failure, native_size)
