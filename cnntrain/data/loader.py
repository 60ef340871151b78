"""Batches from in-memory uint8 tensors, converted on the training device.

This replaces the tutorials' DataLoader + ToTensor pipeline for datasets that fit in
memory: the whole split lives as one uint8 tensor (on the GPU when training there),
a batch is an index into it, and float conversion, resize and normalisation run once
per batch as tensor operations. No per-image Python work and no worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cnntrain.data.augment import Augmentation
from cnntrain.data.catalog import ImageSet
from cnntrain.data.image_files import FileImageSet, bad_file_error
from cnntrain.data.mixing import BatchMixer
from cnntrain.data.sampling import augment_generator, balanced_order, epoch_order, example_weights


@dataclass
class BatchTransform:
    """uint8 (B, C, H, W) -> float batch ready for the model.

    Order: to [0, 1] floats, resize, augmentations (only when given a generator, i.e.
    for training batches), normalise, memory format.
    """

    size: tuple[int, int] | None  # resize target; None keeps the stored size
    mean: tuple[float, ...] | None  # None: no normalisation (values stay in [0, 1])
    std: tuple[float, ...] | None
    channels_last: bool = False
    augment: Sequence[Augmentation] = field(default_factory=list)
    # Resize to this side first, then centre-crop `size` (the preprocessing of torchvision's
    # pretrained weights, e.g. 232 then 224); None: resize straight to `size`.
    resize_before_crop: int | None = None

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255)
        resize_to = (self.resize_before_crop,) * 2 if self.resize_before_crop else self.size
        if resize_to is not None and tuple(x.shape[-2:]) != tuple(resize_to):
            # Same interpolation as torchvision's Resize on tensors (bilinear, antialiased).
            x = F.interpolate(x, size=resize_to, mode="bilinear", align_corners=False, antialias=True)
        if self.resize_before_crop:
            x = center_crop(x, self.size)
        if generator is not None:
            for augmentation in self.augment:
                x = augmentation(x, generator)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = x.sub_(mean).div_(std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre `size` of a batch (torchvision's CenterCrop, on a batch at once)."""
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def preprocess_transform(preprocess: dict) -> BatchTransform:
    """The evaluation transform a checkpoint's "preprocess" record describes (prediction, evaluation, export)."""
    size = preprocess["size"]
    return BatchTransform(
        size=(size, size),
        mean=preprocess.get("mean") or None,
        std=preprocess.get("std") or None,
        resize_before_crop=preprocess.get("resize_before_crop"),
    )


class _EpochLoader:
    """What both loaders share: batch count, epoch, and the seeded order and augmentation stream.

    With `shuffle`, epoch e visits the examples in `epoch_order(n, seed, e)`; with `sampler="balanced"`
    (data.sampler) in `balanced_order`, len(examples) draws each class equally likely (data/sampling.py). With
    `augment`, the transform's augmentations draw from `augment_generator(seed, e)`;
    loaders without it (evaluation) yield the same batches every time. A training loader's
    `mixer` (trainer.mixup) then mixes each batch, drawing from that stream too, and the loader
    yields (images, soft targets) instead of (images, labels). `limit_batches`
    keeps only an epoch's first batches (a quick look at a run). `resume_at` makes the
    next pass start in the middle of the epoch, exactly where a checkpoint left it.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        transform: BatchTransform,
        device: torch.device,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        limit_batches: int | None = None,
        shard: tuple[int, int] = (0, 1),
        mixer: BatchMixer | None = None,
        sampler: str | None = None,
    ):
        self.labels = labels
        # data.sampler=balanced: each example's chance of a draw (1 / its class's count); None: a permutation.
        self.draw_weights = example_weights(labels) if shuffle and sampler == "balanced" else None
        # (rank, processes) of a distributed run: a training loader yields this rank's share of
        # each global batch (every processes-th example of it); see cnntrain/distributed.py.
        self.rank, self.world = shard
        self.batch_size = batch_size
        self.transform = transform
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.mixer = mixer if augment else None  # MixUp / CutMix of training batches (data/mixing.py)
        self.augment = augment and (bool(transform.augment) or self.mixer is not None)
        self.limit_batches = limit_batches
        self.epoch = 0
        self.generator: torch.Generator | None = None  # the current pass's augmentation stream
        self._start = (0, None)  # (first batch, augmentation generator state) of the next pass

    def __len__(self) -> int:
        batches = -(-len(self.labels) // self.batch_size)
        if 0 < len(self.labels) % self.batch_size < self.world:
            batches -= 1  # a last global batch smaller than the number of processes would leave a rank without images
        return min(batches, self.limit_batches) if self.limit_batches else batches

    def global_batch_size(self, step: int) -> int:
        """Examples in global batch `step` (1-based) over all processes (the last one may be short)."""
        return min(self.batch_size, len(self.labels) - (step - 1) * self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples in one pass (fewer than the split's when `limit_batches` cuts it short)."""
        return min(len(self.labels), len(self) * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, batch: int, generator_state: torch.Tensor | None) -> None:
        """Start the next pass at `batch` (0-based), with the augmentation stream as it was there."""
        self._start = (batch, generator_state)

    def _begin_pass(self) -> int:
        """The first batch of this pass; sets up its augmentation stream."""
        start, state = self._start
        self._start = (0, None)
        # Each rank draws its own augmentations (rank 0's are those of a single-process run).
        seed = self.seed + 1_000_003 * self.rank
        self.generator = augment_generator(seed, self.epoch, self.device) if self.augment else None
        if self.generator is not None and state is not None:
            self.generator.set_state(state)
        return start

    def _order(self, n: int) -> torch.Tensor:
        if self.draw_weights is not None:
            return balanced_order(self.draw_weights, self.seed, self.epoch)
        return epoch_order(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)

    def _batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 batch as the model gets it: transformed (augmented in training), then mixed with a mixer."""
        images = self.transform(images, self.generator)
        return (images, labels) if self.mixer is None else self.mixer(images, labels, self.generator)


class InMemoryLoader(_EpochLoader):
    """Iterates (images, labels) batches over an `ImageSet` moved to `device`."""

    def __init__(self, data: ImageSet, batch_size: int, transform: BatchTransform, device: torch.device, **options):
        super().__init__(data.labels.to(device), batch_size, transform, device, **options)  # options: _EpochLoader's
        self.images = data.images.to(device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._begin_pass()
        n = len(self.labels)
        if self.shuffle:
            order = self._order(n).to(self.images.device)
        for begin in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            if self.shuffle:
                index = order[begin : begin + self.batch_size][self.rank :: self.world]
                images, labels = self.images[index], self.labels[index]
            else:
                images = self.images[begin : begin + self.batch_size]
                labels = self.labels[begin : begin + self.batch_size]
            yield self._batch(images, labels)


class StreamingLoader(_EpochLoader):
    """The same batches as `InMemoryLoader`, decoded from disk by DataLoader workers.

    For folders too large to keep in memory: workers decode uint8 batches (pinned for
    a fast copy to a GPU), and the same `BatchTransform` then runs on the device.
    """

    def __init__(self, data: FileImageSet, batch_size: int, transform: BatchTransform, device: torch.device, **options):
        super().__init__(data.labels, batch_size, transform, device, **options)  # options: _EpochLoader's
        self.data = data

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._begin_pass()
        order = self._order(len(self.data))
        shares = [
            order[begin : begin + self.batch_size][self.rank :: self.world].tolist()
            for begin in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size)
        ]
        batches = torch.utils.data.DataLoader(
            self.data, batch_sampler=shares, num_workers=self.data.workers, pin_memory=self.device.type == "cuda"
        )
        for images, index, errors in batches:
            images, index = self._without_bad_files(images, index, errors)
            if len(index):
                images = images.to(self.device, non_blocking=True)
                yield self._batch(images, self.data.labels[index].to(self.device))

    def _without_bad_files(self, images, index, errors):
        bad = [i for i, error in enumerate(errors) if error]
        if not bad:
            return images, index
        if not self.data.skip_bad_files:
            raise bad_file_error(self.data.files[int(index[bad[0]])], errors[bad[0]])
        keep = torch.tensor([i not in bad for i in range(len(errors))])
        return images[keep], index[keep]


def make_loader(
    data: ImageSet | FileImageSet,
    batch_size: int,
    transform: BatchTransform,
    device: torch.device,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
    limit_batches: int | None = None,
    shard: tuple[int, int] = (0, 1),
    mixer: BatchMixer | None = None,
    sampler: str | None = None,
) -> _EpochLoader:
    """A streaming loader for splits left on disk, the in-memory one otherwise.

    `shard` (rank, processes): a training (shuffled) loader takes its share of every global
    batch; an evaluation loader gets every processes-th example of the split, so that the
    ranks together see each example once (the metrics are summed across ranks). `mixer`: MixUp /
    CutMix for a training loader (trainer.mixup), which then yields soft targets. `sampler`: data.sampler
    (None: a permutation per epoch; "balanced": each class equally likely, data/sampling.py).
    """
    loader_class = StreamingLoader if isinstance(data, FileImageSet) else InMemoryLoader
    rank, world = shard
    if world > 1 and not shuffle:
        data = data.subset(torch.arange(len(data))[rank::world])
        shard = (0, 1)
    return loader_class(
        data,
        batch_size,
        transform,
        device,
        shuffle=shuffle,
        seed=seed,
        augment=augment,
        limit_batches=limit_batches,
        shard=shard,
        mixer=mixer,
        sampler=sampler,
    )
