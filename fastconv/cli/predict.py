"""``fastconv-predict``: classify image files with a model trained by ``fastconv-train``.

    fastconv-predict --weights runs/simple_cnn cat.png ship.jpg
    fastconv-predict -w runs/simple_cnn/model.npz --top 5 *.png

Python::

    from fastconv.cli.predict import predict
    predict(["cat.png"], weights="runs/simple_cnn")   # [[("cat", 0.81), ("dog", 0.11), ...]]

``--weights`` is a run folder (its ``model.npz``, else its ``checkpoint.npz``), a weights file
written by :func:`fastconv.checkpoint.save_weights` or a training checkpoint. The model name,
class names and normalisation come from the file's metadata (``--model`` for a bare weights
file); a model trained on CIFAR-100 or an image folder answers with that data's classes.
Images are read with Pillow (optional dependency), converted to RGB, resized so the shorter
side is the model's input size (32 pixels, bicubic) and centre-cropped to a square, as the
images of an image folder are for training (:func:`fastconv.data.read_image`).
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["main", "predict", "load_model", "load_image", "PredictError"]

PROG = "fastconv-predict"


class PredictError(Exception):
    """A user-facing problem (missing file, unreadable image, wrong model): one line."""


def _resolve_weights(weights: str | os.PathLike) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in ("model.npz", "checkpoint.npz"):
            if (path / name).is_file():
                return path / name
        raise PredictError(f"{path} holds neither model.npz nor checkpoint.npz")
    if not path.is_file():
        raise PredictError(f"weights file {path} not found")
    return path


def load_model(weights: str | os.PathLike, model: str | None = None):
    """Load a trained model in eval mode; returns ``(model, info)``.

    ``info`` has ``model``, ``class_names``, ``mean`` and ``std``. Raises :class:`PredictError`
    when the file is missing or unreadable, or its weights do not fit the model.
    """
    from .. import checkpoint as ck, data as D, models

    path = _resolve_weights(weights)
    try:
        kind = ck.file_kind(path)
        if kind == "checkpoint":
            state = ck.load_checkpoint(path)
            state_dict = state.get("model", {})
            # fastconv-train keeps its settings in the state's metadata (at the top level
            # in checkpoints of its first format)
            run = state.get("metadata", state)
            run = run if isinstance(run, dict) else {}
            config = run.get("config")
            meta = {"model": config.get("model") if isinstance(config, dict) else None,
                    **{k: run.get(k) for k in ("class_names", "mean", "std", "image_size")}}
        else:
            state_dict = ck.load_weights(path)
            meta = ck.load_weights_metadata(path)
    except ck.CheckpointError as e:
        # the file is the user's input: say what was expected, never suggest deleting it
        raise PredictError(f"{e} (expected a run folder, or the model.npz or checkpoint.npz "
                           f"written by fastconv-train)") from e
    name = model or meta.get("model")
    if not name:
        raise PredictError(f"{path} does not say which model it holds: pass --model")
    if model and meta.get("model") and model != meta["model"]:
        raise PredictError(f"{path} holds a {meta['model']} model, not {model}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, (list, tuple))
                                  and all(isinstance(n, str) for n in names)):
        raise PredictError(f"{path} has malformed class names in its metadata: {names!r:.80}")
    class_names = tuple(names or D.CLASS_NAMES)
    try:
        net = models.get_model(name, num_classes=len(class_names), seed=0)
        net.load_state_dict(state_dict)
    except (ValueError, TypeError) as e:          # TypeError: not a mapping of arrays
        raise PredictError(f"weights in {path} do not fit model {name}: {e}") from e
    net.eval()
    info = {"model": name, "class_names": class_names,
            "mean": _channel_stats(meta, "mean", D.CIFAR10_MEAN, path),
            "std": _channel_stats(meta, "std", D.CIFAR10_STD, path),
            "image_size": _image_size(meta, path)}
    try:
        net.output_shape((1, 3, info["image_size"], info["image_size"]))
    except ValueError as e:
        raise PredictError(f"{path} says its model takes {info['image_size']} x "
                           f"{info['image_size']} images, which model {name} cannot take: "
                           f"{e}") from e
    return net, info


def _channel_stats(meta: dict, key: str, default, path: Path) -> tuple[float, ...]:
    """The metadata's per-channel `key` (mean or std): 3 finite numbers (std > 0), else
    PredictError; `default` where the file has none."""
    value = meta.get(key)
    if value is None:
        return tuple(default)
    ok = isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3 and all(
        isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)
        and (key == "mean" or v > 0) for v in value)
    if not ok:
        what = "finite numbers" if key == "mean" else "positive numbers"
        raise PredictError(f"{path} has a malformed {key} in its metadata (3 {what}, one per "
                           f"colour channel, expected): {value!r:.80}")
    return tuple(float(v) for v in value)


def _image_size(meta: dict, path: Path) -> int:
    """The metadata's image_size (a positive int; 32 where the file has none)."""
    size = meta.get("image_size")
    if size is None:
        return 32
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Integral) or size < 1:
        raise PredictError(f"{path} has a malformed image_size in its metadata (a positive "
                           f"int expected): {size!r:.80}")
    return int(size)


def load_image(path: str | os.PathLike, size: int = 32) -> np.ndarray:
    """Read an image file as uint8 (3, size, size): RGB, shorter side resized to ``size``
    (bicubic), centre crop (:func:`fastconv.data.read_image`); PredictError when it cannot."""
    from ..data import ImageReadError, read_image
    if Path(path).is_dir():
        raise PredictError(f"{path} is a folder, not an image file: pass the images in it "
                           f"({Path(path) / '*.png'}, say)")
    try:
        return read_image(path, size)
    except ImageReadError as e:
        raise PredictError(str(e)) from e


def _as_batch(images, size: int = 32) -> np.ndarray:
    """Paths / arrays -> uint8 or float (N, 3, size, size). Integer arrays other than
    uint8/uint16/int16 (whose pixel scale is known) are refused: read as already scaled,
    int64 pixels 0..255 gave confident nonsense."""
    if isinstance(images, (bytes, bytearray)):
        images = os.fsdecode(images)
    if isinstance(images, np.ndarray):
        if images.dtype.kind in "iu" and images.dtype not in (np.uint8, np.uint16, np.int16):
            raise PredictError(f"integer images of dtype {images.dtype}: give pixels as uint8 "
                               f"(images.astype(np.uint8) for 0..255), or floats in [0, 1]")
        if images.ndim == 4 and images.shape[1] == 3:
            return images
        if images.ndim == 3 and images.shape[0] == 3:
            return images[None]
        if images.ndim == 3 and images.shape[2] == 3:             # one (H, W, 3) picture
            return images.transpose(2, 0, 1)[None]
        raise PredictError(f"expected images (N, 3, {size}, {size}) or (H, W, 3), got "
                           f"{images.shape}")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    images = list(images)
    if not images:
        raise PredictError("no images given")
    return np.stack([load_image(os.fsdecode(p) if isinstance(p, bytes) else p, size)
                     if isinstance(p, (str, bytes, os.PathLike)) else _as_batch(p, size)[0]
                     for p in images])


def predict(images, weights: str | os.PathLike | None = None, top: int = 3, *, model=None,
            info: dict | None = None) -> list[list[tuple[str, float]]]:
    """Top-``top`` (class name, probability) pairs for each image, most likely first.

    ``images``: image paths, or arrays (uint8 (N, 3, 32, 32), (3, 32, 32) or (H, W, 3) at
    32 x 32). Give ``weights`` (see :func:`load_model`), or an already loaded ``model`` and its
    ``info``. ``top`` must be >= 1 (ValueError otherwise); above the number of classes, all
    are listed.
    """
    from .. import data as D
    from ..losses import softmax
    from ..training import predict as model_outputs

    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise ValueError(f"predict: top must be an integer >= 1, got {top!r}")

    if model is None:
        if weights is None:
            raise PredictError("give the trained weights (a run folder or model.npz)")
        model, info = load_model(weights)
    info = info or {"class_names": D.CLASS_NAMES, "mean": D.CIFAR10_MEAN, "std": D.CIFAR10_STD}
    size = int(info.get("image_size", 32))
    batch = _as_batch(images, size)
    if batch.shape[2:] != (size, size):
        raise PredictError(f"images must be {size} x {size} after loading, got "
                           f"{batch.shape[2:]}")
    x = D.to_float32(batch, info["mean"], info["std"])
    probs = softmax(model_outputs(model, x), axis=1)
    names = info["class_names"]
    if len(names) != probs.shape[1]:
        raise PredictError(f"the model gives {probs.shape[1]} class scores, and there are "
                           f"{len(names)} class names: give the info of the run it was "
                           f"trained in (its class_names)")
    k = min(int(top), probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def build_parser() -> argparse.ArgumentParser:
    """The ``fastconv-predict`` argument parser."""
    from .train import _Parser, _int_at_least
    p = _Parser(prog=PROG, description="Classify images with a model trained by fastconv-train.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("-w", "--weights", required=True,
                   help="run folder, model.npz or checkpoint.npz written by fastconv-train")
    p.add_argument("--model", default=None,
                   help="model name, for a weights file without metadata")
    p.add_argument("--top", type=_int_at_least(1), default=3,
                   help="number of classes to show (>= 1) [default: 3]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastconv-predict``: prints ``IMAGE: class p%, ...`` per image."""
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        net, info = load_model(ns.weights, ns.model)
        status = 0
        for path in ns.images:
            try:
                result = predict([path], model=net, info=info, top=ns.top)[0]
            except PredictError as e:
                print(f"{PROG}: error: {e}", file=sys.stderr)
                status = 2
                continue
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in result))
        return status
    except PredictError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
