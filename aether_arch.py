"""AetherNet: a fast, re-parameterizable single-image super-resolution network.

One self-contained file (only torch and the standard library at import time) so it can be
copied into neosr (``neosr/archs/``) or traiNNer-redux (``traiNNer/archs/``) as is.

Layout, top-down:
  fusion maths -> building blocks (re-parameterizable convolutions) -> network -> presets
  -> quantization-aware training -> checkpoint I/O -> ONNX export -> framework glue.

Design notes
------------
* Training form: every convolution of the body is a sum of parallel branches (a k x k
  conv, smaller convs, an identity), each followed by BatchNorm (RepVGG/SPAN style).
  ``AetherNet.fuse()`` folds each such block into ONE standard convolution; the norms
  disappear into its weights and bias. The fused (deploy) form is the one that is exported.
* Designed for integer throughput (v2): every conv is dense and works on all channels (large
  kernels on >= 48 channels keep ONNX Runtime's INT8 kernels near their peak; no split/concat,
  no 1x1 mixing convs in the body), blocks alternate a k x k and a 3 x 3 second conv, and the
  output head is two 1x1 convs (features -> sub-pixels, and a fixed nearest-neighbour shortcut
  from the input, exact on the INT8 grid) whose sum lands on the 8-bit image grid. The README's
  architecture section has the measurements.
* Quantization-aware training (``qat=True`` / ``prepare_qat``) fine-tunes the fused form with
  the exact INT8 arithmetic of the exported Q/DQ graph, output included (see the QAT section).
* Input and output are RGB, float, NCHW, range [0, 1]; there is no mean subtraction (the head
  conv's bias absorbs it, which keeps the input exactly on its 8-bit grid in INT8). In eval mode
  the output is clamped to [0, 1].
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__version__ = "0.2.0"

ARCH_NAME = "AetherNet"

ARCH_VERSION = 2  # v1 (partial large kernels, mean subtraction) checkpoints do not load


# ---------------------------------------------------------------------------------------
# Fusion maths: written once, used by fuse() and by anything that needs fused weights.
# ---------------------------------------------------------------------------------------


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, bias) of the conv that equals ``bn(conv(x))`` with bn in eval mode."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gain = bn.weight / std
    if bias is None:
        bias = torch.zeros_like(bn.running_mean)
    return weight * gain.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * gain


def pad_kernel(weight: torch.Tensor, size: int, kernel_size: int) -> torch.Tensor:
    """Zero-pad a (out, in, size, size) kernel to a centred kernel_size x kernel_size kernel.
    ``size`` is passed, not read from ``weight``: in an exporter's trace a computed tensor's
    shape is symbolic, and the padded kernel must keep a static shape."""
    pad = (kernel_size - size) // 2
    return F.pad(weight, [pad, pad, pad, pad])


def identity_kernel(channels: int, kernel_size: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (channels, channels, k, k) kernel of the identity map (no index assignment: an
    exporter tracing an eval-mode RepConv folds this into a constant)."""
    return pad_kernel(torch.eye(channels, dtype=dtype, device=device).reshape(channels, channels, 1, 1), 1, kernel_size)


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


class ConvNorm(nn.Module):
    """One branch of a re-parameterizable conv: a bias-free conv followed by BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def fused_kernel(self, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = fold_batchnorm(self.conv.weight, None, self.norm)
        return pad_kernel(weight, self.conv.kernel_size[0], kernel_size), bias


class IdentityNorm(nn.Module):
    """The identity branch of a re-parameterizable conv: BatchNorm of the input itself."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def fused_kernel(self, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.norm.running_mean
        identity = identity_kernel(mean.shape[0], kernel_size, dtype=mean.dtype, device=mean.device)
        return fold_batchnorm(identity, None, self.norm)


class RepConv(nn.Module):
    """Training form of a k x k convolution: parallel conv+norm branches of decreasing kernel
    size, plus a normed identity when shapes allow. ``fuse()`` returns the equivalent
    ``nn.Conv2d``; the branches exist only to make optimisation easier (RepVGG)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.kernel_size = max(kernel_sizes)
        self.branches = nn.ModuleList(
            ConvNorm(in_channels, out_channels, k) for k in sorted(kernel_sizes, reverse=True)
        )
        self.identity = IdentityNorm(out_channels) if in_channels == out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.branch_sum(x)
        # Eval runs the conv it fuses into (as SPAN's Conv3XC does): one conv instead of three
        # or four, and a framework's own ONNX export of a training-form model holds fused convs.
        weight, bias = self.fused_weight_bias()
        return F.conv2d(x, weight, bias, padding=self.kernel_size // 2)

    def branch_sum(self, x: torch.Tensor) -> torch.Tensor:
        out = self.identity(x) if self.identity is not None else 0
        for branch in self.branches:
            out = out + branch(x)
        return out

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [branch.fused_kernel(self.kernel_size) for branch in self.branches]
        if self.identity is not None:
            parts.append(self.identity.fused_kernel(self.kernel_size))
        conv = self.branches[0].conv
        # reshape to the static shape: an exporter's trace has lost it in the sums
        weight = (
            torch.stack([w for w, _ in parts])
            .sum(0)
            .reshape(conv.out_channels, conv.in_channels, self.kernel_size, self.kernel_size)
        )
        bias = torch.stack([b for _, b in parts]).sum(0)
        return weight, bias

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        weight, bias = self.fused_weight_bias()
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], self.kernel_size, padding=self.kernel_size // 2).to(
            device=weight.device, dtype=weight.dtype
        )
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return conv


def make_conv(in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...], *, fused: bool) -> nn.Module:
    """A RepConv in training form, or the plain conv it fuses into in deploy form."""
    if fused:
        k = max(kernel_sizes)
        return nn.Conv2d(in_channels, out_channels, k, padding=k // 2)
    return RepConv(in_channels, out_channels, kernel_sizes)


def fixed_weights(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with its weight and bias as buffers: saved and loaded under the same keys, but
    not parameters, so no optimizer (ours, neosr's, traiNNer-redux's) trains them."""
    for name in ("weight", "bias"):
        value = getattr(conv, name)
        if isinstance(value, nn.Parameter):
            delattr(conv, name)
            conv.register_buffer(name, value.detach())
    return conv


def fuse_children(module: nn.Module) -> None:
    """Replace every RepConv below ``module`` by its fused nn.Conv2d, in place."""
    for name, child in module.named_children():
        if isinstance(child, RepConv):
            setattr(module, name, child.fuse())
        else:
            fuse_children(child)


class AetherBlock(nn.Module):
    """Residual block: 3x3 conv -> ReLU -> k x k conv (k = 3 or the large kernel), + input."""

    def __init__(self, channels: int, kernel_size: int, *, fused: bool) -> None:
        super().__init__()
        self.conv1 = make_conv(channels, channels, (3, 1), fused=fused)
        self.act = nn.ReLU(inplace=True)
        self.act_q = QuantPoint()
        self.conv2 = make_conv(channels, channels, (kernel_size, 3) if kernel_size > 3 else (3, 1), fused=fused)
        self.conv2_q = QuantPoint()
        self.out_q = QuantPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_q(x + self.conv2_q(self.conv2(self.act_q(self.act(self.conv1(x))))))


def nearest_shortcut_weight(model: nn.Module) -> torch.Tensor:
    """The 1x1 shortcut's weight that is nearest-neighbour upsampling once pixel-shuffled (zero
    when input and output channels differ: no shortcut then)."""
    weight = torch.zeros_like(model.skip.weight)
    if model.in_channels == model.out_channels:
        r2 = model.scale * model.scale
        for c in range(model.out_channels):
            weight[c * r2 : (c + 1) * r2, c] = 1.0
    return weight


def block_kernel(index: int, large_kernel: int) -> int:
    """The second conv's kernel in block ``index``: blocks alternate large and 3x3, starting
    large (a large kernel on every block would cost 1.9x the MACs for a little more context)."""
    return large_kernel if index % 2 == 0 else 3


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


class AetherNet(nn.Module):
    """AetherNet super-resolution network.

    Args (keyword-only):
        scale: upscaling factor (1, 2, 3, 4, ... any positive integer).
        in_channels / out_channels: image channels (3 for RGB).
        dim: feature channels.
        num_blocks: number of AetherBlocks.
        large_kernel: odd kernel size of the second conv of every other block (3 or more).
        fused: build the deploy form directly (to load fused checkpoints).
        qat: build the quantization-aware form (fused + INT8 simulation, see prepare_qat);
            float checkpoints of either form still load into it with strict=True.
        int8_profile: "cpu" (ONNX Runtime CPU: asymmetric uint8 activations, integer output
            head) or "tensorrt" (symmetric int8 activations, zero-point 0). Weights are always
            symmetric int8 per output channel.
    """

    def __init__(
        self,
        *,
        scale: int = 4,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: int = 3,
        large_kernel: int = 5,
        fused: bool = False,
        qat: bool = False,
        int8_profile: str = "cpu",
    ) -> None:
        super().__init__()
        _check_hyperparameters(
            scale=scale,
            in_channels=in_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            large_kernel=large_kernel,
        )
        _check_int8_profile(int8_profile)
        self.config: dict[str, Any] = {
            "scale": scale,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "dim": dim,
            "num_blocks": num_blocks,
            "large_kernel": large_kernel,
        }
        self.scale = scale
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fused = fused
        self.qat = False
        self.int8_profile = int8_profile
        self._int8_backend = "simulation"  # see the int8_backend property
        self._int8_engine: Any = None  # built on first use; holds prepacked copies of the weights

        self.input_q = QuantPoint()
        self.head = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.head_q = QuantPoint()
        self.blocks = nn.Sequential(
            *(AetherBlock(dim, block_kernel(i, large_kernel), fused=fused) for i in range(num_blocks))
        )
        self.body_tail = make_conv(dim, dim, (3, 1), fused=fused)
        self.tail_q = QuantPoint()
        self.feat_q = QuantPoint()
        # 1x1 output convs: a 3x3 one with out_channels * scale**2 (12 at x2) outputs is a
        # narrow GEMM that ran at ~100 GMAC/s in INT8, as slow as two body convs.
        self.upsample = nn.Conv2d(dim, out_channels * scale * scale, 1)
        self.upsample_q = QuantPoint()
        # Shortcut from the input straight to the sub-pixel output: exactly nearest-neighbour
        # upsampling, never trained, so the body only learns the residual detail. Trained, it
        # drifted to per-sub-pixel gains of 0.99-1.01 that INT8 weights cannot hold (up to 2.5
        # levels of checkerboard on bright flat areas for the body to cancel in 8 bits).
        self.skip = fixed_weights(nn.Conv2d(in_channels, out_channels * scale * scale, 1))
        self.skip_q = QuantPoint()
        self.output_q = QuantPoint()
        self.shuffle = nn.PixelShuffle(scale)
        if not fused:
            self._init_for_training()
        # Once fused (or QAT), training-form checkpoints still load with strict=True.
        self._register_load_state_dict_pre_hook(_accept_float_state_dict, with_module=True)
        self._register_load_state_dict_pre_hook(_select_int8_backend, with_module=True)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._drop_int8_engine())
        if qat:
            prepare_qat(self, int8_profile=int8_profile)

    @torch.no_grad()
    def _init_for_training(self) -> None:
        """Start as exactly nearest-neighbour upsampling with identity blocks: the shortcut is
        nearest upsampling, the upsampler and each block's last conv start at zero (zero-init
        residuals, Goyal et al. 2017). Otherwise the BatchNorm branches' unit-variance output
        makes a fresh network far worse than bicubic and slow to recover."""
        nn.init.zeros_(self.upsample.weight)
        nn.init.zeros_(self.upsample.bias)
        for block in self.blocks:
            for module in block.conv2.modules():
                if isinstance(module, nn.BatchNorm2d):
                    nn.init.zeros_(module.weight)
        self.skip.weight.copy_(nearest_shortcut_weight(self))
        self.skip.bias.zero_()

    def has_exact_shortcut(self) -> bool:
        """Whether the shortcut is exact nearest-neighbour upsampling (on its INT8 grid for QAT):
        files from before it was fixed carry a trained one, which they keep."""
        skip = self.skip
        weight = skip.grid_weight() if isinstance(skip, QuantConv2d) else skip.weight
        return torch.equal(weight.detach(), nearest_shortcut_weight(self)) and not skip.bias.any()

    def forward_unclamped(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_q(x)
        feat = self.head_q(self.head(x))
        tail = self.tail_q(self.body_tail(self.blocks(feat)))
        feat = self.feat_q(feat + tail)
        out = self.output_q(self.upsample_q(self.upsample(feat)) + self.skip_q(self.skip(x)))
        # The sub-pixels are re-quantized on their own grid (exact): in the INT8 graph the
        # pixel shuffle then moves 8-bit values, not floats (see _uint8_pixel_shuffle).
        return self.output_q(self.shuffle(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        engine = self._int8_engine_for(x)
        if engine is not None:
            return engine(x)
        out = self.forward_unclamped(x)
        # An integer output is clamped by its own [0, 1] grid: a Clip would cost a float pass.
        on_image_grid = isinstance(self.output_q, ActQuant)
        return out if self.training or on_image_grid else out.clamp(0.0, 1.0)

    @property
    def int8_backend(self) -> str:
        """How a QAT / INT8 model runs in eval mode (training is always fake quantization).
        "onednn": on CPU, torch's oneDNN int8 kernels (OneDNNInt8; loading an INT8 release
        file picks it, see _select_int8_backend), the float simulation wherever they cannot run. "simulation": float
        convolutions on the dequantized grids (QAT checkpoints; CUDA). "reference": on CPU, the
        integer-exact float64 arithmetic of ONNX Runtime's QLinearConv, the tests' oracle (~10x
        slower than FP32)."""
        return self._int8_backend

    @int8_backend.setter
    def int8_backend(self, value: str) -> None:
        if value not in INT8_BACKENDS:
            raise ValueError(f"AetherNet: int8_backend must be one of {', '.join(INT8_BACKENDS)}, got {value!r}")
        self._int8_backend = value
        self._drop_int8_engine()
        for module in self.modules():
            if isinstance(module, QuantConv2d):
                module.reference = value == "reference"

    def _int8_engine_for(self, x: torch.Tensor) -> Any:
        """The oneDNN int8 engine if this call can use it: an INT8 model in eval mode, float32
        CPU input without gradients, eager (not an exporter's or torch.compile's trace)."""
        if self.int8_backend != "onednn" or self.training or torch.jit.is_tracing() or _compiling():
            return None
        if x.device.type != "cpu" or x.dtype != torch.float32 or (x.requires_grad and torch.is_grad_enabled()):
            return None
        if self._int8_engine is None:
            if not OneDNNInt8.supports(self):
                return None
            self._int8_engine = OneDNNInt8(self)
        return self._int8_engine

    def _drop_int8_engine(self) -> None:
        self._int8_engine = None

    def train(self, mode: bool = True) -> AetherNet:
        self._drop_int8_engine()  # weights may change from here on; rebuilt on the next use
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> AetherNet:
        self._drop_int8_engine()  # .to(), .half(), .cuda(): the packed copies would be stale
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def fuse(self) -> AetherNet:
        """Turn the model, in place, into its deploy form and return it: every RepConv
        (parallel branches + BatchNorms) becomes one nn.Conv2d. Idempotent."""
        if not self.fused:
            fuse_children(self)
            self.fused = True
        return self

    def map_state_dict(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """``state_dict`` as this model loads it (a new dict): a float checkpoint in the training
        or fused form becomes this fused / QAT model's keys. traiNNer-redux calls this hook to
        compare key sets before ``load_state_dict`` (strict_load_g: true), which then converts
        the same way in its pre-hook."""
        mapped = dict(state_dict)
        _accept_float_state_dict(self, mapped, "")
        return mapped

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """What spandrel's ``@store_hyperparameters`` would keep: the keyword arguments that
        rebuild this model, read as it is now (fuse() and prepare_qat() change it in place)."""
        return {**self.config, "fused": self.fused, "qat": self.qat, "int8_profile": self.int8_profile}

    def extra_repr(self) -> str:
        flags = f"fused={self.fused}, qat={self.qat}"
        if self.qat:
            flags += f", int8_profile={self.int8_profile}"
        return flags + ", " + ", ".join(f"{k}={v}" for k, v in self.config.items())


def _check_hyperparameters(**hp: int) -> None:
    for name, value in hp.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"AetherNet: {name} must be a positive integer, got {value!r}")
    if hp["large_kernel"] % 2 == 0 or hp["large_kernel"] < 3:
        raise ValueError(f"AetherNet: large_kernel must be odd and >= 3, got {hp['large_kernel']}")


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, int]] = {
    "aether_tiny": {"dim": 48, "num_blocks": 3, "large_kernel": 5},
    "aether_small": {"dim": 64, "num_blocks": 3, "large_kernel": 5},
    "aether_medium": {"dim": 96, "num_blocks": 6, "large_kernel": 7},
    "aether_large": {"dim": 128, "num_blocks": 13, "large_kernel": 7},
}


# One factory per preset with a ``scale`` keyword (traiNNer-redux's convention); any other
# keyword overrides a preset value (``aether_small(scale=2, num_blocks=6)``).
def aether_tiny(scale: int = 4, **kwargs: Any) -> AetherNet:
    """Real-time class preset."""
    return AetherNet(**{**PRESETS["aether_tiny"], "scale": scale, **kwargs})


def aether_small(scale: int = 4, **kwargs: Any) -> AetherNet:
    """SPAN / Compact class preset."""
    return AetherNet(**{**PRESETS["aether_small"], "scale": scale, **kwargs})


def aether_medium(scale: int = 4, **kwargs: Any) -> AetherNet:
    """Mid-size preset."""
    return AetherNet(**{**PRESETS["aether_medium"], "scale": scale, **kwargs})


def aether_large(scale: int = 4, **kwargs: Any) -> AetherNet:
    """Quality preset."""
    return AetherNet(**{**PRESETS["aether_large"], "scale": scale, **kwargs})


PRESET_FACTORIES = {f.__name__: f for f in (aether_tiny, aether_small, aether_medium, aether_large)}


# ---------------------------------------------------------------------------------------
# Quantization-aware training (core fake-quant ops only; no torch.ao.quantization)
# ---------------------------------------------------------------------------------------

# Activation storage type per profile; weights are always symmetric int8 per channel.
INT8_PROFILES: dict[str, torch.dtype] = {
    "cpu": torch.uint8,  # ONNX Runtime CPU's fast path: u8 activations with a zero-point
    "tensorrt": torch.int8,  # TensorRT explicit quantization: symmetric, zero-point 0
}
WEIGHT_QMAX = 127  # symmetric [-127, 127]: -128 unused, as TensorRT and ORT expect
# x86 CPUs without VNNI (AVX2, AVX-512F: Zen 1-3, most Intel before Ice Lake) run uint8 x int8
# convolutions in ONNX Runtime and oneDNN with vpmaddubsw, which adds two products in int16 and
# saturates: exact only while 255 * (|w1| + |w2|) <= 32767, i.e. |w| <= 64. With the full int8
# range the shipped tiny x2 lost 0.25-0.7 dB there (up to 25/255 off the Q/DQ reference).
CPU_WEIGHT_QMAX = 64
PROFILE_WEIGHT_QMAX = {"cpu": CPU_WEIGHT_QMAX, "tensorrt": WEIGHT_QMAX}
LEGACY_GRID_RATIO = 96  # max |w| / scale above this: a file from before the cpu grid was 7-bit
# Biases are int32 on the grid input_scale x weight_scale; a weight scale is never so small that
# its bias needs more than this many steps (int32 saturates at 2**31 - 1; the headroom keeps the
# accumulator, bias plus sum of products, inside int32 too).
BIAS_QMAX = 2**30
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# Profiles whose INT8 graph is integer to the end: the output convs land on the image grid.
INTEGER_OUTPUT_PROFILES = ("cpu",)
INT8_BACKENDS = ("onednn", "simulation", "reference")  # see AetherNet.int8_backend


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_int8_profile(profile: str) -> None:
    if profile not in INT8_PROFILES:
        raise ValueError(f"AetherNet: int8_profile must be one of {', '.join(INT8_PROFILES)}, got {profile!r}")


class QuantPoint(nn.Identity):
    """A place where the deployed INT8 graph holds a quantized tensor. A no-op in float
    models; ``prepare_qat`` replaces each one with an ``ActQuant``. Every conv input and
    every body conv/add/concat output is one, because that is where ONNX Runtime needs
    Q/DQ pairs to run the op as an integer kernel (QLinearConv, QLinearAdd, QLinearConcat)."""


def _compiling() -> bool:
    """Whether torch.compile / torch.export is tracing (torch.compiler.is_compiling: torch >= 2.3;
    spandrel loads this file on older torch too, where nothing compiles it)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def _exporting() -> bool:
    """Whether torch.onnx.export is tracing the model (either exporter)."""
    return torch.onnx.is_in_onnx_export()


class _TracedQuantizeDequantize(torch.autograd.Function):
    """The Q/DQ pair for the TorchScript-based exporter (what chaiNNer's torch 2.7 runs): its
    ``symbolic`` writes the two ONNX nodes. A traced aten fake-quantize op would be constant-
    folded at trace time wherever the weights are constants (chaiNNer wraps the model so that
    they are), leaving float weights that ONNX Runtime then requantizes per tensor."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int
    ):
        return _fake_quantize_eager(x, scale, zero_point, qmin, qmax, axis)

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any, qmin: int, qmax: int, axis: int) -> Any:
        # ONNX's 8-bit types: the weights' [-127, 127] lies inside int8, and the values are
        # already on their grid, so the wider saturation never acts.
        zero_point = g.op("Cast", zero_point, to_i=2 if qmin == 0 else 3)  # TensorProto UINT8 / INT8
        axis_kw = {} if axis < 0 else {"axis_i": axis}
        return g.op(
            "DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point, **axis_kw), scale, zero_point, **axis_kw
        )


def _onnx_quantize_dequantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int
):
    """The Q/DQ pair as ONNX nodes, for the two exporters: a traced autograd Function with a
    symbolic for the TorchScript one; for the dynamo one, which would decompose
    torch.fake_quantize_* into an op it cannot translate, torch.onnx.ops nodes (torch >= 2.8)."""
    scale, zero_point = scale.float(), zero_point.round()
    if torch.jit.is_tracing():
        return _TracedQuantizeDequantize.apply(x, scale, zero_point, qmin, qmax, axis)
    if not hasattr(torch.onnx, "ops"):
        raise RuntimeError(
            "exporting a QAT AetherNet with the dynamo ONNX exporter needs torch >= 2.8; "
            "use torch.onnx.export(..., dynamo=False) or upgrade torch"
        )
    dtype = torch.uint8 if qmin == 0 else torch.int8
    attrs = {} if axis < 0 else {"axis": axis}
    zp = zero_point.to(dtype)
    q = torch.onnx.ops.symbolic("QuantizeLinear", (x, scale, zp), attrs, dtype=dtype, shape=x.shape)
    return torch.onnx.ops.symbolic("DequantizeLinear", (q, scale, zp), attrs, dtype=torch.float32, shape=x.shape)


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int = -1
) -> torch.Tensor:
    """Exactly ONNX QuantizeLinear -> DequantizeLinear: x / scale rounded half to even, plus the
    zero-point, saturated to [qmin, qmax], and back. ``axis`` < 0: per tensor, else per channel.

    Written out rather than torch.fake_quantize_*: those multiply by 1/scale, ONNX divides, and
    the two round ties differently. Under torch.onnx.export it is the ONNX Q/DQ pair itself
    (no custom op: nothing to register, nothing an exporter cannot translate)."""
    if _exporting():
        return _onnx_quantize_dequantize(x, scale, zero_point, qmin, qmax, axis).to(x.dtype)
    return _fake_quantize_eager(x, scale, zero_point, qmin, qmax, axis)


def _fake_quantize_eager(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int
) -> torch.Tensor:
    if x.dtype not in (torch.float32, torch.float64):
        # half / bfloat16 models: the grid's arithmetic in float32 (int32 bias bounds overflow half)
        return _fake_quantize_eager(x.float(), scale, zero_point, qmin, qmax, axis).to(x.dtype)
    shape = [1] * x.dim()
    if axis >= 0:
        shape[axis] = -1
    s = scale.to(x.dtype).reshape(shape)
    zp = zero_point.to(x.dtype).reshape(shape)
    q = torch.clamp(torch.round(x / s) + zp, qmin, qmax)
    return (q - zp) * s


def activation_qparams(low: torch.Tensor, high: torch.Tensor, qmin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point), both float, covering [low, high] (widened to include 0, so that zero
    padding and ReLU's zero are exact) for a uint8 (``qmin`` 0: asymmetric) or int8 (symmetric)
    tensor."""
    low, high = low.float().clamp(max=0.0), high.float().clamp(min=0.0)
    if qmin == 0:
        scale = ((high - low) / 255.0).clamp(min=1e-8)
        zero_point = torch.round(-low / scale).clamp(0, 255) + 0.0  # + 0.0: -0.0 becomes 0.0
    else:
        scale = (torch.maximum(-low, high) / 127.0).clamp(min=1e-8)
        zero_point = torch.zeros_like(scale)
    return scale, zero_point


class ActQuant(nn.Module):
    """Per-tensor INT8 fake quantization of an activation, with an LSQ-learned scale.

    The range is initialised from the first training batch it sees (or from calibration
    data, see calibrate_int8), then the scale is learned by gradient descent (LSQ, Esser et
    al. 2020) while the zero-point stays fixed. In eval mode it is the exact Q/DQ pair that
    the exported ONNX graph runs; before initialisation it passes values through.

    All its state is floating point (the zero-point and the "initialised" flag too) and is read
    from the tensors on every call, never cached: EMA copies (ema-pytorch copies and averages
    floating tensors only), in-place ``.data.copy_`` and load_state_dict all carry it, and
    torch.compile sees no data-dependent Python branch.

    ``fixed_range`` (low, high): a range known in advance and never learned nor calibrated,
    such as the image's [0, 1], whose uint8 grid 1/255 holds 8-bit pixels exactly."""

    def __init__(self, dtype: torch.dtype, *, fixed_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        info = torch.iinfo(dtype)
        self.qmin, self.qmax = info.min, info.max
        self.fixed = fixed_range is not None
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=not self.fixed)
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(0.0))  # 1.0 once the range is set
        self._observed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.observing = False
        if fixed_range is not None:
            self.set_range(*(torch.tensor(float(v)) for v in fixed_range))

    def is_initialized(self) -> bool:
        return bool(self.initialized > 0)

    @torch.no_grad()
    def set_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        scale, zero_point = activation_qparams(low, high, self.qmin)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.initialized.fill_(1.0)

    @torch.no_grad()
    def _initialize_from(self, x: torch.Tensor) -> None:
        """Take the range of ``x`` if none is set yet: a select on the flag rather than a
        Python branch on it, so that a compiled training step has no graph break."""
        scale, zero_point = activation_qparams(*torch.aminmax(x), self.qmin)
        fresh = self.initialized <= 0
        self.scale.copy_(torch.where(fresh, scale, self.scale))
        self.zero_point.copy_(torch.where(fresh, zero_point, self.zero_point))
        self.initialized.fill_(1.0)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if self._observed is not None:
            low, high = torch.minimum(low, self._observed[0]), torch.maximum(high, self._observed[1])
        self._observed = (low, high)

    def finish_observing(self) -> None:
        """Set the range to everything seen while ``observing`` (post-training calibration)."""
        if self._observed is not None and not self.fixed:
            self.set_range(*self._observed)
        self._observed = None
        self.observing = False

    def positive_scale(self) -> torch.Tensor:
        # LSQ updates may push the scale through zero; the sign carries no meaning
        return self.scale.abs().clamp(min=1e-8)

    def _learned_fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """LSQ: straight-through rounding, and the scale's gradient scaled by
        1 / sqrt(numel * qmax) (the paper's g) so that it learns at the weights' pace."""
        scale = self.positive_scale()
        g = 1.0 / math.sqrt(x[0].numel() * self.qmax)
        if not _compiling():
            # Eager: ATen's fused LSQ kernel, one pass each way (the core ops below cost a QAT
            # step ~13% more on CPU). Compiled: the core ops, which inductor fuses and lowers.
            # tests/test_frameworks.py checks that the two train alike.
            zero_point = self.zero_point.reshape(1)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale.reshape(1), zero_point, self.qmin, self.qmax, g
            )
        scale = scale * g + (scale - scale * g).detach()  # the value of scale, the gradient of g * scale
        v = x / scale
        q = v + (torch.round(v) - v).detach() + self.zero_point
        # Saturate as the fused kernel does: the gradient passes on the grid's ends too
        # (torch.clamp's stops there: a zero-initialised conv would never start learning).
        inside = (q >= self.qmin) & (q <= self.qmax)
        q = torch.where(inside, q, q.detach().clamp(self.qmin, self.qmax))
        return (q - self.zero_point) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing and not self.fixed:
            self._observe(x)
            return x
        if self.training:
            if not self.fixed:
                self._initialize_from(x.detach().float())
            return self._learned_fake_quantize(x.float()).to(x.dtype)
        out = fake_quantize(x, self.positive_scale().detach(), self.zero_point, self.qmin, self.qmax)
        if _exporting():  # an exported graph always quantizes: export calibrated models only
            return out
        return torch.where(self.initialized > 0, out, x)

    def extra_repr(self) -> str:
        kind = "uint8" if self.qmin == 0 else "int8"
        fixed = ", fixed" if self.fixed else ""
        return f"{kind}, scale={self.scale.item():.4g}, zero_point={int(self.zero_point)}{fixed}"


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weights are fake-quantized to symmetric int8 per output channel.

    ``weight_scale`` (max |w| / ``weight_qmax`` per channel: 64 for the cpu profile, 127 for
    tensorrt) tracks the weights while training and is frozen in eval mode, where it is what the
    exported graph and the INT8 .pth carry.
    The bias is rounded to the int32 grid input_scale * weight_scale, as integer runtimes
    store it. A state dict with int8 weights (the INT8 release file) is dequantized on load."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", torch.ones(self.out_channels))
        self.register_buffer("weight_zero_point", torch.zeros(self.out_channels, dtype=torch.int32), persistent=False)
        # The ActQuants that feed this conv and quantize its output (set by prepare_qat;
        # no output one for float-output convs). Plain attributes, not submodules: they
        # belong to the network's tree, not to this conv.
        self._input_quant: ActQuant | None = None
        self._output_quant: ActQuant | None = None
        self.reference = False  # the integer-exact CPU path (AetherNet.int8_backend "reference")
        self.profile_qmax = self.weight_qmax = WEIGHT_QMAX  # prepare_qat sets the profile's
        # weight_qmax is the profile's unless a loaded file was made on the older 127 grid (below)
        self.refresh_weight_scale()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight_qmax: int = WEIGHT_QMAX) -> QuantConv2d:
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        q.profile_qmax = q.weight_qmax = weight_qmax
        q.load_state_dict(conv.state_dict(), strict=False)
        if not isinstance(conv.weight, nn.Parameter):
            fixed_weights(q)
        q.refresh_weight_scale()
        return q

    @torch.no_grad()
    def refresh_weight_scale(self) -> None:
        self.weight_scale.copy_(self.scale_for(self.weight, self.bias, self.weight_qmax))

    @torch.no_grad()
    def scale_for(self, weight: torch.Tensor, bias: torch.Tensor | None, qmax: int) -> torch.Tensor:
        """max |w| / qmax per output channel, but at least |bias| / (input_scale * BIAS_QMAX): a
        channel with (nearly) zero weights (dead in a trained model; a fresh model's upsampler)
        would otherwise get a scale so small that its int32 bias saturates."""
        scale = weight.detach().abs().amax(dim=(1, 2, 3)).float() / qmax
        if bias is not None and self._input_quant is not None:
            input_scale = self._input_quant.positive_scale().detach().float()
            scale = torch.maximum(scale, bias.detach().abs().float() / (input_scale * BIAS_QMAX))
        return scale.clamp(min=1e-12)

    def quantized_weight(self) -> torch.Tensor:
        if self.training:
            self.refresh_weight_scale()
            return torch.fake_quantize_per_channel_affine(
                self.weight, self.weight_scale, self.weight_zero_point, 0, -self.weight_qmax, self.weight_qmax
            )
        return self.grid_weight()

    def grid_weight(self) -> torch.Tensor:
        """The weights on their frozen grid (eval mode's fake quantization, ONNX's arithmetic)."""
        qmax = self.weight_qmax
        return fake_quantize(self.weight, self.weight_scale, self.weight_zero_point, -qmax, qmax, 0)

    def bias_scale(self) -> torch.Tensor:
        """The int32 grid of the bias, input scale x weight scale (float32, as exported)."""
        return self._input_quant.positive_scale().detach().float() * self.weight_scale

    def quantized_bias(self) -> torch.Tensor | None:
        if self.bias is None or self._input_quant is None:
            return self.bias
        scale = self.bias_scale()
        if self.training:  # straight-through rounding
            return self.bias + (torch.round(self.bias / scale) * scale - self.bias).detach()
        if _exporting():  # onnx_model_proto puts it on the int32 grid (_quantize_conv_biases)
            return self.bias
        return fake_quantize(self.bias, scale, torch.zeros_like(scale), INT32_MIN, INT32_MAX, 0)

    def int8_weight(self) -> torch.Tensor:
        scale = self.weight_scale.reshape(-1, 1, 1, 1)
        return torch.round(self.weight.detach() / scale).clamp(-self.weight_qmax, self.weight_qmax).to(torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._runs_integer(x):
            return self._integer_forward(x)
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())

    def _runs_integer(self, x: torch.Tensor) -> bool:
        """The integer-exact reference (int8_backend "reference") needs CPU, eval mode, eager
        execution (not an exporter's or torch.compile's trace), and quantizers that are set (not
        observing calibration data); otherwise the conv runs the float simulation."""
        quantizers = [q for q in (self._input_quant, self._output_quant) if q is not None]
        return (
            self.reference
            and not self.training
            and x.device.type == "cpu"
            and self._input_quant is not None
            and not torch.jit.is_tracing()
            and not _compiling()
            and all(q.is_initialized() and not q.observing for q in quantizers)
        )

    @torch.no_grad()
    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """CPU inference with ONNX Runtime's QLinearConv arithmetic, so that the INT8 .pth
        gives the INT8 ONNX model's output: exact int32 accumulation (float64 holds it
        exactly), then requantization as round(float32(acc) * float32(s_in * s_w / s_out)).
        Float32 convolution would flip a few roundings, and flips compound layer by layer."""
        input_scale = self._input_quant.positive_scale().float()
        bias_scale = self.bias_scale()
        x_int = torch.round(x.double() / input_scale.double())  # the input's (q - zero_point)
        bias_int = None
        if self.bias is not None:  # QuantizeLinear to int32 saturates, as ONNX Runtime does
            bias_int = torch.round(self.bias.float() / bias_scale).double().clamp(INT32_MIN, INT32_MAX)
        acc = F.conv2d(
            x_int,
            self.int8_weight().double(),
            bias_int,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        if self._output_quant is None:  # a float-output conv
            return (acc * bias_scale.double().reshape(1, -1, 1, 1)).to(x.dtype)
        out = self._output_quant
        out_scale = out.positive_scale().float()
        multiplier = (bias_scale / out_scale).reshape(1, -1, 1, 1)
        q = torch.round(acc.float() * multiplier) + out.zero_point.float()
        q = q.clamp(out.qmin, out.qmax) - out.zero_point.float()
        return (q * out_scale).to(x.dtype)  # on the output grid: its ActQuant keeps it as is

    def train(self, mode: bool = True) -> QuantConv2d:
        super().train(mode)
        if not mode:  # freeze the scale for the weights as they are now
            self.refresh_weight_scale()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        weight = state_dict.get(prefix + "weight")
        scale = state_dict.get(prefix + "weight_scale")
        # only a weight of this conv's shape: strict loading reports any other in one line
        if (
            isinstance(weight, torch.Tensor)
            and isinstance(scale, torch.Tensor)
            and weight.shape == self.weight.shape
            and scale.shape == weight.shape[:1]
        ):
            # The grid is read back from the file: its largest |w| / scale is the grid's top.
            # Files from before the cpu grid was 7-bit keep their 127 and run as they were made.
            int8_file = weight.dtype == torch.int8  # its weights are the steps themselves
            steps = weight.detach().float().abs().amax(dim=(1, 2, 3))
            if not int8_file:
                steps = steps / scale.detach().float().clamp(min=1e-12)
            self.weight_qmax = WEIGHT_QMAX if float(steps.max()) > LEGACY_GRID_RATIO else self.profile_qmax
            if int8_file:
                state_dict[prefix + "weight"] = weight.float() * scale.float().reshape(-1, 1, 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _quantizer_state_keys(model: AetherNet) -> list[str]:
    """State-dict keys that exist only in the QAT form."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, ActQuant):
            keys += [f"{name}.{k}" for k in ("scale", "zero_point", "initialized")]
        elif isinstance(module, QuantConv2d):
            keys.append(f"{name}.weight_scale")
    return keys


def _link_conv_quantizers(model: AetherNet) -> None:
    """Tell every QuantConv2d which ActQuants quantize its input (for its bias grid) and its
    output (for integer-exact CPU inference)."""

    def quantizer(point: nn.Module) -> ActQuant | None:  # None: a float output (tensorrt head)
        return point if isinstance(point, ActQuant) else None

    links = [
        (model.head, model.input_q, model.head_q),
        (model.skip, model.input_q, model.skip_q),
        (model.upsample, model.feat_q, model.upsample_q),
    ]
    previous = model.head_q
    for block in model.blocks:
        links += [
            (block.conv1, previous, block.act_q),  # ReLU between: zero-point 0 makes it exact
            (block.conv2, block.act_q, block.conv2_q),
        ]
        previous = block.out_q
    links.append((model.body_tail, previous, model.tail_q))
    for conv, input_quant, output_quant in links:
        object.__setattr__(conv, "_input_quant", input_quant)
        object.__setattr__(conv, "_output_quant", quantizer(output_quant))


def prepare_qat(model: AetherNet, *, int8_profile: str | None = None) -> AetherNet:
    """Turn a float AetherNet into its quantization-aware form, in place, and return it.

    The model is fused first, so that what is fake-quantized is exactly what is deployed:
    every conv's fused weights (symmetric per output channel: [-64, 64] for the cpu profile,
    which x86 CPUs without VNNI add up without saturating; [-127, 127] for tensorrt) and every tensor the INT8
    graph holds (per-tensor INT8, range initialised on the first training batch or by
    calibrate_int8, then learned). The input and, for the cpu profile, the output sit on the
    fixed image grid [0, 1] (uint8: steps of 1/255, zero-point 0). The tensorrt profile keeps
    float outputs for the two output convs: a symmetric int8 grid over [0, 1] would have only
    128 levels. Idempotent."""
    if model.qat:
        return model
    profile = int8_profile or model.int8_profile
    _check_int8_profile(profile)
    model.fuse()
    dtype, device = INT8_PROFILES[profile], _device(model)
    float_output = {"upsample_q", "skip_q", "output_q"} if profile not in INTEGER_OUTPUT_PROFILES else set()
    image_grid = {"input_q", "output_q"}

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if type(child) is nn.Conv2d:
                setattr(parent, name, QuantConv2d.from_conv(child, PROFILE_WEIGHT_QMAX[profile]))
            elif isinstance(child, QuantPoint) and not (parent is model and name in float_output):
                fixed_range = (0.0, 1.0) if parent is model and name in image_grid else None
                setattr(parent, name, ActQuant(dtype, fixed_range=fixed_range).to(device))
            else:
                swap(child)

    swap(model)
    _link_conv_quantizers(model)
    model.int8_backend = model.int8_backend  # the new convs take the model's backend
    model.qat = True
    model.int8_profile = profile
    model.train(model.training)
    return model


def float_copy(model: AetherNet) -> AetherNet:
    """A fused float copy of ``model`` in eval mode: its deploy form, or for a QAT model its conv
    weights on their int8 grid and its biases, without the activation quantizers (what the FP32
    and FP16 release files hold). The grid weights are the ones QAT trained: the latent float
    weights behind them wander up to half a step, which on the cpu profile's [-64, 64] grid cost
    the zoo's tiny x2 0.5 dB (1.8 dB on the second held-out set) against its own INT8."""
    if not model.qat:
        return copy.deepcopy(model).fuse().eval()
    fused = AetherNet(**model.config, fused=True).to(_device(model))
    qat_state = model.state_dict()  # int8 weights are already dequantized by the load
    state = {key: qat_state[key] for key in fused.state_dict()}
    for name, conv in model.named_modules():
        if isinstance(conv, QuantConv2d):
            state[f"{name}.weight"] = conv.grid_weight().detach().clone()
    fused.load_state_dict(state, strict=True)
    return fused.eval()


def act_quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def is_calibrated(model: AetherNet) -> bool:
    """Whether every activation range of a QAT model is set (by QAT training or calibration)."""
    quantizers = act_quantizers(model)
    return bool(quantizers) and all(q.is_initialized() for q in quantizers)


@torch.no_grad()
def calibrate_int8(model: AetherNet, batches: Any) -> AetherNet:
    """Post-training quantization: set every activation range of a QAT-form model to the
    min/max seen on ``batches`` (float NCHW tensors in [0, 1]; the shortcut's spans [0, 1] too).
    Lower quality than QAT fine-tuning; use it for models that were not trained with QAT."""
    prepare_qat(model)
    model.eval()
    quantizers = act_quantizers(model)
    for q in quantizers:
        q.observing = True
    try:
        seen = 0
        for batch in batches:
            model(batch.to(_device(model)))
            seen += 1
        if seen and isinstance(model.skip_q, ActQuant):
            # The shortcut carries input pixels: its range is the image's, not the brightest pixel
            # these images had (calibrated on one photo, it clipped brighter ones: 2-3 dB below bicubic).
            model.skip_q._observe(torch.tensor([0.0, 1.0], device=_device(model)))
    finally:
        for q in quantizers:
            if seen:
                q.finish_observing()
            q.observing = False
    if not seen:
        raise ValueError("calibrate_int8 needs at least one batch of images")
    return model.eval()  # eval() refreshes the weight scales for the input ranges just set


def onednn_int8_available() -> bool:
    """Whether this torch has oneDNN's int8 convolutions (the x86 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise")


Grid = tuple[float, int]  # a quantizer's (scale, zero_point), read once into Python numbers


def _qparams(quantizer: ActQuant) -> Grid:
    return float(quantizer.positive_scale()), int(quantizer.zero_point)


class _OneDNNConv:
    """One QuantConv2d as oneDNN's uint8 x int8 convolution, requantized as ONNX Runtime does.

    oneDNN accumulates (exact int32, given as float32: exact below 2**24, where ONNX Runtime
    converts too); the bias and the requantization round(float32(acc + bias) * float32(s_in * s_w
    / s_out)) are done here, as in QLinearConv. oneDNN's own requantization, (acc * s + bias) /
    s_out, rounds a few values the other way, and in a 13-block model those flips compounded to
    6/255 on a third of the output."""

    def __init__(self, conv: QuantConv2d) -> None:
        assert conv._input_quant is not None and conv._output_quant is not None
        _, self.x_zero_point = _qparams(conv._input_quant)
        self.y_scale, self.y_zero_point = _qparams(conv._output_quant)
        bias_scale = conv.bias_scale().detach()
        self.multiplier = (bias_scale / self.y_scale).float().reshape(1, -1, 1, 1)
        steps = torch.zeros_like(bias_scale)
        if conv.bias is not None:  # on its int32 grid, as the INT8 ONNX graph stores it
            steps = torch.round(conv.bias.detach().float() / bias_scale).clamp(INT32_MIN, INT32_MAX)
        self.bias_steps = steps.reshape(1, -1, 1, 1)
        self.unit_scales = torch.ones_like(bias_scale)
        self.zero_points = torch.zeros(bias_scale.shape, dtype=torch.int64)
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.weight = torch.ops.onednn.qconv_prepack(
            conv.int8_weight(), self.unit_scales, 1.0, self.x_zero_point, *self.geometry, None
        )

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """The output's q - zero_point, rounded but not yet saturated (float32)."""
        acc = torch.ops.onednn.qconv2d_pointwise(
            x,
            1.0,
            self.x_zero_point,
            self.weight,
            self.unit_scales,
            self.zero_points,
            None,
            *self.geometry,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return acc.add_(self.bias_steps).mul_(self.multiplier).round_()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # a ReLU before the output's quantizer needs nothing more: its zero-point is 0
        return self.levels(x).add_(self.y_zero_point).clamp_(0, 255).to(torch.uint8)

    def plus(self, x: torch.Tensor, other: torch.Tensor, other_grid: Grid, out_grid: Grid) -> torch.Tensor:
        """This conv's uint8 output (never materialised) plus uint8 ``other``, on out_grid: the
        same roundings as __call__ then _requantized_sum, two conversions fewer."""
        y = self.levels(x).clamp_(-self.y_zero_point, 255 - self.y_zero_point)
        return _add_on_grid(y.mul_(self.y_scale / out_grid[0]), other, other_grid, out_grid)


def _add_on_grid(term: torch.Tensor, other: torch.Tensor, other_grid: Grid, out_grid: Grid) -> torch.Tensor:
    """``term`` (float, already in units of the output's step) plus uint8 ``other``, as uint8 on
    out_grid: ONNX Runtime's QLinearAdd arithmetic (float, each input scaled by its scale over
    the output's), in place to keep memory traffic down."""
    (so, zo), (sp, zp) = out_grid, other_grid
    term.add_(other.float().sub_(zp).mul_(sp / so)).round_().add_(zo).clamp_(0, 255)
    return term.to(torch.uint8)


def _requantized_sum(a: torch.Tensor, a_grid: Grid, b: torch.Tensor, b_grid: Grid, out_grid: Grid) -> torch.Tensor:
    """uint8 a + b on out_grid, as QLinearAdd computes it."""
    (sa, za), so = a_grid, out_grid[0]
    return _add_on_grid(a.float().sub_(za).mul_(sa / so), b, b_grid, out_grid)


class OneDNNInt8:
    """A calibrated cpu-profile QAT AetherNet (what model_int8.pth loads into) as real int8
    inference on torch's oneDNN kernels (``torch.ops.onednn``, the ones torch.compile's x86
    int8 path lowers to; no quantized tensors, no torch.ao). The INT8 ONNX graph's arithmetic:
    uint8 activations from the input to the output, every conv requantized by oneDNN to its
    output grid as QLinearConv does, every residual add as QLinearAdd, the pixel shuffle on uint8.
    Its output matches model_int8.onnx within 1/255; the integer-exact float64 path
    (QuantConv2d._integer_forward, ``int8_backend = "reference"``) stays the reference the tests
    compare both with. It holds prepacked copies of the weights: AetherNet drops it on
    train(), load_state_dict() and to()."""

    @staticmethod
    def supports(model: AetherNet) -> bool:
        return (
            model.qat
            and model.int8_profile in INTEGER_OUTPUT_PROFILES
            and _device(model).type == "cpu"
            and next(model.parameters()).dtype == torch.float32
            and is_calibrated(model)
            and not any(q.observing for q in act_quantizers(model))
            # a file on the old full int8 grid would saturate on CPUs without VNNI: it runs the
            # simulation, right on every CPU
            and all(m.weight_qmax <= CPU_WEIGHT_QMAX for m in model.modules() if isinstance(m, QuantConv2d))
            and onednn_int8_available()
        )

    @torch.no_grad()
    def __init__(self, model: AetherNet) -> None:
        self.scale = model.scale
        # every grid read once here, not per call: the engine is rebuilt whenever they may change
        self.grids = {name: _qparams(q) for name, q in model.named_modules() if isinstance(q, ActQuant)}
        self.head = _OneDNNConv(model.head)
        self.blocks = [
            (_OneDNNConv(b.conv1), _OneDNNConv(b.conv2), self.grids[f"blocks.{i}.out_q"])
            for i, b in enumerate(model.blocks)
        ]
        self.body_tail = _OneDNNConv(model.body_tail)
        self.upsample = _OneDNNConv(model.upsample)
        self.skip = _OneDNNConv(model.skip)

    def __deepcopy__(self, memo: dict) -> None:
        return None  # packed weights cannot be copied: a copied model builds its own engine

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        grids = self.grids
        s_in, z_in = grids["input_q"]
        # oneDNN's int8 convolutions want channels-last (NHWC) activations
        x_q = x.div(s_in).round_().add_(z_in).clamp_(0, 255).to(torch.uint8)
        x_q = x_q.contiguous(memory_format=torch.channels_last)
        feat = self.head(x_q)
        previous, previous_grid = feat, grids["head_q"]
        for conv1, conv2, out_grid in self.blocks:
            previous = conv2.plus(conv1(previous), previous, previous_grid, out_grid)
            previous_grid = out_grid
        feat = self.body_tail.plus(previous, feat, grids["head_q"], grids["feat_q"])
        out = _requantized_sum(
            self.upsample(feat), grids["upsample_q"], self.skip(x_q), grids["skip_q"], grids["output_q"]
        )
        n, c, h, w = out.shape
        r = self.scale
        out = out.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)
        s_out, z_out = grids["output_q"]
        return out.float().sub_(z_out).mul_(s_out)


def int8_state_dict(model: AetherNet) -> OrderedDict[str, torch.Tensor]:
    """The state dict of a calibrated QAT model with every conv weight stored as int8
    (plus its float per-channel scale): the INT8 PyTorch release format."""
    if not model.qat or not is_calibrated(model):
        raise ValueError("int8_state_dict needs a QAT model whose ranges are set (QAT-trained or calibrated)")
    training = model.training
    model.eval()  # the weight scales of the weights as they are now
    try:
        state_dict = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        for name, module in model.named_modules():
            if isinstance(module, QuantConv2d):
                state_dict[f"{name}.weight"] = module.int8_weight()
    finally:
        model.train(training)  # a training run that saves a checkpoint goes on training
    return state_dict


# ---------------------------------------------------------------------------------------
# Checkpoint I/O
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it to ``path`` (atomic on
    the same file system), on failure remove it: no half-written file ever has the name."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AetherCheckpointError(ValueError):
    """A file or state dict is not a loadable AetherNet checkpoint. The message says what was
    found and what was expected; nothing in the file is ever executed."""


# Wrappers used by BasicSR-style trainers (neosr, traiNNer-redux) and others, in order of
# preference: the EMA weights are the ones meant for inference ("ema" before "model": the
# training state aether_train.py writes holds both).
WRAPPER_KEYS = ("params_ema", "params", "ema", "state_dict", "model", "net")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
_LEGACY_MAX_BYTES = 1 << 20  # a legacy-format pickle is only read when this small
_METADATA_MAX_CHARS, _METADATA_MAX_DEPTH = 1 << 20, 8  # ours is ~1 KB, 3 levels deep
_SAFETENSORS_METADATA_KEY = "aether"

_REQUIRED_KEYS = ("head.weight", "upsample.weight", "skip.weight")
# Only AetherNet v1 checkpoints have these (mean subtraction, partial large kernels, 1x1 mixing).
_V1_KEYS = ("mean", "blocks.0.mix.weight", "blocks.0.mix.branches.0.conv.weight")
_QAT_KEY = "input_q.zero_point"  # quantizer state: only QAT (and INT8) checkpoints have it
_INTEGER_OUTPUT_KEY = "output_q.scale"  # the cpu profile's integer output head; tensorrt's is float


def _form_key(conv: str, fused: bool) -> str:
    """The key of a re-parameterizable conv's full kernel: the conv's own weight once fused, its
    first (largest) branch's in the training form. Which of the two a state dict has tells its form."""
    return f"{conv}.weight" if fused else f"{conv}.branches.0.conv.weight"


def _describe_ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:6])) + (f", ... {ids[-1]}" if len(ids) > 6 else "")


def _describe_keys(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"{len(keys)} keys ({shown}{', ...' if len(keys) > limit else ''})"


def _scale_and_out_channels(sub_pixel_channels: int, in_channels: int) -> tuple[int, int]:
    """Split the upsampler's out_channels * scale**2; like Spandrel, prefer out == in."""
    for out_channels in dict.fromkeys((in_channels, 3, 1, 4)):
        scale = math.isqrt(sub_pixel_channels // out_channels)
        if scale >= 1 and out_channels * scale * scale == sub_pixel_channels:
            return scale, out_channels
    raise AetherCheckpointError(
        f"upsample.weight has {sub_pixel_channels} output channels, which is not "
        "out_channels * scale**2 for any usual channel count"
    )


# What a checkpoint may declare before anything is built: far above every preset, far below
# what a small crafted file could otherwise make us allocate (build_from_state_dict also
# checks that the file holds every number the declared network needs).
CHECKPOINT_LIMITS = {"in_channels": 16, "dim": 1024, "num_blocks": 256, "large_kernel": 31, "scale": 16}


def _check_dense(key: str, tensor: torch.Tensor) -> None:
    """A tensor must own every element its shape declares: a stride-0 or overlapping layout
    lets a few bytes of a file declare a tensor of any size."""
    if tensor.layout != torch.strided or tensor.is_meta:
        raise AetherCheckpointError(
            f"{key!r} is a {tensor.layout} tensor; expected a dense one (damaged or crafted file)"
        )
    extent = 1
    for stride, size in sorted((st, sz) for st, sz in zip(tensor.stride(), tensor.shape, strict=True) if sz > 1):
        if stride < extent:
            raise AetherCheckpointError(
                f"{key!r} declares shape {tuple(tensor.shape)} over overlapping storage (strides "
                f"{tensor.stride()}): not a real weight tensor; the file is damaged or crafted"
            )
        extent = stride * size


def _weight(state_dict: Mapping[str, Any], key: str) -> torch.Tensor:
    """A conv weight of the state dict: 4-D [out, in, k, k] with no dimension of size 0."""
    tensor = state_dict[key]
    shape = tuple(tensor.shape)
    if tensor.ndim != 4 or 0 in shape or shape[2] != shape[3]:
        raise AetherCheckpointError(
            f"{key!r} has shape {shape}; an AetherNet conv weight is [out, in, k, k] with no empty "
            "dimension (damaged or crafted file)"
        )
    return tensor


def _check_limit(name: str, value: int, source: str) -> int:
    if not 1 <= value <= CHECKPOINT_LIMITS[name]:
        raise AetherCheckpointError(
            f"{source} gives {name} = {value}; AetherNet checkpoints have 1 <= {name} <= "
            f"{CHECKPOINT_LIMITS[name]} (damaged or crafted file?)"
        )
    return value


def detect_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Infer every AetherNet hyperparameter from a state dict's keys and shapes alone
    (and, for QAT / INT8 files, the INT8 profile from whether the output quantizer is kept).

    ``AetherNet(**detect_config(sd))`` builds a model that loads ``sd`` with strict=True.
    Raises AetherCheckpointError if the state dict is not an AetherNet one."""
    keys = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor)]
    if not keys:
        raise AetherCheckpointError(
            "not an AetherNet checkpoint: found no tensors; expected a state dict with "
            f"{', '.join(_REQUIRED_KEYS)} and blocks.*"
        )
    if "skip.weight" in state_dict and any(k in state_dict for k in _V1_KEYS):
        raise AetherCheckpointError(
            "an AetherNet v1 checkpoint (partial large-kernel blocks with mean subtraction): this "
            f"aether_arch.py {__version__} builds AetherNet v2, whose blocks differ, so v1 weights do "
            "not load; retrain the model with v2"
        )
    for key in keys:
        _check_dense(key, state_dict[key])
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    block_ids = {k.split(".")[1] for k in keys if k.startswith("blocks.")}
    block_ids = {int(i) for i in block_ids if i.isascii() and i.isdigit()}
    if missing or not block_ids:
        raise AetherCheckpointError(
            f"not an AetherNet checkpoint: found {_describe_keys(sorted(keys))}; expected "
            f"AetherNet keys such as {', '.join(_REQUIRED_KEYS)} and blocks.0.*"
            + (f" (missing {', '.join(missing)})" if missing else "")
        )
    fused = _form_key("body_tail", fused=True) in state_dict
    large_key = _form_key("blocks.0.conv2", fused)
    if large_key not in state_dict:
        raise AetherCheckpointError(
            f"incomplete AetherNet checkpoint: {large_key!r} is missing; the file may be "
            "damaged or from an incompatible version"
        )
    num_blocks = _check_limit("num_blocks", len(block_ids), "its blocks.* keys")
    if block_ids != set(range(num_blocks)):
        gap = next(i for i in range(num_blocks) if i not in block_ids)
        raise AetherCheckpointError(
            f"the checkpoint's blocks are numbered {_describe_ids(sorted(block_ids))}: block "
            f"{gap} is missing; AetherNet blocks are numbered 0..n-1 (damaged or crafted file?)"
        )
    head = _weight(state_dict, "head.weight")
    large = _weight(state_dict, large_key)
    upsample = _weight(state_dict, "upsample.weight")
    dim = _check_limit("dim", int(head.shape[0]), "head.weight")
    in_channels = _check_limit("in_channels", int(head.shape[1]), "head.weight")
    large_kernel = _check_limit("large_kernel", int(large.shape[-1]), large_key)
    if large_kernel % 2 == 0 or large_kernel < 3 or head.shape[2] != 3:
        raise AetherCheckpointError(
            f"{large_key!r} has a {large_kernel}x{large_kernel} kernel and head.weight a "
            f"{head.shape[2]}x{head.shape[3]} one; AetherNet's are odd (>= 3) and 3x3 (damaged or crafted file?)"
        )
    if tuple(upsample.shape[1:]) != (dim, 1, 1) or tuple(large.shape[:2]) != (dim, dim):
        raise AetherCheckpointError(
            f"upsample.weight {tuple(upsample.shape)} and {large_key!r} {tuple(large.shape)} do not "
            f"fit head.weight's {dim} channels (damaged or crafted file?)"
        )
    scale, out_channels = _scale_and_out_channels(int(upsample.shape[0]), in_channels)
    _check_limit("scale", scale, "upsample.weight")
    qat = _QAT_KEY in state_dict
    profile = "cpu" if not qat or _INTEGER_OUTPUT_KEY in state_dict else "tensorrt"
    return {
        "scale": scale,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "dim": dim,
        "num_blocks": num_blocks,
        "large_kernel": large_kernel,
        "fused": fused,
        "qat": qat,
        "int8_profile": profile,
    }


def preset_name(config: Mapping[str, Any]) -> str:
    """The preset a config matches ('aether_small', ...), or 'custom'."""
    for name, values in PRESETS.items():
        if all(config.get(k) == v for k, v in values.items()):
            return name
    return "custom"


def _read_checkpoint_file(path: str) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint file without executing anything in it: (object, metadata)."""
    if not os.path.isfile(path):
        raise AetherCheckpointError(f"checkpoint not found: {path!r} is not a file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise AetherCheckpointError(
            f"unsupported checkpoint type {suffix or '(no extension)'!r} for {path!r}; "
            f"expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    if suffix == ".safetensors":
        return _read_safetensors(path)
    check_archive_size(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; all mean the same
        if "Weights only load failed" in str(exc) and _pickle_imports_code(path):
            raise AetherCheckpointError(
                f"{path!r} holds pickled Python objects that need code to load; refused "
                "for safety (weights_only=True). Re-save it as a plain state dict: "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise AetherCheckpointError(
            f"{path!r} is not a readable PyTorch checkpoint (corrupt or truncated?): {error_summary(exc)}"
        ) from None
    metadata = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), str):
        metadata = parse_json_object(obj["metadata"])
    return obj, metadata


def check_archive_size(path: str) -> None:
    """Refuse a .pth whose content is far larger than the file, before torch inflates it:
    torch.save stores tensors uncompressed, so a legitimate checkpoint's zip entries add up to
    about its own size, while a crafted one of 0.5 MB can declare gigabytes. A file in the
    legacy (pre-zip) format declares its tensor sizes inside a pickle that torch allocates
    before reading, so it is refused unless small."""
    import zipfile

    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        if size > _LEGACY_MAX_BYTES:
            raise AetherCheckpointError(
                f"{path!r} is not a zip-format PyTorch checkpoint (torch >= 1.6 writes those); re-save it "
                "with torch.save(state_dict, path) from a current PyTorch"
            )
        return
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise AetherCheckpointError(f"{path!r} is a damaged zip archive: {error_summary(exc)}") from None
    if declared > 2 * size + (1 << 20):
        raise AetherCheckpointError(
            f"{path!r} declares {declared / 2**20:,.0f} MiB of content in a {size / 2**20:,.1f} MiB file: "
            "torch.save never compresses, so this is not a checkpoint it wrote (a zip bomb?); refused"
        )


def error_summary(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _pickle_imports_code(path: str) -> bool:
    """Whether a pickle that torch's weights-only loader refused is a well-formed pickle that
    imports Python objects (code) rather than damaged bytes. Only parses opcodes
    (pickletools), never executes them. Torch's own message names the refused global for
    torch.save files, but for a plain pickle of protocol 4 or later it says "Unsupported
    operand 149", as it does for random bytes: only the opcodes tell the two apart."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            with open(path, "rb") as f:
                data = f.read()
        return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for op, _, _ in pickletools.genops(data))
    except Exception:
        return False


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise AetherCheckpointError(
            "reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            raw = (f.metadata() or {}).get(_SAFETENSORS_METADATA_KEY)
    except Exception as exc:
        raise AetherCheckpointError(
            f"{path!r} is not a readable safetensors file (corrupt or truncated?): {error_summary(exc)}"
        ) from None
    return tensors, parse_json_object(raw) if raw else {}


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            v
            for item in level
            if isinstance(item, (dict, list))
            for v in (item.values() if isinstance(item, dict) else item)
        ]
    return depth


def parse_json_object(text: str) -> dict[str, Any]:
    """A checkpoint's JSON metadata, or {} when it is not plain JSON (NaN, Infinity, nesting
    deeper than any metadata we write, or not an object): it is only ever informative."""
    if not isinstance(text, str) or len(text) > _METADATA_MAX_CHARS:
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) and _json_depth(value) <= _METADATA_MAX_DEPTH else {}


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The plain state dict inside a trainer checkpoint: unwraps params_ema / params /
    state_dict / model / net, strips a DataParallel 'module.' prefix, drops non-tensors (and
    keys that are not names: weights_only loading accepts any key)."""
    if not isinstance(obj, Mapping):
        raise AetherCheckpointError(
            f"not an AetherNet checkpoint: found a {type(obj).__name__}, expected a state "
            "dict (a mapping of parameter names to tensors)"
        )
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping) and obj[key]:
            obj = obj[key]
            break
    state_dict = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    if not state_dict:
        raise AetherCheckpointError(
            f"not an AetherNet checkpoint: found "
            f"{'an empty dict' if not obj else _describe_keys(sorted(map(str, obj)))} with no tensors; "
            "expected a state dict of AetherNet weights"
        )
    return state_dict


def _accept_float_state_dict(model: AetherNet, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a fused or QAT model loads a float checkpoint (training or
    fused form) with strict=True. Training-form weights are fused here; quantizer state the
    float checkpoint lacks keeps this model's (uninitialised) values."""
    if not model.fused:
        return
    quantizer_keys = _quantizer_state_keys(model)
    if any(prefix + k in state_dict for k in quantizer_keys):
        return  # a QAT checkpoint: load as is
    if prefix + _form_key("body_tail", fused=False) in state_dict:
        float_sd = {k[len(prefix) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
        training_form = AetherNet(**{**model.config, "fused": False}).to(next(model.parameters()))
        training_form.load_state_dict(float_sd, strict=True)
        state_dict.update({prefix + k: v for k, v in training_form.fuse().state_dict().items()})
    if quantizer_keys:
        for name, conv in model.named_modules():
            if isinstance(conv, QuantConv2d):  # the loaded weights' own scale, on this model's grid
                key = f"{prefix}{name}."
                state_dict[key + "weight_scale"] = conv.scale_for(
                    state_dict[key + "weight"], state_dict.get(key + "bias"), conv.profile_qmax
                )
        ours = model.state_dict()
        for key in quantizer_keys:  # the activation quantizers keep this model's state
            state_dict.setdefault(prefix + key, ours[key])


def holds_int8_weights(state_dict: Mapping[str, Any], prefix: str = "") -> bool:
    """Whether ``state_dict`` is an INT8 release file (int8 conv weights, int8_state_dict)."""
    weight = state_dict.get(prefix + "head.weight")
    return isinstance(weight, torch.Tensor) and weight.dtype == torch.int8


def _select_int8_backend(model: AetherNet, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: an INT8 release file runs on oneDNN's int8 kernels, however it is
    loaded (load_model, spandrel's descriptor, a plain load_state_dict)."""
    if model.qat and holds_int8_weights(state_dict, prefix):
        model.int8_backend = "onednn"


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a .pth / .pt / .safetensors checkpoint."""
    obj, metadata = _read_checkpoint_file(os.fspath(path))
    return unwrap_state_dict(obj), metadata


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, fused: bool = False) -> AetherNet:
    """The AetherNet whose weights are ``state_dict`` (eval mode, float32); ``fused``: in the
    deploy form even if the checkpoint is in the training form."""
    config = detect_config(state_dict)
    with torch.device("meta"):  # no memory: how many numbers the declared network needs
        needed = sum(p.numel() for p in AetherNet(**{**config, "qat": False}).parameters())
    held = sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor))
    if needed > held:
        raise AetherCheckpointError(
            f"the checkpoint declares an AetherNet ({preset_name(config)}, x{config['scale']}) with "
            f"{needed:,} weights but holds only {held:,} numbers (damaged or crafted file?)"
        )
    model = AetherNet(**{**config, "fused": config["fused"] or fused})
    expected = model.state_dict()
    # a number's kind must be the model's: load_state_dict would cast an integer or complex
    # tensor into a float weight; an INT8 file's conv weights are int8 beside their scales
    wrong_kind = [
        k
        for k, v in state_dict.items()
        if k in expected
        and v.is_floating_point() != expected[k].is_floating_point()
        and not (v.dtype == torch.int8 and k.endswith(".weight") and k[: -len("weight")] + "weight_scale" in state_dict)
    ]
    if wrong_kind:
        raise AetherCheckpointError(
            f"the checkpoint stores {_describe_keys(wrong_kind)} as {state_dict[wrong_kind[0]].dtype}, where "
            "AetherNet has floating-point numbers (damaged or crafted file?)"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise AetherCheckpointError(
            "AetherNet checkpoint does not match the architecture inferred from it "
            f"({preset_name(config)}, x{config['scale']}): " + " ".join(str(exc).split())[:300]
        ) from None
    model.eval()
    # checked as loaded: an INT8 file's weights are its int8 steps times their scales, finite in
    # the file, which can overflow once multiplied
    non_finite = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    in_file = [k for k in non_finite if k in state_dict and not torch.isfinite(state_dict[k]).all()]
    if in_file:
        raise AetherCheckpointError(
            f"the checkpoint has NaN or infinite weights in {_describe_keys(in_file)}: the training "
            "run that wrote it diverged; use an earlier checkpoint"
        )
    if non_finite:
        raise AetherCheckpointError(
            f"the checkpoint's weights overflow to infinity in {_describe_keys(non_finite)} once its INT8 scales "
            "are applied (damaged or crafted file?)"
        )
    return model


def load_model(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> AetherNet:
    """Load an AetherNet (eval mode) from a .pth / .pt / .safetensors file or a state dict,
    in any form this file saves or a trainer writes (training form, fused)."""
    if isinstance(path_or_state_dict, Mapping):
        state_dict = unwrap_state_dict(path_or_state_dict)
    else:
        state_dict, _ = read_checkpoint(os.fspath(path_or_state_dict))
    return build_from_state_dict(state_dict)


def checkpoint_metadata(model: AetherNet, **extra: Any) -> dict[str, Any]:
    """JSON-safe description of a model, stored next to its weights."""
    return {
        "architecture": ARCH_NAME,
        "arch_version": ARCH_VERSION,
        "version": __version__,
        "preset": preset_name(model.config),
        "config": dict(model.config),
        "fused": model.fused,
        "qat": model.qat,
        **({"int8_profile": model.int8_profile} if model.qat else {}),
        **extra,
    }


def save_checkpoint(
    model: AetherNet,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    param_key: str = "params",
    int8_weights: bool = False,
) -> None:
    """Save plain tensors + JSON metadata (.pth: ``{param_key: sd, "metadata": json}``;
    .safetensors: tensors + header metadata). Written to a temp file, then renamed.
    ``int8_weights``: store a calibrated QAT model's conv weights as int8 + scales."""
    path = os.fspath(path)
    meta = json.dumps({**checkpoint_metadata(model), **(metadata or {})}, sort_keys=True)
    source = int8_state_dict(model) if int8_weights else model.state_dict()
    # clone: saved tensors must own compact storage (no views, no shared buffers)
    state_dict = OrderedDict((k, v.detach().clone().contiguous()) for k, v in source.items())
    with atomic_write(path) as tmp:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(dict(state_dict), tmp, metadata={_SAFETENSORS_METADATA_KEY: meta})
        else:
            with open(tmp, "wb") as file:  # a failing disk raises OSError with its errno
                torch.save({param_key: state_dict, "metadata": meta}, file)


# ---------------------------------------------------------------------------------------
# ONNX export (onnx is imported lazily: the file itself needs only torch)
# ---------------------------------------------------------------------------------------

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "output"
# 14..18: per-channel Q/DQ needs >= 13, onnx's converter has no Sub adapter down to 13,
# DirectML stops at 17 (the default).
ONNX_OPSETS = range(14, 19)
# The IR version our files declare: the exporter writes the newest (10), which onnxruntime
# before 1.18 refuses; stock chaiNNer pins onnxruntime 1.17.1. IR 8 holds every opset up to
# 18 and every op we use, and onnxruntime >= 1.14 reads it.
ONNX_IR_VERSION = 8


@contextlib.contextmanager
def _quiet_exporter():
    """The torch.onnx exporter logs and warns about its own internals (missing torchvision
    ops, opset fallbacks, a pytree FutureWarning); none of it concerns our users. Deprecation
    warnings are left alone, so tests run with -W error::DeprecationWarning still see them."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|onnxscript)\.")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _materialize_shared_initializers(graph: Any) -> None:
    """Give every conv its own bias/weight initializer. Exporters de-duplicate equal tensors
    (e.g. all-zero biases) into Identity nodes, which stops ONNX Runtime's quantizer from
    fusing those convs into integer kernels."""
    import onnx

    initializers = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _fold_weight_quantization(graph: Any) -> None:
    """Store quantized weights as int8 initializers: QuantizeLinear(float initializer) ->
    int8 initializer (same rounding as ONNX: half to even, saturate). Smaller files, and the
    runtime no longer quantizes the weights on every run."""
    import numpy as np
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    kept, replaced = [], set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and all(i in initializers for i in node.input):
            x, scale, zero_point = (numpy_helper.to_array(initializers[i]) for i in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
            info = np.iinfo(zero_point.dtype)
            q = np.clip(np.rint(x / scale) + zero_point.astype(np.int32), info.min, info.max)
            graph.initializer.append(numpy_helper.from_array(q.astype(zero_point.dtype), node.output[0]))
            replaced.add(node.input[0])
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for node in graph.node for i in node.input}
    unused = [init for init in graph.initializer if init.name in replaced and init.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def _quantize_conv_biases(graph: Any) -> None:
    """Store the bias of every integer conv (input and weights from DequantizeLinear) as an int32
    initializer on the grid input_scale x weight_scale behind a DequantizeLinear, the form ONNX
    Runtime fuses into QLinearConv. The exported graph carries the float bias (torch's fake
    quantization has no int32 form); the rounding is QuantConv2d.quantized_bias's, in float32."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}

    def dequantize_scale(name: str) -> Any:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in initializers:
            return None
        return numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)

    for index, conv in reversed(list(enumerate(graph.node))):
        if conv.op_type != "Conv" or len(conv.input) < 3 or conv.input[2] not in initializers:
            continue
        input_scale, weight_scale = dequantize_scale(conv.input[0]), dequantize_scale(conv.input[1])
        if input_scale is None or weight_scale is None:
            continue
        bias = numpy_helper.to_array(initializers[conv.input[2]]).astype(np.float32)
        scale = (input_scale * weight_scale).astype(np.float32)
        quantized = np.clip(np.rint(bias / scale), INT32_MIN, INT32_MAX).astype(np.int32)
        name = f"{conv.output[0]}_bias"  # one per conv: two convs may share a bias initializer
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int32"),
                numpy_helper.from_array(np.broadcast_to(scale, bias.shape).copy(), f"{name}_int32_scale"),
                numpy_helper.from_array(np.zeros(bias.shape, np.int32), f"{name}_int32_zero_point"),
            ]
        )
        inputs = [f"{name}_int32", f"{name}_int32_scale", f"{name}_int32_zero_point"]
        graph.node.insert(index, helper.make_node("DequantizeLinear", inputs, [f"{name}_dequantized"], axis=0))
        conv.input[2] = f"{name}_dequantized"
    used = {i for node in graph.node for i in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def _uint8_pixel_shuffle(graph: Any) -> None:
    """Run an INT8 graph's pixel shuffle as uint8 transposes that each move one axis.

    ``Q -> DQ -> DepthToSpace -> Q -> DQ`` with both Q on the same grid (the integer output
    head) becomes ``Q -> Transpose -> Reshape -> Transpose -> Reshape -> Transpose -> Reshape
    -> DQ``: exact, since the values already lie on that grid. ONNX Runtime's uint8
    DepthToSpace took 2.3 ms for a 256x256 x4 frame; its single-axis transposes take ~1.0 ms,
    and the first (NCHW -> NHWC) cancels the transpose its NHWC integer convs end with. The
    reshapes use constant 0/-1 shapes, so static shape inference still gives the output size
    (chaiNNer reads the scale that way). Float graphs keep DepthToSpace, which converters (NCNN
    has no 5-D tensors) and other runtimes map to a pixel shuffle."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}  # decoded only for the Q/DQ grids
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op_type: str) -> Any:
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None

    def grid(node: Any) -> tuple[bytes, ...] | None:
        names = node.input[1:3]
        if len(names) != 2 or not all(n in initializers for n in names):
            return None
        return tuple(numpy_helper.to_array(initializers[n]).tobytes() for n in names)

    channels = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    for shuffle in [n for n in graph.node if n.op_type == "DepthToSpace"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in shuffle.attribute}
        dequantize = producer.get(shuffle.input[0])
        requantize = only_consumer(shuffle.output[0], "QuantizeLinear")
        if (
            attrs.get("mode") != b"CRD"
            or not channels
            or dequantize is None
            or dequantize.op_type != "DequantizeLinear"
            or only_consumer(dequantize.output[0], "DepthToSpace") is None
            or requantize is None
            or grid(dequantize) is None
            or grid(dequantize) != grid(requantize)
        ):
            continue
        r = int(attrs["blocksize"])
        name = shuffle.name or "pixel_shuffle"
        shapes = {  # 0 copies the input's dim, -1 is inferred: batch, height, width stay dynamic
            f"{name}_split_subpixels": [0, 0, 0, channels, r * r],
            f"{name}_merge_rows": [0, 0, 0, -1, r],
            f"{name}_merge_columns": [0, 0, 0, -1],
        }
        graph.initializer.extend(numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in shapes.items())
        # [n, c*r*r, h, w] -> [n, h, w, c, r*r] -> [n, w, c, h, r*r] -> [n, w, c, h*r, r]
        # -> [n, c, h*r, w, r] -> [n, c, h*r, w*r]
        steps = [
            ("Transpose", [], {"perm": [0, 2, 3, 1]}),
            ("Reshape", [f"{name}_split_subpixels"], {}),
            ("Transpose", [], {"perm": [0, 2, 3, 1, 4]}),
            ("Reshape", [f"{name}_merge_rows"], {}),
            ("Transpose", [], {"perm": [0, 2, 3, 1, 4]}),
            ("Reshape", [f"{name}_merge_columns"], {}),
        ]
        index = list(graph.node).index(dequantize)
        previous = dequantize.input[0]
        for i, (op, shape, attributes) in enumerate(steps):
            output = requantize.output[0] if i == len(steps) - 1 else f"{name}_uint8_{i}"
            node = helper.make_node(op, [previous, *shape], [output], name=f"{name}_uint8_{i}", **attributes)
            graph.node.insert(index + i, node)
            previous = output
        for node in (dequantize, shuffle, requantize):
            graph.node.remove(node)


def onnx_model_proto(model: AetherNet, *, opset: int = 17, example_size: int = 16) -> Any:
    """The ONNX ModelProto of ``model`` (any form; export a fused one for deployment):
    input ``input`` [batch, C, height, width] -> output ``output`` [batch, C, height*s,
    width*s], batch/height/width dynamic, channels static."""
    import onnx
    import onnx.version_converter

    if opset not in ONNX_OPSETS:
        raise ValueError(f"ONNX opset {opset} is not supported; use {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]}")
    if model.qat and not is_calibrated(model):
        raise ValueError(
            "this QAT model has activation ranges that were never set: fine-tune it with QAT "
            "or run calibrate_int8() on real images before exporting"
        )
    parameter = next(model.parameters())
    example = torch.rand(
        1, model.in_channels, example_size, example_size, dtype=parameter.dtype, device=parameter.device
    )
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"x": dims},
                optimize=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    proto = program.model_proto
    if proto.opset_import[0].version != opset:  # the exporter falls back to its own opset
        proto = onnx.version_converter.convert_version(proto, opset)
    _materialize_shared_initializers(proto.graph)
    _fold_weight_quantization(proto.graph)
    _quantize_conv_biases(proto.graph)
    _uint8_pixel_shuffle(proto.graph)
    proto.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def set_onnx_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Replace the model's metadata_props (values that are not strings are stored as JSON)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = valid_utf8(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def valid_utf8(text: str) -> str:
    """``text`` as valid UTF-8: a file name that is not (Linux allows it) reaches Python as lone
    surrogates, which protobuf and UTF-8 writers refuse; its bytes become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def save_onnx(proto: Any, path: str | os.PathLike) -> None:
    """Write an ONNX model atomically (temp file, then rename)."""
    import onnx

    with atomic_write(path) as tmp:
        onnx.save(proto, tmp)


def export_onnx(
    model: AetherNet,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Export ``model`` to ``path`` with the standard AetherNet metadata."""
    proto = onnx_model_proto(model, opset=opset)
    set_onnx_metadata(proto, {**checkpoint_metadata(model), **(metadata or {})})
    save_onnx(proto, path)


# ---------------------------------------------------------------------------------------
# Framework glue: copied into neosr/archs/ or traiNNer/archs/, the presets register
# themselves in that framework's ARCH_REGISTRY. Standalone, nothing happens.
# register_spandrel() adds AetherNet to Spandrel (and the apps built on it) on request.
# ---------------------------------------------------------------------------------------


def _with_default_scale(factory: Any, default_scale: int) -> Any:
    """``factory`` with another default scale, keeping its name (registries key on it)."""

    def preset(scale: int = default_scale, **overrides: Any) -> AetherNet:
        return factory(scale=scale, **overrides)

    preset.__name__ = preset.__qualname__ = factory.__name__
    preset.__doc__ = factory.__doc__
    return preset


def register_presets(registry: Any, default_scale: int | None = None) -> None:
    """Register the four presets in a BasicSR-style registry (idempotent)."""
    for name, factory in PRESET_FACTORIES.items():
        if name in registry:
            continue
        registry.register(factory if default_scale is None else _with_default_scale(factory, default_scale))


# Half and bfloat16 support, measured (not assumed) by tests/test_spandrel.py on every
# checkpoint form: FP16 output within 45 dB PSNR of FP32, bfloat16 within 40 dB.
SPANDREL_SUPPORTS_HALF = True
SPANDREL_SUPPORTS_BFLOAT16 = True


def _spandrel_architecture() -> Any:
    """AetherNet as a spandrel ``Architecture``. Detection keys on names every AetherNet
    state dict has in every form (training, fused, QAT, INT8) and no other architecture uses
    together; docs/spandrel_proposal.md explains them."""
    spandrel = _import_spandrel()
    Architecture, KeyCondition = spandrel.Architecture, spandrel.util.KeyCondition
    ImageModelDescriptor, ModelTiling, SizeRequirements = (
        spandrel.ImageModelDescriptor,
        spandrel.ModelTiling,
        spandrel.SizeRequirements,
    )

    detect = KeyCondition.has_all(
        *_REQUIRED_KEYS,
        *(
            KeyCondition.has_any(_form_key(conv, True), _form_key(conv, False))
            for conv in ("blocks.0.conv2", "body_tail")
        ),
    )

    class AetherNetArch(Architecture[AetherNet]):
        def __init__(self) -> None:
            super().__init__(id=ARCH_NAME, detect=detect)

        def load(self, state_dict: Mapping[str, Any]) -> Any:
            # The network in the form the file holds, as spandrel does for SPAN: then the
            # hyperparameters (fused included) survive a round trip, and an eval-mode training
            # form runs its fused convs anyway (RepConv.forward). Loading here as well as in
            # spandrel's descriptor costs a second copy of the weights but turns a mismatched
            # file into AetherCheckpointError's one-line message.
            model = build_from_state_dict(state_dict)
            config = model.config
            return ImageModelDescriptor(
                model,
                state_dict,
                architecture=self,
                purpose="Restoration" if config["scale"] == 1 else "SR",
                tags=[preset_name(config), f"{config['dim']}nf"] + (["int8"] if model.qat else []),
                supports_half=SPANDREL_SUPPORTS_HALF,
                supports_bfloat16=SPANDREL_SUPPORTS_BFLOAT16,
                scale=config["scale"],
                input_channels=config["in_channels"],
                output_channels=config["out_channels"],
                # Fully convolutional with zero padding: any size, even 1x1, works.
                size_requirements=SizeRequirements(),
                tiling=ModelTiling.SUPPORTED,
            )

    return AetherNetArch()


def _import_spandrel() -> Any:
    # By name at call time: this file is also the network code of spandrel's own AetherNet
    # package (contrib/spandrel), where a static import of spandrel would be an import cycle.
    try:
        spandrel = importlib.import_module("spandrel")
        importlib.import_module("spandrel.util")
    except ImportError:
        raise ImportError(
            "register_spandrel() needs the spandrel package, which is not installed: pip install spandrel"
        ) from None
    return spandrel


def register_spandrel() -> None:
    """Add AetherNet to ``spandrel.MAIN_REGISTRY`` (idempotent), tried before spandrel's own
    architectures (``Compact`` is the first of them): then
    ``spandrel.ModelLoader().load_from_file(path)`` loads every AetherNet checkpoint and release
    .pth (FP32, FP16, INT8, QAT, training form)."""
    spandrel = _import_spandrel()
    if ARCH_NAME not in spandrel.MAIN_REGISTRY:
        spandrel.MAIN_REGISTRY.add(
            spandrel.ArchSupport.from_architecture(_spandrel_architecture(), before=("Compact",))
        )


def _register_in_host_framework(module_name: str) -> None:
    host = module_name.split(".")[0]
    try:
        if host == "neosr":
            # neosr does not pass the scale; arch files read it from the run's options.
            from neosr.archs.arch_util import net_opt
            from neosr.utils.registry import ARCH_REGISTRY

            register_presets(ARCH_REGISTRY, default_scale=net_opt()[0])
        elif host == "traiNNer":
            # traiNNer-redux passes scale=... to the factory itself.
            from traiNNer.utils.registry import ARCH_REGISTRY

            register_presets(ARCH_REGISTRY)
    except ImportError:
        pass


_register_in_host_framework(__name__)
