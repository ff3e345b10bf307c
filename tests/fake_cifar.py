"""A small synthetic CIFAR-10 in the official python format (so tests never download).

``fake_batches`` makes the pickled dicts of ``data_batch_1..5``, ``test_batch`` and
``batches.meta``; ``write_folder`` / ``write_tarball`` store them as ``cifar-10-batches-py/``
or as ``cifar-10-python.tar.gz``, which :func:`fastconv.data.load_cifar10` reads.
``fake_cifar100`` makes the ``train``, ``test`` and ``meta`` members of a synthetic CIFAR-100,
which the same writers store as ``cifar-100-python/`` or ``cifar-100-python.tar.gz`` (with
``folder=D.CIFAR100_FOLDER``).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from fastconv import data as D

PER_BATCH = 100


def _learnable_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[int]]:
    """The class sets the mean colour (plus noise): a short training beats chance."""
    y = rng.integers(0, 10, n)
    colour = (np.arange(10)[:, None] * np.array([25, 60, 95])[None, :]) % 256
    x = colour[y][:, :, None] + rng.normal(0, 30, (n, 3, 1024))
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072), [int(v) for v in y]


def fake_batches(per_batch: int = PER_BATCH, seed: int = 0,
                 learnable: bool = False) -> dict[str, dict]:
    """The members of a fake CIFAR-10 (name -> unpickled dict), ``per_batch`` images each.

    Random images carry their batch index in the first red pixel and their row in the second
    (to check order); ``learnable`` images are coloured by class instead.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    names = list(D.TRAIN_BATCHES) + [D.TEST_BATCH]
    for k, name in enumerate(names):
        if learnable:
            x, labels = _learnable_images(rng, per_batch)
        else:
            x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            x[:, 0] = k                                  # batch id in the first red pixel
            x[:, 1] = np.arange(per_batch) % 256         # row id in the second one
            labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        label = (f"training batch {k + 1} of 5" if k < 5 else "testing batch 1 of 1").encode()
        out[name] = {b"batch_label": label, b"labels": labels, b"data": x,
                     b"filenames": [f"img_{k}_{i:05d}.png".encode() for i in range(per_batch)]}
    out[D.META_FILE] = {b"num_cases_per_batch": per_batch,
                        b"label_names": [n.encode() for n in D.CLASS_NAMES], b"num_vis": 3072}
    return out


def fake_cifar100(n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict[str, dict]:
    """The members of a fake CIFAR-100: image i carries its row in the first red pixel and
    its fine label in the second; fine label f has coarse label f // 5 (the real mapping is
    another, fixed one)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        x[:, 0] = np.arange(n) % 256
        x[:, 1] = fine
        out[name] = {b"batch_label": name.encode(), b"fine_labels": [int(v) for v in fine],
                     b"coarse_labels": [int(v) // 5 for v in fine], b"data": x,
                     b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(n)]}
    out["meta"] = {b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
                   b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)]}
    return out


def write_folder(root: Path, batches: dict[str, dict], skip: tuple[str, ...] = (),
                 folder_name: str = D.FOLDER_NAME) -> Path:
    """``root/<folder_name>/`` holding ``batches`` (except ``skip``); returns the folder."""
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in batches.items():
        if name in skip:
            continue
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    (folder / "readme.html").write_text("<html>fake</html>")
    return folder


def write_tarball(path: Path, batches: dict[str, dict], skip: tuple[str, ...] = (),
                  raw: dict[str, bytes] | None = None, compresslevel: int = 1,
                  folder_name: str = D.FOLDER_NAME) -> Path:
    """The tarball ``path`` holding ``batches`` (except ``skip``) and the ``raw`` members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {name: pickle.dumps(obj, protocol=2) for name, obj in batches.items()
               if name not in skip}
    members.update(raw or {})
    members["readme.html"] = b"<html>fake</html>"
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tf:
        info = tarfile.TarInfo(folder_name)
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        # official archive order is not sorted; use a shuffled order to exercise that
        for name in sorted(members, key=lambda n: hashlib.md5(n.encode()).hexdigest()):
            info = tarfile.TarInfo(f"{folder_name}/{name}")
            info.size = len(members[name])
            tf.addfile(info, io.BytesIO(members[name]))
    return path
