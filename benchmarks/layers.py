"""The layers benchmarked: every conv and pool layer of simple_cnn, lenet5 and vgg_small at
batch 64 (float32, NCHW), named by model and position."""

from __future__ import annotations

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

    @property
    def x_shape(self):
        return (BATCH, self.c_in, self.size, self.size)

    @property
    def w_shape(self):
        return (self.c_out, self.c_in, self.kernel, self.kernel)

    @property
    def out_size(self):
        return self.size + 2 * self.padding - self.kernel + 1

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of one pass (forward, backward-input and backward-weight alike)."""
        return 2 * BATCH * self.c_out * self.out_size**2 * self.c_in * self.kernel**2


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

MODELS = ["simple_cnn", "lenet5", "vgg_small"]
