"""Datasets: the DATASETS registry (data/catalog.py), the datasets registered in it, and the
in-memory data every small dataset becomes (data/splits.py prepares it for a run).

Adding a dataset: a new module with a `@DATASETS.register(...)` builder (importing DATASETS,
ImageData and ImageSet from cnntrain.data.catalog), imported below; `from cnntrain.data import
DATASETS` keeps working.
"""

# Importing the dataset modules registers their builders.
from cnntrain.data import augment_policies, cifar, folder, label_files, mnist, synthetic  # noqa: F401
from cnntrain.data.catalog import _CACHE, DATASETS, LOADER_KEYS, ImageData, ImageSet, load_image_data  # noqa: F401
from cnntrain.data.splits import DatasetSpec, PreparedData, check_pairs, check_splits, prepare  # noqa: F401
