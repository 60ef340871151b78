"""MNIST and Fashion-MNIST: find the IDX files, else download, else explain.

Where the files are looked for, in order:
1. `data.root` in torchvision's layout (`<root>/FashionMNIST/raw/`), or the files
   directly in `<root>`;
2. a system copy: Debian/Ubuntu's `dataset-fashion-mnist` package installs them in
   `/usr/share/datasets/fashion-mnist/` (the way to get them with no internet);
3. torchvision's download into `<root>/FashionMNIST/raw/` (when `data.download`).
"""

from __future__ import annotations

from pathlib import Path

from cnntrain.data.catalog import DATASETS, ImageData, ImageSet
from cnntrain.data.idx import read_idx
from cnntrain.errors import DatasetError

SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_folder(candidates: list[Path]) -> Path | None:
    """The first folder that holds all four IDX files. A folder holding only some of them is an
    error listing the missing ones: silently taking another copy would train on other data."""
    for folder in candidates:
        found = {stem: find_file(folder, stem) for stem in SPLIT_FILES.values()}
        if all(found.values()):
            return folder
        if any(found.values()):
            missing = [stem for stem, path in found.items() if path is None]
            raise DatasetError(
                f"{folder} holds only some of the dataset's files: {', '.join(missing)} (raw or .gz) "
                f"{'is' if len(missing) == 1 else 'are'} missing. Add them, or set data.root to a "
                f"folder that holds all four."
            )
    return None


def download_with_torchvision(torchvision_name: str, root: Path) -> str | None:
    """Download through torchvision; returns None on success or the reason it failed."""
    try:
        from torchvision import datasets

        dataset_class = getattr(datasets, torchvision_name)
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
        return None
    except Exception as err:  # any network or checksum failure: reported in the final message
        reason = " ".join(str(err).split())  # torchvision's message spans lines: one line here
        return f"{type(err).__name__}: {reason[:300]}"


def load_idx_dataset(
    torchvision_name: str,
    system_folder: str,
    apt_package: str | None,
    classes: list[str],
    mean: float,
    std: float,
    root: str,
    download: bool,
) -> ImageData:
    root_path = Path(root).expanduser()
    candidates = [root_path / torchvision_name / "raw", root_path, Path(system_folder)]
    folder = find_idx_folder(candidates)
    failure = None
    if folder is None and download:
        failure = download_with_torchvision(torchvision_name, root_path)
        folder = find_idx_folder(candidates[:1])
    if folder is None:
        raise DatasetError(_not_found_message(torchvision_name, candidates, apt_package, download, failure))
    files = {key: find_file(folder, stem) for key, stem in SPLIT_FILES.items()}
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        check_idx_pair(
            files[f"{split}_images"], arrays[f"{split}_images"], files[f"{split}_labels"], arrays[f"{split}_labels"]
        )
    return ImageData(
        classes=classes,
        train=ImageSet(_as_nchw(arrays["train_images"]), arrays["train_labels"].long()),
        test=ImageSet(_as_nchw(arrays["test_images"]), arrays["test_labels"].long()),
        mean=(mean,),
        std=(std,),
        source=f"from {folder}",
    )


def check_idx_pair(images_file: Path, images, labels_file: Path, labels) -> None:
    """An images file and its labels file that belong together: (N, H, W) images, N labels. Anything else
    is a DatasetError naming both files (2-D images were a traceback; more images than labels trained on
    the labelled ones without a word)."""
    if images.dim() != 3:
        raise DatasetError(
            f"{images_file} holds an array of shape {tuple(images.shape)}; MNIST-format images are "
            f"3-D (count, height, width). The file is not an images file of this dataset: get it "
            f"again."
        )
    if labels.dim() != 1:
        raise DatasetError(
            f"{labels_file} holds an array of shape {tuple(labels.shape)}; MNIST-format labels are "
            f"1-D (one per image). The file is not a labels file of this dataset: get it again."
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels: "
            f"the two files do not belong together. Get both again from the same source."
        )


def _as_nchw(images):
    return images.unsqueeze(1)  # IDX stores (N, H, W) grey images


def _not_found_message(torchvision_name, candidates, apt_package, download, failure) -> str:
    looked = "\n".join(f"  - {c}" for c in candidates)
    lines = [
        f"{torchvision_name} not found. Looked for the four IDX files "
        f"({', '.join(SPLIT_FILES.values())}, raw or .gz) in:",
        looked,
    ]
    if download:
        lines.append(f"  - download with torchvision failed: {failure}")
    else:
        lines.append("  - download skipped (data.download=false)")
    fixes = [
        f"copy the files into {candidates[0]} (or point data.root=<folder> at them)",
        "connect to the internet and run again with data.download=true",
    ]
    if apt_package:
        fixes.insert(0, f"sudo apt-get install {apt_package}   (Debian/Ubuntu, no internet needed)")
    lines.append("Fix it one of these ways:")
    lines += [f"  {number}. {fix}" for number, fix in enumerate(fixes, 1)]
    return "\n".join(lines)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str = "data", download: bool = True) -> ImageData:
    """Zalando's Fashion-MNIST: 60k/10k 28x28 grey images of 10 clothing classes."""
    return load_idx_dataset(
        "FashionMNIST",
        "/usr/share/datasets/fashion-mnist",
        "dataset-fashion-mnist",
        FASHION_CLASSES,
        mean=0.2860,
        std=0.3530,
        root=root,
        download=download,
    )


@DATASETS.register("mnist")
def mnist(root: str = "data", download: bool = True) -> ImageData:
    """LeCun's MNIST digits: 60k/10k 28x28 grey images."""
    return load_idx_dataset(
        "MNIST",
        "/usr/share/datasets/mnist",
        None,
        [str(d) for d in range(10)],
        mean=0.1307,
        std=0.3081,
        root=root,
        download=download,
    )
