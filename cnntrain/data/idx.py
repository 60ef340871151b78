"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw).

We parse the files ourselves rather than through torchvision because Debian's
`dataset-fashion-mnist` package ships recompressed `.gz` files whose md5 differs
from torchvision's checksum, which makes torchvision try to download them again.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import torch

from cnntrain.errors import DatasetError

# Third byte of the magic number -> element type. MNIST-style data uses only ubyte.
_UBYTE = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """Return the array stored in an IDX file as a uint8 tensor of its declared shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decompress whatever the file name says
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"Cannot read {path}: {err}. The file is damaged or truncated; delete it and get it again."
        ) from err
    return _parse(raw, path)


def _parse(raw: bytes, path: Path) -> torch.Tensor:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number); expected MNIST-format data.")
    dtype, ndim = raw[2], raw[3]
    if dtype != _UBYTE:
        raise DatasetError(f"{path}: IDX element type 0x{dtype:02x} is not supported (only unsigned bytes).")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: its header is incomplete. Delete it and get it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + _product(shape)
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {problem}: shape {tuple(shape)} needs {expected} bytes, found {len(raw)}. "
            f"Delete it and get it again."
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(shape)


def _product(values) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def write_idx(path: Path, array: torch.Tensor, compress: bool | None = None) -> None:
    """Write a uint8 tensor as an IDX file (gzip when the name ends in .gz); used by tests."""
    path = Path(path)
    array = array.to(torch.uint8).contiguous()
    header = bytes([0, 0, _UBYTE, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    payload = header + array.numpy().tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
