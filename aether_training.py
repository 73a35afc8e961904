"""The training loop behind aether_train.py, for any super-resolution nn.Module.

``Trainer(model, options, processes, command=..., policy=...)`` trains a ready network:

* Data: every training image is decoded once (``aether_data.read_image``) and held in memory;
  each step draws random HR crops of ``lr_patch * scale`` pixels with random flips and 90
  degree rotations, and makes the LR input on the fly with a degradation recipe
  (``aether_degrade.RECIPES``: ``robust`` by default, ``bicubic`` for the benchmark protocol
  alone). Patch sampling and the degradation's random draws share one ``torch.Generator``
  (seeded ``seed + rank``, saved in the training state), so both are reproducible and resumable.
  Validation reports PSNR under every protocol of ``aether_degrade.PROTOCOLS``, each next to
  bicubic's on the same LR.
* Optimisation: L1 or Charbonnier loss, AdamW, linear warmup then cosine decay to ``min_lr``,
  optional gradient clipping, and an EMA of the weights; validation and ``params_ema`` use the
  EMA model. An AetherNet can switch to its quantization-aware form mid-run (``qat_after``).
* Output (neosr / traiNNer-redux layout): ``net_g_{step}.pth`` and ``net_g_latest.pth`` hold
  ``{"params", "params_ema", "metadata"}``; ``training_state.pth`` holds everything ``resume``
  needs to continue bit-exactly (on the same hardware and thread count); ``train.log``.

What the trainer needs to know about a network beyond nn.Module (its name, checkpoint
metadata, its quantization-aware form and how its EMA copy is made) is its ``TrainingPolicy``:
``TrainingPolicy()`` for any float network, ``AetherNetPolicy()`` for AetherNet.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import aether_arch
from aether_cli import InputError, one_line, prepare_output_dir
from aether_data import (
    ImageReadError,
    UnmeasurableImageError,
    evaluation_pairs,
    image_files,
    psnr,
    read_image,
    to_image,
    to_tensor,
)
from aether_degrade import PROTOCOLS, RECIPES, Recipe, parse_kernels

TRAINING_STATE_FORMAT = "aether_train_state/1"
TRAINING_STATE_NAME = "training_state.pth"
CHARBONNIER_EPS = 1e-3
# The QAT phase's default peak learning rate, relative to --lr. Measured on aether_tiny x2
# (700 steps, QAT after 560, from the float EMA): lr / 10 ended 0.18 dB below the float EMA,
# lr / 40 0.01 dB below; a QAT fine-tune needs small steps on the fused weights.
QAT_LR_FACTOR = 1 / 40
# Options that fix the network or the phase layout: a saved state only fits a run with the same.
STRUCTURAL_OPTIONS = ("preset", "scale", "num_blocks", "qat", "qat_after")
# What runs did before an option existed, where that differs from its default: bicubic LR
# alone, every crop kept.
BEFORE_OPTION = {"degradation": "bicubic", "min_patch_detail": 0.0}
# Options that override one field of the degradation recipe (None: the recipe's value).
RECIPE_OVERRIDES = ("kernels", "blur_prob", "blur_sigma", "noise_prob", "noise_sigma", "jpeg_prob", "jpeg_quality")


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


class TrainingDiverged(Exception):
    """The loss or the weights stopped being finite numbers: the run ends (exit code 1) with the
    last finite checkpoint left in place."""


@dataclass
class TrainingOptions:
    """Everything a run is configured by, named and defaulted as aether_train.py's options
    (``--lr-patch`` is ``lr_patch``); saved in the training state, so a resumed run can be
    checked against it. ``check()`` refuses combinations that cannot train."""

    train_dir: list[str]  # folders of HR training images
    steps: int
    val_dir: str | None = None
    lr_patch: int = 48
    batch_size: int = 16
    min_patch_detail: float = 0.005  # redraw flatter crops (PatchSampler); 0: keep every crop
    degradation: str = "robust"  # a name in aether_degrade.RECIPES; the fields below override it
    kernels: str | None = None  # "KERNEL:P,KERNEL:P,..."
    blur_prob: float | None = None
    blur_sigma: list[float] | None = None
    noise_prob: float | None = None
    noise_sigma: list[float] | None = None
    jpeg_prob: float | None = None
    jpeg_quality: list[int] | None = None
    preset: str | None = None  # the AetherNet preset trained (for the record); None for other networks
    scale: int = 2
    num_blocks: int | None = None
    pretrained: str | None = None
    qat: bool = False
    qat_after: int | None = None
    qat_lr: float | None = None  # default: QAT_LR_FACTOR * lr
    loss: str = "l1"
    lr: float = 2e-3
    min_lr: float = 1e-6
    warmup: int = 0
    weight_decay: float = 0.0
    beta2: float = 0.999  # AdamW's second-moment decay (traiNNer-redux's templates use 0.99)
    grad_clip: float = 0.0
    ema_decay: float = 0.999
    freeze_norm_frac: float = 0.1
    out_dir: str | None = None
    resume: str | None = None
    stop_at: int | None = None
    val_every: int = 500
    save_every: int = 1000
    log_every: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    threads: int | None = None

    def check(self) -> "TrainingOptions":
        """Itself, with --qat-lr's default filled in; InputError (naming the options) if they cannot train."""
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise InputError(f"need 0 <= --min-lr <= --lr and --lr > 0, got --lr {self.lr} --min-lr {self.min_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.freeze_norm_frac <= 1.0:
            raise InputError(f"--freeze-norm-frac must be in [0, 1], got {self.freeze_norm_frac}")
        if self.qat_after is not None:
            if self.qat:
                raise InputError("use either --qat (QAT from the start) or --qat-after N, not both")
            if not 0 < self.qat_after < self.steps:
                raise InputError(
                    f"--qat-after must be between 1 and --steps - 1 ({self.steps - 1}), got {self.qat_after}"
                )
        if self.qat_lr is None:
            self.qat_lr = self.lr * QAT_LR_FACTOR
        if self.stop_at is not None and not 0 < self.stop_at <= self.steps:
            raise InputError(f"--stop-at must be between 1 and --steps ({self.steps}), got {self.stop_at}")
        if self.out_dir is None and self.resume is None:
            raise InputError("--out-dir is required (unless --resume gives the run's folder)")
        self.recipe()
        return self

    def recipe(self) -> Recipe:
        """The degradation recipe: ``degradation`` with the overrides given; InputError (naming
        the options) if they do not make one."""
        if self.degradation not in RECIPES:
            raise InputError(f"--degradation {self.degradation!r}: choose from {', '.join(RECIPES)}")
        try:
            overrides = {name: getattr(self, name) for name in RECIPE_OVERRIDES if getattr(self, name) is not None}
            if "kernels" in overrides:
                overrides["kernels"] = parse_kernels(overrides["kernels"])
            for name in ("blur_sigma", "noise_sigma", "jpeg_quality"):
                if name in overrides:
                    overrides[name] = tuple(overrides[name])
            return dataclasses.replace(RECIPES[self.degradation], **overrides)
        except ValueError as exc:
            raise InputError(f"--degradation {self.degradation} with the options given: {exc}") from None

    def flags(self) -> list[str]:
        """The aether_train.py options that give these options (those that differ from the
        defaults), for the record: ``aether_train.py --preset ... FLAGS`` repeats the run."""
        flags = []
        for option in dataclasses.fields(self):
            value = getattr(self, option.name)
            if value == option.default or value is None or value is False:
                continue
            if option.name == "qat_lr" and value == self.lr * QAT_LR_FACTOR:  # check()'s default
                continue
            flag = "--" + option.name.replace("_", "-")
            flags += [flag] if value is True else [flag, *map(str, value if isinstance(value, list) else [value])]
        return flags


def seed_everything(seed: int) -> None:
    """Seed the global random generators before the network is built: identical initial
    weights on every rank and in every repetition of a run."""
    torch.manual_seed(seed)
    random.seed(seed)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system; True if it
    took. By default it unmaps every freed block above its mmap threshold (32 MB at most) and
    trims the heap's free top above 128 KB, so each CPU training step faults its activations
    back in page by page: UltraCompact's steps (16 x 96² LR patches) spent 37% of their time
    in the kernel, 4.85 s a step against 3.05 s with this. The process keeps its peak size,
    which a training run reaches every step anyway. A no-op (False) off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_trim_threshold, 2**31 - 1)) and bool(mallopt(m_mmap_threshold, 2**30))


# ---------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_processes(device_option: str) -> Processes:
    use_cuda = device_option == "cuda" or (device_option == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available to this PyTorch")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Processes(dist.get_rank(), world_size, device)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _read(path: Path, notes: list[str]) -> tuple[np.ndarray | None, list[str]]:
    """An image and its conversions, or (None, []) with a note when it cannot be read: one bad
    file (corrupt, a decompression bomb) must not end a long run or stop it from starting."""
    try:
        return read_image(path)
    except (ImageReadError, OSError) as exc:
        notes.append(f"skipped {exc}")
        return None, []


def load_training_images(folders: Sequence[str], hr_patch: int, notes: list[str]) -> list[torch.Tensor]:
    """Every readable training image big enough for one HR crop, as a (3, H, W) tensor: uint8
    for 8-bit files (a quarter of float32's memory: a folder of 4K wallpapers fits), float32 in
    [0, 1] for 16-bit ones."""
    images, too_small, largest = [], [], (0, 0)
    for folder in folders:
        for path in image_files(folder, "--train-dir"):
            image, conversions = _read(path, notes)
            if image is None:
                continue
            if conversions:
                notes.append(f"{path}: {', '.join(conversions)}")
            height, width = image.shape[:2]
            largest = max(largest, (height, width), key=min)
            if height < hr_patch or width < hr_patch:
                too_small.append(path.name)
                continue
            tensor = to_tensor(image)[0]
            # k / 255 in float32 back to k exactly; PatchSampler divides again, giving the same floats
            images.append(tensor if "16-bit" in conversions else (tensor * 255).round_().to(torch.uint8))
    if not images and not too_small:
        raise InputError(f"--train-dir: no readable images ({'; '.join(notes)})")
    if not images:
        raise InputError(
            f"all {len(too_small)} training images are smaller than the {hr_patch}x{hr_patch} HR "
            f"crop (--lr-patch x --scale; the largest is {largest[1]}x{largest[0]}); need images "
            f"of at least {hr_patch}x{hr_patch} pixels or a smaller --lr-patch"
        )
    if too_small:
        notes.append(f"skipped {len(too_small)} image(s) smaller than {hr_patch}x{hr_patch}: {', '.join(too_small)}")
    return images


@dataclass
class ValidationImage:
    name: str
    hr: np.ndarray  # (H, W, 3), mod-cropped to the scale
    lr: dict[str, torch.Tensor]  # protocol -> (1, 3, H / scale, W / scale), on the training device
    bicubic_psnr: dict[str, float]  # protocol -> the baseline, which does not change: computed once


def load_validation_images(folder: str, scale: int, device: torch.device, notes: list[str]) -> list[ValidationImage]:
    images = []
    for path in image_files(folder, "--val-dir"):
        image, _ = _read(path, notes)
        if image is None:
            continue
        try:
            pairs = evaluation_pairs(image, scale)
        except UnmeasurableImageError as exc:
            raise InputError(f"validation image {str(path)!r}: {exc}; leave it out of --val-dir") from None
        hr = next(iter(pairs.values()))[0]
        lrs = {protocol: lr.to(device) for protocol, (_, lr, _) in pairs.items()}
        images.append(ValidationImage(path.name, hr, lrs, {p: bicubic for p, (_, _, bicubic) in pairs.items()}))
    if not images:
        raise InputError(f"--val-dir {folder!r}: no readable images ({'; '.join(notes)})")
    return images


class PatchSampler:
    """Random HR crops with a random one of the 8 flips / 90-degree rotations, drawn from
    images held in memory with a dedicated generator (so sampling is resumable).

    A crop whose detail (mean absolute difference of horizontally and vertically adjacent grey
    pixels) is below ``min_detail`` is drawn again, up to DETAIL_TRIES times: wallpapers are
    mostly flat (on the fetched training set half of all crops are, std < 0.02), and a flat
    crop teaches nothing while costing a full step's share."""

    DETAIL_TRIES = 4

    def __init__(self, images: list[torch.Tensor], hr_patch: int, seed: int, min_detail: float = 0.0) -> None:
        self.images = images
        self.hr_patch = hr_patch
        self.min_detail = min_detail
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> torch.Tensor:
        g = self.generator
        picks = torch.randint(len(self.images), (batch_size,), generator=g).tolist()
        corners = torch.rand(batch_size, 2, generator=g).tolist()
        transforms = torch.randint(0, 2, (batch_size, 3), generator=g).bool().tolist()
        patches = []
        for index, (y, x), (flip_h, flip_v, transpose) in zip(picks, corners, transforms, strict=True):
            patch = self._crop(self.images[index], y, x)
            for _ in range(self.DETAIL_TRIES if self.min_detail else 0):
                if detail(patch) >= self.min_detail:
                    break
                index = int(torch.randint(len(self.images), (1,), generator=g))
                y, x = torch.rand(2, generator=g).tolist()
                patch = self._crop(self.images[index], y, x)
            if flip_h:
                patch = patch.flip(-1)
            if flip_v:
                patch = patch.flip(-2)
            if transpose:  # with the flips: all 8 symmetries of the square
                patch = patch.transpose(-1, -2)
            patches.append(patch)
        return torch.stack(patches)

    def _crop(self, image: torch.Tensor, y: float, x: float) -> torch.Tensor:
        size = self.hr_patch
        top = int(y * (image.shape[1] - size + 1))
        left = int(x * (image.shape[2] - size + 1))
        patch = image[:, top : top + size, left : left + size]
        return patch.float() / 255 if patch.dtype == torch.uint8 else patch


def detail(patch: torch.Tensor) -> float:
    """Mean absolute difference of adjacent pixels of a (3, H, W) patch's grey image, in [0, 1]."""
    grey = patch.mean(0)
    return float(((grey[1:] - grey[:-1]).abs().mean() + (grey[:, 1:] - grey[:, :-1]).abs().mean()) / 2)


# ---------------------------------------------------------------------------------------
# Network policies, EMA, optimisation
# ---------------------------------------------------------------------------------------


class TrainingPolicy:
    """What the trainer needs to know about a network beyond nn.Module. This one fits any
    float network: no quantization-aware form, and an EMA that is a deep copy."""

    has_qat = False

    def describe(self, model: nn.Module) -> str:
        return type(model).__name__

    def metadata(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """JSON-safe description of the network, saved with its weights."""
        return {"architecture": type(model).__name__, **extra}

    def is_qat(self, model: nn.Module) -> bool:
        return False

    def to_qat(self, model: nn.Module) -> None:
        raise TypeError(f"{self.describe(model)} has no quantization-aware form")

    def needs_ranges(self, model: nn.Module) -> bool:
        """Whether the next forward pass of ``model`` would set its activation ranges."""
        return False

    def ema_copy(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

    def before_ema_update(self, ema: nn.Module, model: nn.Module) -> None:
        pass

    def after_ema_update(self, ema: nn.Module) -> None:
        pass


class AetherNetPolicy(TrainingPolicy):
    """AetherNet: its preset name and checkpoint metadata, its QAT form, and an EMA copy that
    stays a faithful QAT model (see the two EMA hooks)."""

    has_qat = True

    def describe(self, model: aether_arch.AetherNet) -> str:
        form = "QAT" if model.qat else "float"
        return f"{aether_arch.preset_name(model.config)} x{model.scale} ({form}, {model.config['num_blocks']} blocks)"

    def metadata(self, model: aether_arch.AetherNet, **extra: Any) -> dict[str, Any]:
        return aether_arch.checkpoint_metadata(model, **extra)

    def is_qat(self, model: aether_arch.AetherNet) -> bool:
        return model.qat

    def to_qat(self, model: aether_arch.AetherNet) -> None:
        aether_arch.prepare_qat(model)

    def needs_ranges(self, model: aether_arch.AetherNet) -> bool:
        return model.qat and not aether_arch.is_calibrated(model)

    def ema_copy(self, model: aether_arch.AetherNet) -> aether_arch.AetherNet:
        ema = type(model)(**model.config, qat=model.qat, int8_profile=model.int8_profile)
        ema.load_state_dict(model.state_dict())
        return ema

    def before_ema_update(self, ema: aether_arch.AetherNet, model: aether_arch.AetherNet) -> None:
        """An activation quantizer whose range the model has just set is adopted as is:
        averaging with the uninitialised scale of 1.0 would take thousands of steps to forget."""
        sources = dict(model.named_modules())
        for name, quantizer in ema.named_modules():
            if isinstance(quantizer, aether_arch.ActQuant) and not quantizer.is_initialized():
                if sources[name].is_initialized():
                    quantizer.load_state_dict(sources[name].state_dict())

    def after_ema_update(self, ema: aether_arch.AetherNet) -> None:
        """Each quantized conv's weight scale follows the EMA's own weights."""
        for module in ema.modules():
            if isinstance(module, aether_arch.QuantConv2d):
                module.refresh_weight_scale()


class ModelEMA:
    """Exponential moving average of a model's parameters; buffers (BatchNorm statistics,
    quantizer state) are copied, since averaging them has no meaning. The EMA copy is always
    in eval mode; the policy's hooks keep a QAT copy faithful."""

    def __init__(self, model: nn.Module, decay: float, policy: TrainingPolicy) -> None:
        self.decay = decay
        self.policy = policy
        self.module = policy.ema_copy(model)
        self.module.to(next(model.parameters()).device).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        self.policy.before_ema_update(self.module, model)
        weight = 1.0 - self.decay_at(step)
        for ema_param, param in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param.detach(), weight)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.policy.after_ema_update(self.module)

    def switch_to_qat(self) -> None:
        self.policy.to_qat(self.module)
        self.module.eval().requires_grad_(False)


@dataclass
class Phase:
    """A stretch of training with one optimizer and one warmup + cosine schedule."""

    lr: float
    first_step: int
    end_step: int
    warmup: int


def current_phase(options: TrainingOptions, qat: bool) -> Phase:
    if options.qat_after is None:
        return Phase(options.lr, 0, options.steps, options.warmup)
    if not qat:
        return Phase(options.lr, 0, options.qat_after, options.warmup)
    # Fresh optimizer, no warmup: the fused QAT parameters are new tensors (the branch weights'
    # Adam moments do not map onto them), and the QAT phase is a fine-tuning at a lower LR.
    return Phase(options.qat_lr, options.qat_after, options.steps, 0)


def make_optimizer(
    model: nn.Module, phase: Phase, options: TrainingOptions
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=phase.lr, betas=(0.9, options.beta2), weight_decay=options.weight_decay
    )
    steps = phase.end_step - phase.first_step
    floor = min(1.0, options.min_lr / phase.lr)  # a QAT LR below --min-lr stays flat: it never rises

    def lr_factor(i: int) -> float:
        if i < phase.warmup:
            return (i + 1) / phase.warmup
        progress = min(1.0, (i - phase.warmup) / max(1, steps - phase.warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "l1":
        return F.l1_loss
    return lambda sr, hr: torch.sqrt((sr - hr) ** 2 + CHARBONNIER_EPS**2).mean()


def set_training_mode(model: nn.Module, freeze_norm: bool) -> None:
    model.train()
    if freeze_norm:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


@torch.no_grad()
def initialise_quantizer_ranges(model: nn.Module, lr_batch: torch.Tensor) -> None:
    """Set every activation range from this batch before the step that trains on it (what the
    first training forward would do anyway). Done explicitly, outside DDP, so that the wrapper
    built afterwards broadcasts rank 0's ranges instead of each rank keeping its own."""
    model(lr_batch)


def wrap_for_training(model: nn.Module, processes: Processes) -> nn.Module:
    if not processes.distributed:
        return model
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def validate(model: nn.Module, images: list[ValidationImage], scale: int) -> dict[str, dict[str, Any]]:
    """Per LR protocol: mean RGB PSNR (8-bit, border = scale) of the model and of bicubic
    upscaling of the same LR, and both per image."""
    results = {}
    for protocol in PROTOCOLS:
        per_image = {}
        for image in images:
            sr = model(image.lr[protocol])
            per_image[image.name] = (psnr(to_image(sr), image.hr, border=scale), image.bicubic_psnr[protocol])
        model_mean = sum(m for m, _ in per_image.values()) / len(per_image)
        bicubic_mean = sum(b for _, b in per_image.values()) / len(per_image)
        results[protocol] = {"psnr": model_mean, "bicubic_psnr": bicubic_mean, "per_image": per_image}
    return results


# ---------------------------------------------------------------------------------------
# Checkpoints and training state
# ---------------------------------------------------------------------------------------


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a file."""
    with aether_arch.atomic_write(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)  # through a Python file: a failing disk raises OSError with its errno


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Compact CPU copies (no views, no shared storage), as loaders like Spandrel expect."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def rng_states(sampler_states: list[torch.Tensor]) -> dict[str, Any]:
    """Every random state as tensors / lists of ints (loadable with weights_only=True)."""
    version, internal, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss_next],
        "patch_sampler": sampler_states,  # one per rank
    }


def restore_rng_states(
    states: dict[str, Any],
    sampler: PatchSampler,
    processes: Processes,
    seed: int,
    step: int,
    log: Callable[[str], None],
) -> None:
    torch.set_rng_state(states["torch_cpu"])
    if states["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    sampler_states = states["patch_sampler"]
    if len(sampler_states) == processes.world_size:
        sampler.generator.set_state(sampler_states[processes.rank])
    else:  # a different process count: the patch stream cannot continue as it was
        sampler.generator.manual_seed(seed + processes.rank + 1_000_003 * step)
        log(
            f"note: the saved run had {len(sampler_states)} process(es), this one has "
            f"{processes.world_size}; patch sampling is re-seeded, so the run is not bit-exact"
        )


def gather_sampler_states(sampler: PatchSampler, processes: Processes) -> list[torch.Tensor]:
    """Every rank's patch-generator state (a collective call under DDP)."""
    state = sampler.generator.get_state()
    if not processes.distributed:
        return [state]
    device = processes.device if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered = [torch.empty_like(state, device=device) for _ in range(processes.world_size)]
    dist.all_gather(gathered, state.to(device))
    return [s.cpu() for s in gathered]


def read_training_state(location: str) -> tuple[dict[str, Any], Path]:
    path = Path(location)
    if path.is_dir():
        path = path / TRAINING_STATE_NAME
    if not path.is_file():
        raise InputError(f"--resume: {str(path)!r} not found")
    try:
        aether_arch.check_archive_size(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except aether_arch.AetherCheckpointError as exc:
        raise InputError(f"--resume: {exc}") from None
    except Exception as exc:  # torch raises many types for bad files; all mean the same
        raise InputError(
            f"--resume: {str(path)!r} is not a readable training state: {aether_arch.error_summary(exc)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise InputError(f"--resume: {str(path)!r} is not an aether_train.py training state")
    fields = {"step": int, "qat": bool, "config": str, "model": dict, "ema": dict, "rng": dict}
    wrong = [name for name, kind in fields.items() if not isinstance(state.get(name), kind)]
    config = aether_arch.parse_json_object(state["config"]) if not wrong else {}
    if wrong or not config or not 0 <= state["step"] < 2**62:
        raise InputError(
            f"--resume: {str(path)!r} is a damaged training state ({', '.join(wrong) or 'config'} unreadable)"
        )
    return state, path


def check_resumable(state: dict[str, Any], options: TrainingOptions, notes: list[str]) -> None:
    """Refuse a state that cannot continue under these options; note options that changed."""
    saved = json.loads(state["config"])
    for name, value in BEFORE_OPTION.items():  # states saved before these options existed
        saved.setdefault(name, value)
    for option in dataclasses.fields(TrainingOptions):  # other options added since: they had today's default
        if option.default is not dataclasses.MISSING:
            saved.setdefault(option.name, option.default)
    for name in STRUCTURAL_OPTIONS:
        if saved.get(name) != getattr(options, name):
            raise InputError(
                f"--resume: the saved run used --{name.replace('_', '-')} {saved.get(name)}, "
                f"this one {getattr(options, name)}; these must match"
            )
    stop = options.stop_at or options.steps
    if state["step"] >= stop:
        raise InputError(
            f"--resume: the saved run is at step {state['step']}, nothing to do up to "
            f"{'--stop-at' if options.stop_at else '--steps'} {stop}"
        )
    # options that change neither the weights nor the random streams
    ignored = {"resume", "out_dir", "stop_at", "pretrained", "val_dir", "val_every", "save_every", "log_every"}
    changed = [
        f"{k} {saved.get(k)!r} -> {v!r}"
        for k, v in dataclasses.asdict(options).items()
        if k not in ignored and saved.get(k) != v
    ]
    if changed:
        notes.append("resuming with changed options (no longer bit-exact): " + "; ".join(changed))


# ---------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------


class RunLog:
    """Rank 0's log: each line goes to the console (around the progress bar) and, with a
    timestamp, to OUT/train.log. Other ranks log nothing."""

    def __init__(self, path: Path | None) -> None:
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def __call__(self, message: str) -> None:
        if self.file is None:
            return
        message = one_line(message)
        tqdm.write(message)
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def logged_training_seconds(text: str) -> float:
    """Seconds of training steps in a train.log, summed over its sittings (one per "command:"
    line): a sitting's summary ("... steps in N s of training steps", written when it finishes
    or is stopped), or for one killed before it could write one, its last logged step at its
    last logged rate (steps it ran past the state it was resumed from count: they cost time)."""
    total = 0.0
    for sitting in re.split(r"^\S+ \S+  command: ", text, flags=re.MULTILINE)[1:]:
        summaries = re.findall(r"steps in ([0-9.]+) s of training steps", sitting)
        if summaries:
            total += float(summaries[-1])
            continue
        logged = re.findall(r"step ([0-9]+)/[0-9]+: loss .* ([0-9.]+) it/s$", sitting, flags=re.MULTILINE)
        resumed = re.findall(r"resumed from .* at step ([0-9]+)$", sitting, flags=re.MULTILINE)
        if logged and float(logged[-1][1]) > 0:
            total += (int(logged[-1][0]) - (int(resumed[-1]) if resumed else 0)) / float(logged[-1][1])
    return total


def logged_seconds(state_path: Path | None) -> float | None:
    """The seconds of training steps in the train.log beside a training state saved before
    states recorded them (None without a log)."""
    log = state_path.parent / "train.log" if state_path is not None else None
    if log is None or not log.is_file():
        return None
    return logged_training_seconds(log.read_text(encoding="utf-8", errors="replace"))


def training_cost(path: str, metadata: dict[str, Any]) -> tuple[float, int | None]:
    """(seconds of training steps, steps) behind a checkpoint, earlier stages included. What the
    trainer records in it ("training_seconds": this run's, over all its sittings; "pretrained_cost":
    the stages before, when it started from --pretrained); for checkpoints written before it
    recorded them, its run folder's train.log (logged_training_seconds, in proportion to the
    checkpoint's step when the run went on past it; 0 without a log) and the same for the
    checkpoint it started from while that file is still there."""
    steps = int(metadata["step"]) if "step" in metadata else None
    if isinstance(metadata.get("training_seconds"), (int, float)):
        seconds = float(metadata["training_seconds"])
    else:
        log = Path(path).parent / "train.log"
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        seconds = logged_training_seconds(text)
        finished = [int(m) for m in re.findall(r"finished step ([0-9]+)/", text)]
        if steps and finished and max(finished) > steps:
            seconds *= steps / max(finished)
    recorded = metadata.get("pretrained_cost")
    if isinstance(recorded, dict) and steps is not None:
        return seconds + float(recorded["seconds"]), steps + int(recorded["steps"])
    earlier = metadata.get("pretrained")
    if steps is not None and earlier and Path(earlier).is_file():
        try:
            earlier_seconds, earlier_steps = training_cost(earlier, aether_arch.read_checkpoint(earlier)[1])
        except aether_arch.AetherCheckpointError:  # gone bad since: this stage's own cost only
            return seconds, steps
        seconds, steps = seconds + earlier_seconds, steps + (earlier_steps or 0)
    return seconds, steps


def load_pretrained(model: nn.Module, path: str, policy: TrainingPolicy) -> None:
    """``--pretrained``: the checkpoint's weights (its EMA where it has one), strictly."""
    try:
        state_dict, _ = aether_arch.read_checkpoint(path)
    except aether_arch.AetherCheckpointError as exc:
        raise InputError(f"--pretrained: {exc}") from None
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"--pretrained {path!r} does not fit {policy.describe(model)}: " + " ".join(str(exc).split())[:300]
        ) from None


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


class Trainer:
    """One invocation of the training loop over a ready network: setup, steps, validation,
    saving. The caller builds ``model`` (seeded with seed_everything(options.seed) first, so
    that every rank starts from the same weights) and loads any pretrained weights; resuming
    restores everything else from the training state. ``command`` is recorded in the log and
    in every checkpoint's metadata."""

    def __init__(
        self,
        model: nn.Module,
        options: TrainingOptions,
        processes: Processes,
        *,
        command: str,
        policy: TrainingPolicy,
    ) -> None:
        self.started = time.perf_counter()
        keep_freed_memory()
        self.options = options
        self.processes = processes
        self.policy = policy
        self.device = processes.device
        self.training_command = command
        self.hr_patch = options.lr_patch * options.scale
        self.recipe = options.recipe()
        notes: list[str] = []

        # Everything that can reject the input happens before anything is written.
        if (options.qat or options.qat_after is not None) and not policy.has_qat:
            raise InputError(
                f"--qat and --qat-after need a quantization-aware form, which {policy.describe(model)} has not"
            )
        self.model = model
        state, state_path = read_training_state(options.resume) if options.resume else (None, None)
        if state is not None:
            check_resumable(state, options, notes)
            if state["qat"] and not policy.is_qat(model):  # saved after the --qat-after switch
                policy.to_qat(model)
        self.sampler = PatchSampler(
            load_training_images(options.train_dir, self.hr_patch, notes),
            self.hr_patch,
            options.seed + processes.rank,
            options.min_patch_detail,
        )
        self.val_images = (
            load_validation_images(options.val_dir, options.scale, self.device, notes) if options.val_dir else []
        )

        self.out_dir = prepare_output_dir(options.out_dir, "--out-dir") if options.out_dir else state_path.parent

        self.model.to(self.device)
        self.ema = ModelEMA(self.model, options.ema_decay, policy)
        self.amp_dtype = self._amp_dtype()
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = loss_function(options.loss)
        self.step = 0
        # seconds of training steps before this sitting (from the log for a state saved before
        # states recorded them; None without one) and in this sitting; what earlier stages cost
        self.seconds_before = 0.0 if state is None else state.get("training_seconds", logged_seconds(state_path))
        self.sitting_seconds = 0.0
        self.pretrained_cost = self._pretrained_cost()
        self.last_validation: dict[str, Any] | None = None
        self.norm_frozen_from = self._norm_freeze_step()

        self.optimizer, self.scheduler = make_optimizer(
            self.model, current_phase(options, policy.is_qat(self.model)), options
        )
        if state is not None:  # before the log is opened: a damaged state leaves the folder as it was
            try:
                self.model.load_state_dict(state["model"])
                self.ema.module.load_state_dict(state["ema"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.grad_scaler.load_state_dict(state["grad_scaler"])
                self.step = state["step"]
                restore_rng_states(state["rng"], self.sampler, processes, options.seed, self.step, notes.append)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
                raise InputError(
                    f"--resume: {str(state_path)!r} does not fit this run or is damaged "
                    f"({type(exc).__name__}: {aether_arch.error_summary(exc)})"
                ) from None
            notes.append(f"resumed from {state_path} at step {self.step}")

        if processes.is_main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"--out-dir {str(self.out_dir)!r} cannot be created ({exc.strerror or exc})") from None
        self.log = RunLog(self.out_dir / "train.log" if processes.is_main else None)
        self._log_config(notes)
        self.train_model: nn.Module | None = None  # the module forward goes through (DDP-wrapped)

    def _log_config(self, notes: list[str]) -> None:
        options = self.options
        self.log(f"command: {self.training_command}")
        self.log("config: " + json.dumps(dataclasses.asdict(options), sort_keys=True))
        self.log(f"degradation: {options.degradation} recipe, " + json.dumps(self.recipe.as_dict(), sort_keys=True))
        self.log(
            f"model: {self.policy.describe(self.model)}, {sum(p.numel() for p in self.model.parameters()):,} parameters"
        )
        self.log(
            f"data: {len(self.sampler.images)} training image(s), HR crop {self.hr_patch}x{self.hr_patch}, "
            f"batch {options.batch_size} per process x {self.processes.world_size} process(es); "
            f"{len(self.val_images)} validation image(s)"
        )
        self.log(f"device: {self.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
        for note in notes:
            self.log(f"note: {note}")
        if options.amp and self.device.type != "cuda":
            self.log("note: --amp is ignored on CPU (autocast is used on CUDA only)")
        if options.resume and options.pretrained:
            self.log("note: --pretrained is ignored when resuming (weights come from the saved state)")
        elif (
            options.pretrained and isinstance(self.model, aether_arch.AetherNet) and not self.model.has_exact_shortcut()
        ):
            self.log(
                "note: --pretrained has a trained shortcut (written before it was fixed); it stays as loaded. "
                "For INT8, reset it to nearest-neighbour upsampling and fine-tune first (models/README.md, stage 3)"
            )
        if not self.val_images:
            self.log("note: no --val-dir, so no validation")

    def _pretrained_cost(self) -> dict[str, Any] | None:
        """{"seconds", "steps"} behind --pretrained (training_cost), for this run's checkpoints."""
        if not self.options.pretrained:
            return None
        try:
            seconds, steps = training_cost(
                self.options.pretrained, aether_arch.read_checkpoint(self.options.pretrained)[1]
            )
        except aether_arch.AetherCheckpointError:  # resuming without the file: its cost is unknown
            return None
        return None if steps is None else {"seconds": round(seconds, 3), "steps": steps}

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.options.amp or self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _norm_freeze_step(self) -> int:
        """First step whose BatchNorms use running statistics (the float phase's last part)."""
        float_end = self.options.qat_after or self.options.steps
        return float_end - round(self.options.freeze_norm_frac * float_end)

    def switch_to_qat(self) -> None:
        """--qat-after: the same run continues in QAT form (model and EMA) with a new optimizer
        and schedule over the parameters the fused, quantized model has now. The QAT model
        starts from the EMA weights, the better float model (on the v2 sample, QAT from the
        EMA kept INT8 within 0.08 dB of FP32; from the raw weights it lost 0.24 dB)."""
        self.model.load_state_dict(self.ema.module.state_dict())
        self.policy.to_qat(self.model)
        self.ema.switch_to_qat()
        phase = current_phase(self.options, qat=True)
        self.optimizer, self.scheduler = make_optimizer(self.model, phase, self.options)
        self.train_model = None
        self.log(
            f"after step {self.step}: switched to QAT ({self.policy.describe(self.model)}), lr {phase.lr:g} "
            f"cosine to {self.options.min_lr:g} over {phase.end_step - phase.first_step} steps"
        )

    def train_step(self) -> torch.Tensor:
        options = self.options
        freeze_norm = not self.policy.is_qat(self.model) and self.step >= self.norm_frozen_from
        if freeze_norm and self.step == self.norm_frozen_from:
            self.log(
                f"after step {self.step}: BatchNorm layers use their running statistics "
                "(eval mode) for the rest of float training"
            )
        set_training_mode(self.model, freeze_norm)
        hr_batch = self.sampler.sample(options.batch_size).to(self.device)
        lr_batch = self.recipe.apply(hr_batch, options.scale, self.sampler.generator)
        if self.policy.needs_ranges(self.model):
            initialise_quantizer_ranges(self.model, lr_batch)
            self.train_model = None
        if self.train_model is None:
            self.train_model = wrap_for_training(self.model, self.processes)

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            sr_batch = self.train_model(lr_batch)
        loss = self.loss_fn(sr_batch.float(), hr_batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        if options.grad_clip > 0:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.grad_clip)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.scheduler.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return loss.detach()

    def run_validation(self) -> None:
        if not self.val_images or not self.processes.is_main:
            return
        results = validate(self.ema.module, self.val_images, self.options.scale)
        self.last_validation = results
        for protocol, result in results.items():
            images = ", ".join(f"{name} {m:.2f}/{b:.2f}" for name, (m, b) in result["per_image"].items())
            self.log(
                f"step {self.step}: validation PSNR (EMA model, {protocol} LR) {result['psnr']:.3f} dB, bicubic "
                f"{result['bicubic_psnr']:.3f} dB, gain {result['psnr'] - result['bicubic_psnr']:+.3f} dB "
                f"[{images}]"
            )

    def check_finite(self, loss: torch.Tensor | None = None) -> None:
        """Stop before a NaN or infinite loss or weight reaches a checkpoint (every rank holds
        the same weights, so all ranks stop together)."""
        weights = [*self.model.parameters(), *self.ema.module.parameters()]
        finite = bool(torch.stack([torch.isfinite(w).all() for w in weights]).all())  # one device sync
        if finite and (loss is None or bool(torch.isfinite(loss))):
            return
        saved = [p.name for p in self.out_dir.glob("net_g_*.pth") if p.name != "net_g_latest.pth"]
        kept = (
            f"the last finite checkpoint is {max(saved, key=lambda n: int(n[6:-4]))}"
            if saved
            else "no checkpoint was saved"
        )
        raise TrainingDiverged(
            f"training diverged at step {self.step}: the {'weights' if not finite else 'loss'} became NaN or "
            f"infinite (--lr {self.options.lr:g} too high?); {kept} in {str(self.out_dir)!r}"
        )

    def save(self) -> None:
        self.check_finite()
        sampler_states = gather_sampler_states(self.sampler, self.processes)  # collective
        if not self.processes.is_main:
            return
        extra: dict[str, Any] = {
            "step": self.step,
            "training_command": self.training_command,
            "world_size": self.processes.world_size,
            "degradation": {"recipe": self.options.degradation, **self.recipe.as_dict()},
        }
        if self.seconds_before is not None:
            extra["training_seconds"] = round(self.seconds_before + self.sitting_seconds, 3)
        if self.options.pretrained:  # a later stage: what it started from and what that cost
            extra["pretrained"] = str(Path(self.options.pretrained).resolve())
            if self.pretrained_cost is not None:
                extra["pretrained_cost"] = self.pretrained_cost
        if self.last_validation is not None:
            # val_psnr / val_bicubic_psnr: the benchmark protocol, under the names neosr and
            # traiNNer-redux users read; "validation" has every protocol
            extra["val_psnr"] = round(self.last_validation["aa-bicubic"]["psnr"], 4)
            extra["val_bicubic_psnr"] = round(self.last_validation["aa-bicubic"]["bicubic_psnr"], 4)
            extra["validation"] = {
                protocol: {"psnr": round(r["psnr"], 4), "bicubic_psnr": round(r["bicubic_psnr"], 4)}
                for protocol, r in self.last_validation.items()
            }
        weights = {
            "params": plain_state_dict(self.model),
            "params_ema": plain_state_dict(self.ema.module),
            "metadata": json.dumps(self.policy.metadata(self.model, **extra), sort_keys=True),
        }
        save_atomically(weights, self.out_dir / f"net_g_{self.step}.pth")
        save_atomically(weights, self.out_dir / "net_g_latest.pth")
        state = {
            "format": TRAINING_STATE_FORMAT,
            "step": self.step,
            "qat": self.policy.is_qat(self.model),
            "config": json.dumps(dataclasses.asdict(self.options), sort_keys=True),
            "model": plain_state_dict(self.model),
            "ema": plain_state_dict(self.ema.module),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "rng": rng_states(sampler_states),
        }
        if self.seconds_before is not None:
            state["training_seconds"] = self.seconds_before + self.sitting_seconds
        save_atomically(state, self.out_dir / TRAINING_STATE_NAME)
        self.log(f"step {self.step}: saved net_g_{self.step}.pth, net_g_latest.pth, {TRAINING_STATE_NAME}")

    def run(self) -> None:
        options = self.options
        stop = options.stop_at or options.steps
        train_seconds, first_step = 0.0, self.step
        loss_sum, loss_count = torch.zeros((), device=self.device), 0  # summed on the device: no sync per step
        bar = tqdm(  # rank 0 only, and only on a terminal: logs get train.log's lines, not bars
            total=stop,
            initial=self.step,
            unit="it",
            dynamic_ncols=True,
            disable=None if self.processes.is_main else True,
        )
        try:
            while self.step < stop:
                tick = time.perf_counter()
                if (
                    options.qat_after is not None
                    and self.step == options.qat_after
                    and not self.policy.is_qat(self.model)
                ):
                    self.switch_to_qat()
                loss = self.train_step()
                loss_sum, loss_count = loss_sum + loss, loss_count + 1
                bar.update(1)
                if self.step % 10 == 0:  # .item() waits for the device: not every step
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                train_seconds += time.perf_counter() - tick
                self.sitting_seconds = train_seconds
                if self.step % options.log_every == 0:
                    self.check_finite(loss_sum)
                    self.log(
                        f"step {self.step}/{options.steps}: loss {loss_sum.item() / loss_count:.5f} "
                        f"(rank 0's batches), lr {self.scheduler.get_last_lr()[0]:.3g}, "
                        f"{(self.step - first_step) / train_seconds:.2f} it/s"
                    )
                    loss_sum, loss_count = torch.zeros_like(loss_sum), 0
                if (options.val_every and self.step % options.val_every == 0) or self.step == stop:
                    self.run_validation()
                if (options.save_every and self.step % options.save_every == 0) or self.step == stop:
                    self.save()
        finally:
            bar.close()
            if self.step < stop and self.step > first_step:  # interrupted or diverged: what this sitting cost
                self.log(
                    f"stopped at step {self.step}/{options.steps}: {self.step - first_step} steps in "
                    f"{train_seconds:.1f} s of training steps"
                )
        wall = time.perf_counter() - self.started
        self.log(
            f"finished step {self.step}/{options.steps}: {self.step - first_step} steps in "
            f"{train_seconds:.1f} s of training steps ({(self.step - first_step) / train_seconds:.2f} it/s); "
            f"wall time {wall:.1f} s including loading, validation and saving"
        )

    def close(self) -> None:
        self.log.close()
