"""airbench94 in PyTorch for the CPU: the network, whitening init, optimiser, schedule, lookahead
and TTA of KellerJordan/cifar10-airbench ``legacy/airbench94.py``, ported line by line with the
GPU and half-precision parts removed (float32 or float64, NCHW or channels_last). The oracle of
fastconv's recipe in the tests and its PyTorch side in the benchmarks.

State-dict keys are airbench's, the same as :func:`fastconv.models.airbench94`'s, so
``net.load_state_dict(torch_state(fastconv_model))`` gives both the same weights.
"""

from __future__ import annotations

from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HYP = {
    "opt": {"train_epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85,
            "weight_decay": 0.0153, "bias_scaler": 64.0, "label_smoothing": 0.2,
            "whiten_bias_epochs": 3},
    "aug": {"flip": True, "translate": 2},
    "net": {"widths": {"block1": 64, "block2": 256, "block3": 256},
            "batchnorm_momentum": 0.6, "scaling_factor": 1 / 9, "tta_level": 2},
}


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, padding="same", bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding,
                         bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


def make_net(dtype=torch.float32, channels_last: bool = False) -> nn.Sequential:
    """airbench's ``make_net`` on the CPU in ``dtype``."""
    widths = HYP["net"]["widths"]
    bn_momentum = HYP["net"]["batchnorm_momentum"]
    net = nn.Sequential(
        Conv(3, 24, 2, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(24, widths["block1"], bn_momentum),
        ConvGroup(widths["block1"], widths["block2"], bn_momentum),
        ConvGroup(widths["block2"], widths["block3"], bn_momentum),
        nn.MaxPool2d(3),
        Flatten(),
        nn.Linear(widths["block3"], 10, bias=False),
        Mul(HYP["net"]["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    net = net.to(dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def torch_state(fastconv_model, dtype=torch.float32) -> dict:
    """The fastconv model's state dict as tensors of ``dtype`` (integer buffers kept)."""
    return {k: (torch.from_numpy(np.array(v)).to(dtype) if np.asarray(v).dtype.kind == "f"
                else torch.from_numpy(np.array(v)))
            for k, v in fastconv_model.state_dict().items()}


# -- whitening init (airbench's, verbatim) ------------------------------------------------------

def get_patches(x, patch_shape):
    c, (h, w) = x.shape[1], patch_shape
    return x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).to(x.dtype)


def get_whitening_parameters(patches):
    n, c, h, w = patches.shape
    patches_flat = patches.view(n, -1)
    est_patch_covariance = (patches_flat.T @ patches_flat) / n
    eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO="U")
    return eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)


def init_whitening_conv(layer, train_set, eps=5e-4):
    patches = get_patches(train_set, patch_shape=layer.weight.data.shape[2:])
    eigenvalues, eigenvectors = get_whitening_parameters(patches)
    eigenvectors_scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))


# -- optimiser, schedule, lookahead ---------------------------------------------------------------

def make_optimizer(model, batch_size: int = 1024):
    """airbench's SGD with its two parameter groups."""
    momentum = HYP["opt"]["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = HYP["opt"]["lr"] / kilostep_scale
    wd = HYP["opt"]["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * HYP["opt"]["bias_scaler"]
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    other_params = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    param_configs = [dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                     dict(params=other_params, lr=lr, weight_decay=wd / lr)]
    return torch.optim.SGD(param_configs, momentum=momentum, nesterov=True)


def lr_factor(step: int, total_train_steps: int) -> float:
    """airbench's ``get_lr``."""
    warmup_steps = int(total_train_steps * 0.23)
    warmdown_steps = total_train_steps - warmup_steps
    if step < warmup_steps:
        frac = step / warmup_steps
        return 0.2 * (1 - frac) + 1.0 * frac
    frac = (step - warmup_steps) / warmdown_steps
    return 1.0 * (1 - frac) + 0.07 * frac


class LookaheadState:
    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float, torch.double):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


def loss_fn():
    return nn.CrossEntropyLoss(label_smoothing=HYP["opt"]["label_smoothing"], reduction="none")


def train_step(model, optimizer, scheduler, inputs, labels, criterion) -> float:
    """airbench's training step (forward, summed loss, backward, SGD, schedule); the loss."""
    outputs = model(inputs)
    loss = criterion(outputs, labels).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


# -- test-time augmentation (airbench's infer) -----------------------------------------------------

def infer(model, images, tta_level=0, batch_size=2000):
    def infer_basic(inputs, net):
        return net(inputs).clone()

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,) * 4, "reflect")
        inputs_translate_list = [padded_inputs[:, :, 0:32, 0:32], padded_inputs[:, :, 2:34, 2:34]]
        logits_translate_list = [infer_mirror(inputs_translate, net)
                                 for inputs_translate in inputs_translate_list]
        logits_translate = torch.stack(logits_translate_list).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    infer_fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    with torch.no_grad():
        return torch.cat([infer_fn(inputs, model) for inputs in images.split(batch_size)])


def total_steps(n_train: int, batch_size: int = 1024, epochs: float = 9.9) -> int:
    return ceil((n_train // batch_size) * epochs)
