"""CIFAR-10 and CIFAR-100: find torchvision's python-format batches, else download, else explain.

Where the files are looked for, in order:
1. `data.root` in torchvision's layout (`<root>/cifar-10-batches-py/` holding
   `data_batch_1..5`, `test_batch`, `batches.meta`; `<root>/cifar-100-python/` holding
   `train`, `test`, `meta`), or those files directly in `<root>`;
2. torchvision's download into `<root>` (when `data.download`): the official archive,
   checked against its md5 and extracted to the layout above.

Safety: the batch files are Python pickles, and unpickling runs whatever code the file
names (a pickle can call `os.system`). A file in `data.root` may come from anywhere (a
mirror, a colleague, a shared drive), so it is untrusted input. We therefore never
call `pickle.load` on it: `_SafeUnpickler` resolves only the three globals that real
CIFAR pickles reference to rebuild their numpy arrays (`numpy.core.multiarray._reconstruct`
(`numpy._core...` when written by numpy 2), `numpy.ndarray`, `numpy.dtype`), returning
them directly, and refuses every other global with a `DatasetError` that names the
file and the refused global. Dicts, lists, strings, bytes and ints need no globals.
For the same reason the download goes through torchvision's archive helper (which
checks the md5 and extracts) rather than instantiating `torchvision.datasets.CIFAR10`,
whose constructor would unpickle the files without restriction.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from cnntrain.data.catalog import DATASETS, ImageData, ImageSet
from cnntrain.errors import DatasetError

_PIXELS = 3 * 32 * 32  # one row of `data`: 1024 red, then 1024 green, then 1024 blue, each 32x32 row-major


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as function  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as function
    return function


# (module, name) -> the object it stands for: everything a real CIFAR pickle references.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # the original files are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self.path}: refused to load {module}.{name}. A CIFAR batch file only needs numpy "
                f"arrays; this file references other code, so it is not a genuine CIFAR file (and "
                f"may be malicious). Delete it and get the dataset again from the official source."
            ) from None

    def persistent_load(self, pid):
        raise DatasetError(f"{self.path}: refused to load a persistent id; this is not a CIFAR batch file.")


def load_pickle(path: Path) -> dict:
    """Read one CIFAR python-format file as a dict with str keys, through the restricted unpickler."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            obj = _SafeUnpickler(file, path).load()
    except DatasetError:
        raise
    except OSError as err:
        raise DatasetError(f"Cannot read {path}: {err}.") from err
    except Exception as err:  # EOFError, UnpicklingError, ValueError...: a damaged file
        raise DatasetError(
            f"Cannot read {path}: {type(err).__name__}: {err}. The file is truncated or corrupt; "
            f"delete it and get the dataset again."
        ) from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR batch file.")
    return {(key.decode("latin1") if isinstance(key, bytes) else key): value for key, value in obj.items()}


def _require(batch: dict, path: Path, *keys: str) -> None:
    missing = [key for key in keys if key not in batch]
    if missing:
        raise DatasetError(
            f"{path} is not a CIFAR batch file: it lacks the key(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(repr, sorted(map(str, batch)))) or 'none'})."
        )


def read_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file."""
    batch = load_pickle(path)
    _require(batch, path, "data", label_key)
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' must be a uint8 array of shape (N, {_PIXELS}), found a {found}.")
    try:
        labels = np.asarray(labels)
    except Exception:  # ragged or odd objects
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: '{label_key}' must be a list of integer labels.")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels in '{label_key}'.")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def read_class_names(path: Path, key: str) -> list[str]:
    meta = load_pickle(path)
    _require(meta, path, key)
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{path}: '{key}' must be a list of class names.")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


class _Layout:
    def __init__(self, torchvision_name, folder, train_files, test_file, meta_file, label_key, names_key):
        self.torchvision_name, self.folder = torchvision_name, folder
        self.train_files, self.test_file, self.meta_file = train_files, test_file, meta_file
        self.label_key, self.names_key = label_key, names_key

    @property
    def files(self) -> list[str]:
        return [*self.train_files, self.test_file, self.meta_file]


CIFAR10 = _Layout(
    "CIFAR10",
    "cifar-10-batches-py",
    [f"data_batch_{i}" for i in range(1, 6)],
    "test_batch",
    "batches.meta",
    "labels",
    "label_names",
)
CIFAR100 = _Layout("CIFAR100", "cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names")


def _find_folder(layout: _Layout, candidates: list[Path]) -> Path | None:
    for folder in candidates:
        if all((folder / name).is_file() for name in layout.files):
            return folder
    return None


def download_with_torchvision(layout: _Layout, root: Path) -> str | None:
    """Download and extract the official archive; returns None on success or why it failed."""
    try:
        from torchvision import datasets
        from torchvision.datasets.utils import download_and_extract_archive

        source = getattr(datasets, layout.torchvision_name)
        download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)
        return None
    except Exception as err:  # any network or checksum failure: reported in the final message
        reason = " ".join(str(err).split())
        return f"{type(err).__name__}: {reason[:300]}"


def load_cifar(layout: _Layout, mean: tuple, std: tuple, root: str, download: bool) -> ImageData:
    root_path = Path(root).expanduser()
    candidates = [root_path / layout.folder, root_path]
    folder = _find_folder(layout, candidates)
    failure = None
    if folder is None and download:
        failure = download_with_torchvision(layout, root_path)
        folder = _find_folder(layout, candidates[:1])
    if folder is None:
        raise DatasetError(_not_found_message(layout, candidates, download, failure))
    train = [read_batch(folder / name, layout.label_key) for name in layout.train_files]
    test_images, test_labels = read_batch(folder / layout.test_file, layout.label_key)
    classes = read_class_names(folder / layout.meta_file, layout.names_key)
    train_labels = torch.cat([labels for _, labels in train])
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(
                f"{folder}: {split} labels range over {int(labels.min())}..{int(labels.max())}, "
                f"but {folder / layout.meta_file} names {len(classes)} classes."
            )
    return ImageData(
        classes=classes,
        train=ImageSet(torch.cat([images for images, _ in train]), train_labels),
        test=ImageSet(test_images, test_labels),
        mean=mean,
        std=std,
        source=f"from {folder}",
    )


def _not_found_message(layout: _Layout, candidates: list[Path], download: bool, failure: str | None) -> str:
    lines = [f"{layout.torchvision_name} not found. Looked for {', '.join(layout.files)} in:"]
    lines += [f"  - {c}" for c in candidates]
    if download:
        lines.append(f"  - download with torchvision failed: {failure}")
    else:
        lines.append("  - download skipped (data.download=false)")
    lines += [
        "Fix it one of these ways:",
        f"  1. copy the extracted {layout.folder} folder into {candidates[1]} "
        f"(or point data.root=<folder> at the folder that holds it)",
        "  2. connect to the internet and run again with data.download=true",
    ]
    return "\n".join(lines)


@DATASETS.register("cifar10")
def cifar10(root: str = "data", download: bool = True) -> ImageData:
    """Krizhevsky's CIFAR-10: 50k/10k 32x32 colour images of 10 classes."""
    return load_cifar(CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), root, download)


@DATASETS.register("cifar100")
def cifar100(root: str = "data", download: bool = True) -> ImageData:
    """Krizhevsky's CIFAR-100: 50k/10k 32x32 colour images of 100 fine classes."""
    return load_cifar(CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), root, download)
