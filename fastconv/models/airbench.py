"""airbench94's network (Keller Jordan, KellerJordan/cifar10-airbench, ``legacy/airbench94.py``):
94% on CIFAR-10 in ~10 epochs, with the whitening-conv initialisation it needs.

::

    0   whitening conv  Conv2d(3, 24, 2, no padding, bias), weights frozen,  (24, 31, 31)
                        set by init_whitening_conv from the data
    1   GELU
    2   conv group(24 -> 64)                                                 (64, 15, 15)
    3   conv group(64 -> 256)                                                (256, 7, 7)
    4   conv group(256 -> 256)                                               (256, 3, 3)
    5   MaxPool2d(3)   6 Flatten   7 Linear(256, classes, no bias)   8 Mul(1/9)

a conv group being ``conv1 pool norm1 activ1 conv2 norm2 activ2``: Conv2d(3x3, 'same', no
bias) -> MaxPool2d(2) -> BatchNorm2d -> GELU -> Conv2d(3x3, 'same', no bias) -> BatchNorm2d
-> GELU. Convolutions start from PyTorch's default initialisation with their first c_in
filters replaced by the identity (:func:`fastconv.init.dirac_`). BatchNorm: eps 1e-12,
PyTorch momentum 0.4 (airbench's "momentum 0.6" is the weight of the running value), the
scale frozen at 1, the bias trained. State-dict keys are airbench's (``2.conv1.weight``,
``2.norm1.bias``, ``7.weight``): its PyTorch model loads them, and the recipe's
parameter groups pick BatchNorm biases by the ``norm`` in their names.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import init, nn
from ._seed import check_num_classes, model_generator

__all__ = ["airbench94", "conv_group", "init_whitening_conv", "whitening_weights",
           "patch_covariance", "AIRBENCH94_WIDTHS", "WHITENING_EPS"]

#: Output channels of the three conv groups.
AIRBENCH94_WIDTHS = (64, 256, 256)
#: Added to the eigenvalues before the whitening weights divide by their square roots.
WHITENING_EPS = 5e-4
BATCHNORM_EPS = 1e-12
#: PyTorch's momentum (running = 0.6 running + 0.4 batch).
BATCHNORM_MOMENTUM = 0.4
LOGIT_SCALE = 1 / 9


def _conv(c_in: int, c_out: int, dtype, g) -> nn.Conv2d:
    """3x3 'same' conv without bias; PyTorch's default init, then the first c_in filters
    the identity (airbench's ``Conv.reset_parameters``)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False, dtype=dtype, rng=g)
    init.dirac_(conv.weight.data[:c_in])
    return conv


def _norm(c: int, dtype) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=BATCHNORM_EPS, momentum=BATCHNORM_MOMENTUM, dtype=dtype)
    bn.weight.requires_grad = False
    return bn


def conv_group(c_in: int, c_out: int, dtype=np.float32, rng=None) -> nn.Sequential:
    """airbench's ConvGroup (see the module docstring)."""
    g = model_generator(rng, None)
    return nn.Sequential(OrderedDict(
        conv1=_conv(c_in, c_out, dtype, g), pool=nn.MaxPool2d(2), norm1=_norm(c_out, dtype),
        activ1=nn.GELU(),
        conv2=_conv(c_out, c_out, dtype, g), norm2=_norm(c_out, dtype), activ2=nn.GELU(),
    ))


def airbench94(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None,
               widths: tuple[int, int, int] = AIRBENCH94_WIDTHS) -> nn.Sequential:
    """airbench94's network (see the module docstring), 1,972,792 parameters with 10 classes
    (1,971,352 trained: not the whitening weights nor the BatchNorm scales). The whitening
    conv (``model[0]``) holds PyTorch's default init until :func:`init_whitening_conv` sets
    it from training images; its bias starts at 0."""
    num_classes = check_num_classes(num_classes, "airbench94")
    g = model_generator(rng, seed)
    c1, c2, c3 = widths
    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True, dtype=dtype, rng=g)
    whiten.bias.data.fill(0)
    whiten.weight.requires_grad = False
    return nn.Sequential(
        whiten, nn.GELU(),
        conv_group(24, c1, dtype, g), conv_group(c1, c2, dtype, g), conv_group(c2, c3, dtype, g),
        nn.MaxPool2d(3), nn.Flatten(),
        nn.Linear(c3, num_classes, bias=False, dtype=dtype, rng=g),
        nn.Mul(LOGIT_SCALE),
    )


def patch_covariance(images: np.ndarray, kernel_size: tuple[int, int],
                     chunk: int = 500) -> np.ndarray:
    """The uncentred covariance ``P^T P / n`` (float64, (C kh kw) squared) of all n
    ``kernel_size`` patches (stride 1, no padding) of ``images`` (N, C, H, W), a patch
    flattened as (channel, row, column), i.e. as a conv weight. Accumulated over ``chunk``
    images at a time, without forming the patch matrix."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"patch_covariance: expected non-empty (N, C, H, W) images, got shape "
                         f"{x.shape}")
    kh, kw = kernel_size
    n, c, h, w = x.shape
    if kh > h or kw > w:
        raise ValueError(f"patch_covariance: patches {kernel_size} larger than images {h}x{w}")
    oh, ow = h - kh + 1, w - kw + 1
    cov = np.zeros((c * kh * kw, c * kh * kw))
    for i in range(0, n, chunk):
        block = x[i:i + chunk].astype(np.float64)
        # rows (c, dy, dx): every patch's element at (dy, dx) of channel c
        rows = np.stack([block[:, :, dy:dy + oh, dx:dx + ow] for dy in range(kh)
                         for dx in range(kw)], axis=2)      # (b, C, kh*kw, oh, ow)
        rows = rows.transpose(1, 2, 0, 3, 4).reshape(c * kh * kw, -1)
        cov += rows @ rows.T
    return cov / (n * oh * ow)


def whitening_weights(images: np.ndarray, kernel_size: tuple[int, int] = (2, 2),
                      eps: float = WHITENING_EPS) -> np.ndarray:
    """airbench's whitening filters, float64 (2 C kh kw, C, kh, kw): the eigenvectors v_k of
    the patch covariance (:func:`patch_covariance`), largest eigenvalue first, scaled by
    1 / sqrt(lambda_k + eps), followed by their negatives (so that a GELU after them keeps
    both signs). Each eigenvector's sign is fixed (its largest-magnitude entry positive) so
    that the filters do not depend on the LAPACK build; airbench leaves it to torch."""
    cov = patch_covariance(images, kernel_size)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1].T                     # rows: eigenvectors, descending
    pivot = np.argmax(np.abs(vec), axis=1)
    vec = vec * np.sign(vec[np.arange(len(vec)), pivot])[:, None]
    c = images.shape[1]
    scaled = (vec / np.sqrt(lam + eps)[:, None]).reshape(-1, c, *kernel_size)
    return np.concatenate([scaled, -scaled])


def init_whitening_conv(conv: nn.Conv2d, images: np.ndarray, eps: float = WHITENING_EPS) -> None:
    """Set ``conv``'s weight (shape (2 C kh kw, C, kh, kw)) to :func:`whitening_weights` of
    ``images`` (airbench94: the first 5,000 training images, normalised). The bias is left
    as it is."""
    want = (2 * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.in_channels)
    if conv.weight.data.shape[:2] != want:
        raise ValueError(f"init_whitening_conv: the conv needs {want[0]} output channels for "
                         f"{conv.in_channels} input channels and a {conv.kernel_size} kernel, "
                         f"has weight of shape {conv.weight.data.shape}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != conv.in_channels:
        raise ValueError(f"init_whitening_conv: expected images (N, {conv.in_channels}, H, W), "
                         f"got shape {images.shape}")
    conv.weight.data[...] = whitening_weights(images, conv.kernel_size, eps)
