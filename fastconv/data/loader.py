"""Mini-batches from in-memory arrays: seeded shuffling, optional augmentation, normalisation,
and a background thread that builds the next batch while the kernels run."""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .cifar import CIFAR10_MEAN, CIFAR10_STD
from .transforms import (PADDING_MODES, _affine, augment_batch, channels_last_hint, pixel_scale,
                         _warn_if_unscaled)

__all__ = ["DataLoader"]


class DataLoader:
    """Mini-batches ``(x, y)`` of images and labels (or any inputs and targets) held in memory.

    ::

        cifar = fastconv.data.load_cifar10()
        train = DataLoader(cifar.x_train, cifar.y_train, batch_size=128, shuffle=True,
                           augment=True)
        for x, y in train:       # one epoch: x float32 (128, 3, 32, 32) normalised, y int64
            ...
        len(train)               # batches per epoch (391)

    Each batch is a pure function of ``(seed, epoch, batch index)``: the epoch's permutation
    comes from ``np.random.default_rng([seed, epoch, 0])`` and batch i's augmentation from
    ``np.random.default_rng([seed, epoch, 1, i])``. The loader only has to remember ``epoch``
    and the next batch index to resume bit-exactly (:meth:`state_dict` /
    :meth:`load_state_dict`), and a background thread may build batches ahead without
    changing the result.

    A loader can be one process's share of a data-parallel run (:meth:`shard`): every process
    draws the same permutation and augmentation, and takes its own contiguous rows of each
    batch, so the shares of batch i together are batch i of the whole loader.

    Iterating runs one epoch, starting at the stored position, and then advances ``epoch``;
    :attr:`batch` counts the batches handed out so far in the current epoch, so a
    ``state_dict()`` taken between two steps resumes with the next batch.

    What a batch holds:

    * ``x``: the selected images, augmented (if ``augment``), then normalised per channel
      (axis 1): ``(x / 255 - mean) / std`` for uint8 images (uint16 and int16 ones divided by
      65535 and 32767: :func:`fastconv.data.transforms.pixel_scale`), ``(x - mean) / std``
      for float images (taken as already in [0, 1]) and other integers. float32, or
      float64 when the images are float64. With ``mean=None, std=None`` float images pass
      through unchanged (a copy) and uint8 (uint16, int16) images are only scaled to [0, 1].
    * ``y``: the selected labels as int64 (integer labels), or the selected targets unchanged
      (any other real array of N rows, e.g. clean images for a denoising autoencoder).

    Args:
        images: (N, C, H, W) uint8, uint16, int16 or float images; any (N, C, ...) real
            array when ``augment`` is off (e.g. (N, features) for a multi-layer perceptron).
        labels: (N,) integer class labels, or (N, ...) real targets.
        batch_size: images per batch.
        shuffle: new random order every epoch (otherwise the given order).
        drop_last: drop the final batch when it is smaller than ``batch_size`` (otherwise it
            is yielded with the remaining N % batch_size images).
        augment: random crop with ``pad`` pixels of padding (``padding_mode`` "zeros" or
            "reflect") and horizontal flip, applied before normalisation
            (:func:`fastconv.data.augment_batch`).
        flip: with ``augment``: True flips each image with probability 1/2 in every batch;
            "alternate" is airbench's derandomised flip: a random half of the images (drawn
            once, from the seed) is flipped in even epochs, the other half in odd epochs, so
            every image is seen both ways in two consecutive epochs; False never flips.
        mean, std: per-channel normalisation (None to skip); CIFAR-10's statistics by default.
        seed: non-negative int seeding shuffle and augmentation.
        prefetch: batches prepared ahead in a background thread (0 = build in the caller).
            Worth it when the consumer spends its time in GIL-releasing kernels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 128, *,
                 shuffle: bool = False, drop_last: bool = False, augment: bool = False,
                 pad: int = 4, flip: bool | str = True, padding_mode: str = "zeros",
                 mean: Sequence[float] | np.ndarray | None = CIFAR10_MEAN,
                 std: Sequence[float] | np.ndarray | None = CIFAR10_STD,
                 seed: int = 0, prefetch: int = 1) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim < 2 or images.dtype.kind not in "uif" or images.dtype == np.bool_:
            raise ValueError(f"DataLoader: images must be a real (N, C, ...) array, got shape "
                             f"{images.shape} dtype {images.dtype}")
        if augment and images.ndim != 4:
            raise ValueError(f"DataLoader: augment needs (N, C, H, W) images, got shape "
                             f"{images.shape}")
        if labels.ndim < 1 or labels.shape[0] != images.shape[0] \
                or labels.dtype.kind not in "uif":
            raise ValueError(f"DataLoader: labels must be {images.shape[0]} integers (or an "
                             f"array of {images.shape[0]} real targets), got shape "
                             f"{labels.shape} dtype {labels.dtype}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative int, got {seed!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) \
                or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
            raise ValueError(f"DataLoader: pad must be an int >= 0, got {pad!r}")
        if not (isinstance(flip, bool) or flip == "alternate"):
            raise ValueError(f"DataLoader: flip must be True, False or 'alternate', got {flip!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"DataLoader: padding_mode must be one of {PADDING_MODES}, got "
                             f"{padding_mode!r}")
        if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
            raise ValueError(f"DataLoader: labels must be class indices, got {labels.max()} "
                             f"(past int64)")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False) if labels.dtype.kind in "ui" \
            else labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.flip = flip
        self.padding_mode = padding_mode
        self.mean = mean
        """The normalisation's per-channel mean (None: none), as given."""
        self.std = std
        """The normalisation's per-channel std (None: none), as given."""
        self._base_flips: np.ndarray | None = None
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.dtype = np.dtype(np.float64 if images.dtype == np.float64 else np.float32)
        """dtype of the image batches."""
        self._affine: tuple[np.ndarray, np.ndarray] | None = None
        if mean is not None or std is not None or images.dtype.kind != "f":
            try:
                self._affine = _affine(mean, std, images.shape[1], pixel_scale(images.dtype),
                                       images.ndim, self.dtype)
            except ValueError as e:
                raise ValueError(f"DataLoader: {e} (one per channel: axis 1 of images of "
                                 f"shape {images.shape}){channels_last_hint(images.shape)}; "
                                 f"mean=None, std=None skip the normalisation") from None
            if mean is not None or std is not None:
                _warn_if_unscaled(images, "DataLoader")
        self.epoch = 0
        self.batch = 0
        self.rank = 0
        """This process's share of each batch (see :meth:`shard`): 0 of ``num_replicas``."""
        self.num_replicas = 1

    # -- sizes --------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Number of images (N)."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_length(self, index: int) -> int:
        """Images in batch ``index`` (every process's share together): ``batch_size``, or
        fewer for the last batch of an epoch."""
        return min(self.batch_size, self.num_samples - index * self.batch_size)

    def shard_rows(self, index: int) -> tuple[int, int]:
        """``(start, stop)``: the rows of batch ``index`` that are this process's share,
        ``start = rank * n // num_replicas`` with ``n = batch_length(index)``, as equal as they
        can be (``n / num_replicas`` each when it divides)."""
        n, k, r = self.batch_length(index), self.num_replicas, self.rank
        return r * n // k, (r + 1) * n // k

    # -- sharing batches between processes ---------------------------------------------
    def shard(self, rank: int, num_replicas: int) -> "DataLoader":
        """A loader over the same arrays and position whose batches are process ``rank``'s
        share (of ``num_replicas`` processes) of this loader's batches: the contiguous rows
        :meth:`shard_rows` of each batch, with the same shuffling and augmentation (drawn
        for the whole batch), so the shares of batch i in rank order are batch i. Its
        ``batch_size`` and length stay those of the whole batches (``batch_size`` is the
        global batch of a data-parallel run), and so does its state (a run resumes with any
        number of processes)."""
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) \
                or num_replicas < 1:
            raise ValueError(f"DataLoader.shard: num_replicas must be an int >= 1, got "
                             f"{num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < num_replicas:
            raise ValueError(f"DataLoader.shard: rank must be an int in 0..{num_replicas - 1}, "
                             f"got {rank!r}")
        twin = copy.copy(self)
        twin.rank, twin.num_replicas = int(rank), int(num_replicas)
        return twin

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Position to resume from: ``{"seed", "epoch", "batch"}`` (JSON-able ints)."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        if "epoch" not in state:
            raise ValueError(f"DataLoader: the state has no 'epoch' (keys: {sorted(state)}); "
                             f"give a dict from state_dict()")
        batch = int(state.get("batch", 0))
        if not 0 <= batch <= len(self):
            raise ValueError(f"DataLoader: batch position {batch} out of range 0..{len(self)}")
        if int(state["epoch"]) < 0:
            raise ValueError(f"DataLoader: epoch must be >= 0, got {state['epoch']!r}")
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.batch = batch
        if self.batch == len(self):
            self.epoch, self.batch = self.epoch + 1, 0

    def set_epoch(self, epoch: int, batch: int = 0) -> None:
        """Position the loader at batch ``batch`` of epoch ``epoch``."""
        self.load_state_dict({"epoch": epoch, "batch": batch})

    # -- deterministic batch construction ----------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        """Order of the images in ``epoch`` (identity when not shuffling)."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, int(epoch), 0]).permutation(self.num_samples)

    def base_flips(self) -> np.ndarray:
        """The images flipped in even epochs with ``flip="alternate"`` (bool (N,), each True
        with probability 1/2, from ``np.random.default_rng([seed, 2])``); odd epochs flip the
        others."""
        if self._base_flips is None:
            rng = np.random.default_rng([self.seed, 2])
            self._base_flips = rng.random(self.num_samples) < 0.5
        return self._base_flips

    def make_batch(self, epoch: int, index: int,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch`` as (C-contiguous images, labels or targets) (this
        process's share of it, for a :meth:`shard`)."""
        if order is None:
            order = self.permutation(epoch)
        idx = order[index * self.batch_size:(index + 1) * self.batch_size]
        start, stop = (0, len(idx)) if self.num_replicas == 1 else self.shard_rows(index)
        idx = idx[start:stop]
        xb = np.take(self.images, idx, axis=0)
        yb = np.take(self.labels, idx, axis=0)
        if self.augment:
            rng = np.random.default_rng([self.seed, int(epoch), 1, int(index)])
            flips = None
            if self.flip == "alternate":
                flips = self.base_flips()[idx] ^ bool(epoch % 2)
            xb = augment_batch(xb, rng, pad=self.pad, flip=bool(self.flip),
                               padding_mode=self.padding_mode, flips=flips,
                               rows=(start, self.batch_length(index)))
        if self._affine is None:                 # float images, no normalisation
            return xb, yb
        scale, offset = self._affine
        out = np.multiply(xb, scale, dtype=self.dtype)
        out += offset
        return out, yb

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.permutation(epoch)
        stop = len(self)
        if self.prefetch == 0 or stop - start <= 1:
            for i in range(start, stop):
                yield self.make_batch(epoch, i, order)
            return
        yield from _prefetched(lambda i: self.make_batch(epoch, i, order),
                               range(start, stop), self.prefetch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, start = self.epoch, self.batch
        if start >= len(self):
            epoch, start = epoch + 1, 0
            self.epoch, self.batch = epoch, start
        for i, item in enumerate(self._batches(epoch, start), start):
            self.batch = i + 1
            yield item
        self.epoch, self.batch = epoch + 1, 0

    def __repr__(self) -> str:
        return (f"DataLoader({self.num_samples} samples of shape {self.images.shape[1:]}, "
                f"batch_size={self.batch_size}, {len(self)} batches, shuffle={self.shuffle}, "
                f"augment={self.augment}, seed={self.seed}"
                + (f", shard {self.rank} of {self.num_replicas}" if self.num_replicas > 1 else "")
                + ")")


def _prefetched(make: Callable[[int], Any], indices: range,
                depth: int) -> Iterator[Any]:
    """Yield make(i) for i in indices, computed up to ``depth`` items ahead in a thread.

    Exceptions in the worker are re-raised in the consumer; closing the generator early stops
    the worker and joins it.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for i in indices:
                if stop.is_set() or not put((True, make(i))):
                    return
            put((True, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((False, e))

    thread = threading.Thread(target=worker, name="fastconv-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
