"""The cases shared by the export tests (to_torch, to_onnx): every layer and container of
fastconv.nn with non-default options, as (id, builder, input shape)."""

from __future__ import annotations

from collections import OrderedDict

from fastconv import nn


def residual_block():
    return nn.Sequential(nn.Residual(
        nn.Sequential(nn.Conv2d(4, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)),
        shortcut=nn.Sequential(nn.Conv2d(4, 6, 1, 2, bias=False), nn.BatchNorm2d(6))), nn.ReLU())


# (id, builder, input shape): every layer and container of fastconv.nn, with non-default options
LAYERS = [
    ("conv2d", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 7, 8)),
    ("conv2d_same_dilated_grouped", lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2,
                                                      groups=2, bias=False), (2, 4, 9, 7)),
    ("conv2d_valid_rect", lambda: nn.Conv2d(3, 2, (3, 1), stride=(1, 2), padding="valid"),
     (2, 3, 6, 6)),
    ("conv2d_reflect", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2),
                                         padding_mode="reflect"), (2, 4, 7, 8)),
    ("conv2d_replicate_same_even", lambda: nn.Conv2d(3, 4, (2, 4), padding="same",
                                                     padding_mode="replicate"), (2, 3, 5, 6)),
    ("conv2d_circular_dilated_grouped", lambda: nn.Conv2d(4, 4, 3, padding=(2, 1), dilation=2,
                                                          groups=2, padding_mode="circular"),
     (2, 4, 6, 5)),
    ("conv_relu_pool_reflect", lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.MaxPool2d(2)),
     (2, 3, 6, 6)),
    ("conv_transpose2d", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                                    output_padding=1, groups=2), (2, 4, 5, 4)),
    ("conv_transpose2d_dilated", lambda: nn.ConvTranspose2d(3, 2, 2, dilation=2, bias=False),
     (2, 3, 4, 4)),
    ("linear", lambda: nn.Linear(5, 3), (2, 4, 5)),
    ("linear_no_bias", lambda: nn.Linear(5, 3, bias=False), (4, 5)),
    ("batch_norm2d", lambda: nn.BatchNorm2d(4, eps=1e-3, momentum=0.2), (3, 4, 5, 5)),
    ("batch_norm2d_cumulative", lambda: nn.BatchNorm2d(4, momentum=None), (3, 4, 2, 2)),
    ("batch_norm2d_no_affine", lambda: nn.BatchNorm2d(4, affine=False), (3, 4, 2, 3)),
    ("batch_norm2d_no_stats", lambda: nn.BatchNorm2d(4, track_running_stats=False), (3, 4, 2, 2)),
    ("batch_norm2d_no_bias", lambda: nn.BatchNorm2d(4, bias=False), (3, 4, 2, 3)),
    ("batch_norm2d_no_bias_no_stats",
     lambda: nn.BatchNorm2d(4, track_running_stats=False, bias=False), (3, 4, 2, 2)),
    ("batch_norm2d_no_bias_relu", lambda: nn.Sequential(nn.BatchNorm2d(4, bias=False), nn.ReLU()),
     (3, 4, 3, 3)),
    ("batch_norm1d", lambda: nn.BatchNorm1d(5), (6, 5)),
    ("batch_norm1d_no_bias", lambda: nn.BatchNorm1d(5, bias=False), (6, 5)),
    ("batch_norm1d_3d", lambda: nn.BatchNorm1d(5), (4, 5, 3)),
    ("group_norm", lambda: nn.GroupNorm(2, 4, eps=1e-3), (3, 4, 5, 5)),
    ("group_norm_no_bias_3d", lambda: nn.GroupNorm(3, 6, bias=False), (2, 6, 7)),
    ("group_norm_no_affine", lambda: nn.GroupNorm(1, 4, affine=False), (2, 4, 3, 2)),
    ("instance_norm2d", lambda: nn.InstanceNorm2d(4, eps=1e-3), (3, 4, 5, 5)),
    ("instance_norm2d_affine_no_bias", lambda: nn.InstanceNorm2d(4, affine=True, bias=False),
     (2, 4, 3, 4)),
    ("instance_norm2d_running_stats", lambda: nn.InstanceNorm2d(
        3, momentum=0.3, affine=True, track_running_stats=True), (2, 3, 4, 2)),
    ("instance_norm2d_running_stats_momentum_none", lambda: nn.InstanceNorm2d(
        3, momentum=None, track_running_stats=True), (2, 3, 3, 3)),
    ("local_response_norm", lambda: nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5),
     (2, 5, 3, 4)),
    ("local_response_norm_even_3d", lambda: nn.LocalResponseNorm(4, alpha=0.3, k=2.0), (2, 6, 5)),
    ("local_response_norm_5d", lambda: nn.LocalResponseNorm(5), (2, 7, 2, 3, 2)),
    ("layer_norm", lambda: nn.LayerNorm((3, 4), eps=1e-4), (2, 5, 3, 4)),
    ("layer_norm_no_bias", lambda: nn.LayerNorm(4, bias=False), (3, 4)),
    ("layer_norm_no_affine", lambda: nn.LayerNorm(4, elementwise_affine=False), (3, 4)),
    ("max_pool2d", lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 7, 8)),
    ("max_pool2d_dilated", lambda: nn.MaxPool2d(2, 1, dilation=2), (2, 3, 6, 6)),
    ("avg_pool2d", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     (2, 3, 7, 8)),
    ("avg_pool2d_divisor", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=5),
     (2, 3, 7, 8)),
    ("avg_pool2d_divisor_2x2", lambda: nn.AvgPool2d(2, divisor_override=-3), (2, 3, 6, 6)),
    ("adaptive_avg_pool2d", lambda: nn.AdaptiveAvgPool2d((2, None)), (2, 3, 6, 5)),
    ("global_avg_pool", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 4, 4)),
    ("upsample_scale", lambda: nn.Upsample(scale_factor=2), (2, 3, 3, 4)),
    ("upsample_size", lambda: nn.Upsample(size=(5, 7)), (2, 3, 3, 4)),
    ("relu", nn.ReLU, (2, 3, 4)),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), (2, 3, 4)),
    ("tanh", nn.Tanh, (2, 3, 4)),
    ("sigmoid", nn.Sigmoid, (2, 3, 4)),
    ("gelu", nn.GELU, (2, 3, 4)),
    ("gelu_tanh", lambda: nn.GELU(approximate="tanh"), (2, 3, 4)),
    ("silu", nn.SiLU, (2, 3, 4)),
    ("relu6", nn.ReLU6, (2, 3, 4)),
    ("elu", lambda: nn.ELU(0.7), (2, 3, 4)),
    ("hardsigmoid", nn.Hardsigmoid, (2, 3, 4)),
    ("hardswish", nn.Hardswish, (2, 3, 4)),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 1.5), (2, 3, 4)),
    ("softplus", lambda: nn.Softplus(2.0, 1.0), (2, 3, 4)),
    ("softplus_default", nn.Softplus, (2, 3, 4)),
    ("mish", nn.Mish, (2, 3, 4)),
    ("log_sigmoid", nn.LogSigmoid, (2, 3, 4)),
    ("prelu_shared", nn.PReLU, (2, 3, 4)),
    ("prelu_channels", lambda: nn.PReLU(3, init=0.1), (2, 3, 4, 5)),
    ("softmax", lambda: nn.Softmax(1), (2, 3, 4)),
    ("log_softmax", lambda: nn.LogSoftmax(-1), (2, 3, 4, 5)),
    ("dropout", lambda: nn.Dropout(0.3), (2, 3, 4)),
    ("dropout2d", lambda: nn.Dropout2d(0.3), (2, 3, 4, 4)),
    ("zero_pad2d", lambda: nn.ZeroPad2d((1, 2, 0, 3)), (2, 3, 4, 5)),
    ("constant_pad2d", lambda: nn.ConstantPad2d(2, -1.5), (2, 3, 4, 5)),
    ("reflection_pad2d", lambda: nn.ReflectionPad2d((3, 1, 2, 0)), (2, 3, 4, 5)),
    ("replication_pad2d", lambda: nn.ReplicationPad2d(2), (2, 3, 1, 5)),
    ("circular_pad2d", lambda: nn.CircularPad2d((0, 5, 4, 1)), (2, 3, 4, 5)),
    ("flatten", lambda: nn.Flatten(1, 2), (2, 3, 4, 5)),
    ("unflatten", lambda: nn.Unflatten(1, (3, -1, 2)), (2, 12, 5)),
    ("unflatten_last", lambda: nn.Unflatten(-1, (2, 3)), (2, 6)),
    ("identity", nn.Identity, (2, 3)),
    ("mul", lambda: nn.Mul(1 / 9), (2, 3)),
    ("sequential_named", lambda: nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), act=nn.ReLU(), pool=nn.MaxPool2d(2))), (2, 3, 6, 6)),
    ("residual_identity", lambda: nn.Residual(nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())), (2, 3, 5, 5)),
    ("residual_block_projection", residual_block, (2, 4, 6, 6)),
    ("concat_named_branches", lambda: nn.Concat(OrderedDict(
        a=nn.Conv2d(3, 2, 1), b=nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(3, 4, 1)),
        c=nn.Residual(nn.Conv2d(3, 3, 3, padding=1)))), (2, 3, 5, 5)),
    ("concat_last_dim", lambda: nn.Concat(nn.Linear(5, 3), nn.Tanh(), dim=-1), (4, 5)),
]
