"""airbench94 in PyTorch for the CPU: the network, whitening init, optimiser, schedule, lookahead
and TTA of KellerJordan/cifar10-airbench ``legacy/airbench94.py``, ported line by line with the
GPU and half-precision parts removed (float32 or float64, NCHW or channels_last). The oracle of
fastconv's recipe in the tests and its PyTorch side in the benchmarks.

State-dict keys are airbench's, the same as :func:`fastconv.models.airbench94`'s, so
``net.load_state_dict(torch_state(fastconv_model))`` gives both the same weights.
"""

from __future__ import annotations

import time
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
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# -- data: airbench's CifarLoader on the CPU ------------------------------------------------------

def batch_flip_lr(inputs):
    flip_mask = (torch.rand(len(inputs)) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, inputs.flip(-1), inputs)


def batch_crop(images, crop_size):
    """airbench's random translation: a crop_size window of the pre-padded images, shifted by
    (sy, sx) in [-r, r]^2 per image."""
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2))
    images_out = torch.empty((len(images), 3, crop_size, crop_size), dtype=images.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            images_out[mask] = images[mask, :, r + sy:r + sy + crop_size, r + sx:r + sx + crop_size]
    return images_out


class CifarLoader:
    """airbench's ``CifarLoader`` with the GPU and float16 parts removed: uint8 NCHW images
    (as ``fastconv.data.load_cifar10`` gives them) in, normalised float32 batches out; the flip
    drawn once and then alternated per epoch, 2-pixel reflect-padded translation redrawn per
    epoch, a fresh permutation per epoch (torch's global generator)."""

    def __init__(self, images, labels, batch_size=500, aug=None, train=True,
                 channels_last=False):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
        if channels_last:
            self.images = self.images.to(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(np.asarray(labels)).long()
        self.proc_images = {}
        self.epoch = 0
        self.aug = aug or {}
        self.batch_size = batch_size
        self.drop_last = self.shuffle = train

    def normalize(self, images):
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return (images - mean) / std

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else ceil(n / self.batch_size)

    def __iter__(self):
        if self.epoch == 0:
            images = self.proc_images["norm"] = self.normalize(self.images)
            if self.aug.get("flip", False):
                images = self.proc_images["flip"] = batch_flip_lr(images)
            pad = self.aug.get("translate", 0)
            if pad > 0:
                self.proc_images["pad"] = F.pad(images, (pad,) * 4, "reflect")
        if self.aug.get("translate", 0) > 0:
            images = batch_crop(self.proc_images["pad"], self.images.shape[-2])
        elif self.aug.get("flip", False):
            images = self.proc_images["flip"]
        else:
            images = self.proc_images["norm"]
        if self.aug.get("flip", False) and self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        indices = (torch.randperm if self.shuffle else torch.arange)(len(images))
        for i in range(len(self)):
            idxs = indices[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[idxs], self.labels[idxs]


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


# -- the whole recipe (airbench's ``main``) --------------------------------------------------------

def train(x_train, y_train, *, seed=0, channels_last=False, stop_after_epochs=None,
          on_epoch_end=None, batch_size=None, epochs=None, whitening_images=5000):
    """airbench's ``main`` on the CPU in float32: whitening init, then the 9.9-epoch schedule
    with lookahead. ``stop_after_epochs`` ends early (the schedule stays the full run's);
    ``on_epoch_end(epoch, seconds, loss)`` gets each epoch's wall time, data preparation
    included. Returns ``(model, seconds)``: the model after the final lookahead sync (if the
    run was not stopped early) and the wall time from the whitening init on."""
    torch.manual_seed(seed)
    batch_size = batch_size or HYP["opt"]["batch_size"]
    epochs = HYP["opt"]["train_epochs"] if epochs is None else epochs
    loader = CifarLoader(x_train, y_train, batch_size, aug=HYP["aug"], channels_last=channels_last)
    steps = ceil(len(loader) * epochs)
    model = make_net(channels_last=channels_last)
    optimizer = make_optimizer(model, batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps))
    alpha_schedule = 0.95**5 * (torch.arange(steps + 1) / steps) ** 3
    lookahead = LookaheadState(model)
    criterion = loss_fn()
    start = time.perf_counter()
    init_whitening_conv(model[0], loader.normalize(loader.images[:whitening_images]))
    current = 0
    for epoch in range(ceil(epochs)):
        epoch_start = time.perf_counter()
        model[0].bias.requires_grad = epoch < HYP["opt"]["whiten_bias_epochs"]
        model.train()
        for inputs, labels in loader:
            loss = train_step(model, optimizer, scheduler, inputs, labels, criterion)
            current += 1
            if current % 5 == 0:
                lookahead.update(model, decay=alpha_schedule[current].item())
            if current >= steps:
                lookahead.update(model, decay=1.0)
                break
        if on_epoch_end is not None:
            on_epoch_end(epoch, time.perf_counter() - epoch_start, loss)
        if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs:
            break
    return model, time.perf_counter() - start
