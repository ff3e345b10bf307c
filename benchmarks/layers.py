"""The layers benchmarked (float32, NCHW), named by model and position: every conv and pool
layer of simple_cnn, lenet5 and vgg_small at batch 64; ResNet-style and airbench94 conv layers
at the batch sizes they train with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BATCH = 64


@dataclass(frozen=True)
class ConvLayer:
    name: str
    c_in: int
    c_out: int
    size: int  # input H = W
    kernel: int
    padding: int
    bias: bool = True
    stride: int = 1
    batch: int = BATCH

    @property
    def x_shape(self):
        return (self.batch, self.c_in, self.size, self.size)

    @property
    def w_shape(self):
        return (self.c_out, self.c_in, self.kernel, self.kernel)

    @property
    def out_size(self):
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of one pass (forward, backward-input and backward-weight alike)."""
        return 2 * self.batch * self.c_out * self.out_size**2 * self.c_in * self.kernel**2

    def with_batch(self, batch: int) -> "ConvLayer":
        return dataclasses.replace(self, batch=batch)


@dataclass(frozen=True)
class PoolLayer:
    name: str
    channels: int
    size: int
    kernel: int = 2

    @property
    def x_shape(self):
        return (BATCH, self.channels, self.size, self.size)


CONV_LAYERS = [
    ConvLayer("simple_cnn.conv1 3-32 k3 32x32", 3, 32, 32, 3, 0),
    ConvLayer("simple_cnn.conv2 32-64 k3 15x15", 32, 64, 15, 3, 0),
    ConvLayer("lenet5.conv1 3-6 k5 32x32", 3, 6, 32, 5, 0),
    ConvLayer("lenet5.conv2 6-16 k5 14x14", 6, 16, 14, 5, 0),
    ConvLayer("vgg_small.conv1 3-32 k3p1 32x32", 3, 32, 32, 3, 1, bias=False),
    ConvLayer("vgg_small.conv2 32-32 k3p1 32x32", 32, 32, 32, 3, 1, bias=False),
    ConvLayer("vgg_small.conv3 32-64 k3p1 16x16", 32, 64, 16, 3, 1, bias=False),
    ConvLayer("vgg_small.conv4 64-64 k3p1 16x16", 64, 64, 16, 3, 1, bias=False),
    ConvLayer("vgg_small.conv5 64-128 k3p1 8x8", 64, 128, 8, 3, 1, bias=False),
    ConvLayer("vgg_small.conv6 128-128 k3p1 8x8", 128, 128, 8, 3, 1, bias=False),
]

POOL_LAYERS = [
    PoolLayer("simple_cnn.pool1 32x30x30", 32, 30),
    PoolLayer("simple_cnn.pool2 64x13x13", 64, 13),
    PoolLayer("lenet5.pool1 6x28x28", 6, 28),
    PoolLayer("vgg_small.pool1 32x32x32", 32, 32),
    PoolLayer("vgg_small.pool3 128x8x8", 128, 8),
]

def _resnet_layers(batch: int) -> list[ConvLayer]:
    """A ResNet-18/34 on 32x32 images: the 3x3 layers of each stage (stride 1, padding 1), the
    stride-2 3x3 layers that open stages 2-4 and their 1x1 stride-2 shortcuts; no biases
    (batch norm follows)."""
    b = f" b{batch}"
    stages = [(64, 32), (128, 16), (256, 8), (512, 4)]
    same = [ConvLayer(f"resnet {c}-{c} k3p1 {s}x{s}{b}", c, c, s, 3, 1, False, 1, batch)
            for c, s in stages]
    down = [ConvLayer(f"resnet {c}-{2 * c} k3s2p1 {s}x{s}{b}", c, 2 * c, s, 3, 1, False, 2, batch)
            for c, s in stages[:3]]
    shortcut = [ConvLayer(f"resnet {c}-{2 * c} k1s2 {s}x{s}{b}", c, 2 * c, s, 1, 0, False, 2, batch)
                for c, s in stages[:3]]
    return same + down + shortcut


def _airbench_layers(batch: int) -> list[ConvLayer]:
    """airbench94's 3x3 'same' convolutions (no biases) on the 31x31 output of its 2x2
    whitening conv of 32x32 images: block 1 (24 -> 64 at 31x31, pool, 64 -> 64 at 15x15),
    block 2 (64 -> 256 at 15x15, pool, 256 -> 256 at 7x7), block 3 (256 -> 256 at 7x7, pool,
    256 -> 256 at 3x3); and 64 -> 64 at 31x31."""
    b = f" b{batch}"
    shapes = [(24, 64, 31), (64, 64, 31), (64, 64, 15), (64, 256, 15), (256, 256, 7),
              (256, 256, 3)]
    return [ConvLayer(f"airbench {ci}-{co} k3p1 {s}x{s}{b}", ci, co, s, 3, 1, False, 1, batch)
            for ci, co, s in shapes]


RESNET_LAYERS = _resnet_layers(64) + _resnet_layers(256)
AIRBENCH_LAYERS = _airbench_layers(256) + _airbench_layers(1024)
#: Batch of the RESNET_LAYERS and AIRBENCH_LAYERS when a benchmark runs with timing disabled
#: (the normal test run): one call each stays cheap.
UNTIMED_BATCH = 2

MODELS = ["simple_cnn", "lenet5", "vgg_small"]
