"""AetherNet: a fast, re-parameterizable single-image super-resolution network.

One self-contained file (only torch and the standard library at import time) so it can be
copied into neosr (``neosr/archs/``) or traiNNer-redux (``traiNNer/archs/``) as is.

Layout, top-down:
  building blocks (re-parameterizable convolutions) -> network -> presets -> fusion maths
  -> checkpoint I/O -> framework glue.

Design notes
------------
* Training form: every convolution of the body is a sum of parallel branches (a k x k
  conv, smaller convs, an identity), each followed by BatchNorm (RepVGG/SPAN style).
  ``AetherNet.fuse()`` folds each such block into ONE standard convolution; the norms
  disappear into its weights and bias. The fused (deploy) form is the one that is exported.
* The large receptive field comes from a *partial dense* large kernel: a dense k x k conv over
  a slice of the channels (the rest pass through untouched). Depthwise large kernels would be
  cheaper in FP32 but run SLOWER in INT8 on ONNX Runtime's CPU provider, whereas dense convs
  run 2-4x faster in INT8, so the deploy graph is dense convs + ReLU + adds only: every op
  quantizes to an integer kernel.
* The input is normalised inside the network (mean subtraction); input and output are RGB,
  float, NCHW, range [0, 1]. In eval mode the output is clamped to [0, 1].
"""

from __future__ import annotations

import contextlib
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

__version__ = "0.1.0"

ARCH_NAME = "AetherNet"

# DIV2K RGB mean, the usual SR normalisation; channels beyond RGB use 0.5.
_RGB_MEAN = (0.4488, 0.4371, 0.4040)


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


def pad_kernel(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-pad a (out, in, k, k) kernel to a centred kernel_size x kernel_size kernel."""
    pad = (kernel_size - weight.shape[-1]) // 2
    return F.pad(weight, [pad, pad, pad, pad])


def identity_kernel(
    channels: int, kernel_size: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The (channels, channels, k, k) kernel of the identity map."""
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=dtype, device=device)
    centre = kernel_size // 2
    weight[torch.arange(channels), torch.arange(channels), centre, centre] = 1.0
    return weight


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


class ConvNorm(nn.Module):
    """One branch of a re-parameterizable conv: a bias-free conv followed by BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def fused_kernel(self, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = fold_batchnorm(self.conv.weight, None, self.norm)
        return pad_kernel(weight, kernel_size), bias


class IdentityNorm(nn.Module):
    """The identity branch of a re-parameterizable conv: BatchNorm of the input itself."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def fused_kernel(self, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.norm.running_mean
        identity = identity_kernel(
            mean.shape[0], kernel_size, dtype=mean.dtype, device=mean.device
        )
        return fold_batchnorm(identity, None, self.norm)


class RepConv(nn.Module):
    """Training form of a k x k convolution: parallel conv+norm branches of decreasing kernel
    size, plus a normed identity when shapes allow. ``fuse()`` returns the equivalent
    ``nn.Conv2d``; the branches exist only to make optimisation easier (RepVGG)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.kernel_size = max(kernel_sizes)
        self.branches = nn.ModuleList(
            ConvNorm(in_channels, out_channels, k) for k in sorted(kernel_sizes, reverse=True)
        )
        self.identity = IdentityNorm(out_channels) if in_channels == out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.identity(x) if self.identity is not None else 0
        for branch in self.branches:
            out = out + branch(x)
        return out

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [branch.fused_kernel(self.kernel_size) for branch in self.branches]
        if self.identity is not None:
            parts.append(self.identity.fused_kernel(self.kernel_size))
        weight = torch.stack([w for w, _ in parts]).sum(0)
        bias = torch.stack([b for _, b in parts]).sum(0)
        return weight, bias

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        weight, bias = self.fused_weight_bias()
        conv = nn.Conv2d(
            weight.shape[1], weight.shape[0], self.kernel_size, padding=self.kernel_size // 2
        ).to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return conv


def make_conv(
    in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...], *, fused: bool
) -> nn.Module:
    """A RepConv in training form, or the plain conv it fuses into in deploy form."""
    if fused:
        k = max(kernel_sizes)
        return nn.Conv2d(in_channels, out_channels, k, padding=k // 2)
    return RepConv(in_channels, out_channels, kernel_sizes)


def fuse_children(module: nn.Module) -> None:
    """Replace every RepConv below ``module`` by its fused nn.Conv2d, in place."""
    for name, child in module.named_children():
        if isinstance(child, RepConv):
            setattr(module, name, child.fuse())
        else:
            fuse_children(child)


class PartialLargeKernel(nn.Module):
    """Dense k x k conv on the first ``partial_channels`` channels; the rest pass through.

    A dense (not depthwise) large kernel on a slice keeps the large receptive field while
    staying an integer-friendly GEMM in INT8 runtimes (see module docstring)."""

    def __init__(self, channels: int, partial_channels: int, kernel_size: int, *, fused: bool):
        super().__init__()
        self.partial_channels = partial_channels
        self.conv = make_conv(partial_channels, partial_channels, (kernel_size, 3), fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.partial_channels
        return torch.cat([self.conv(x[:, :p]), x[:, p:]], dim=1)


class AetherBlock(nn.Module):
    """Residual block: 3x3 conv -> ReLU -> partial large-kernel conv -> 1x1 conv, + input."""

    def __init__(
        self, channels: int, partial_channels: int, large_kernel: int, *, fused: bool
    ) -> None:
        super().__init__()
        self.local = make_conv(channels, channels, (3, 1), fused=fused)
        self.act = nn.ReLU(inplace=True)
        self.spatial = PartialLargeKernel(channels, partial_channels, large_kernel, fused=fused)
        self.mix = make_conv(channels, channels, (1,), fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.spatial(self.act(self.local(x))))


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
        large_kernel: odd kernel size of the partial large-kernel conv.
        partial_channels: channels the large kernel is applied to (<= dim).
        fused: build the deploy form directly (to load fused checkpoints).
    """

    def __init__(
        self,
        *,
        scale: int = 4,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: int = 8,
        large_kernel: int = 9,
        partial_channels: int = 16,
        fused: bool = False,
    ) -> None:
        super().__init__()
        _check_hyperparameters(
            scale=scale,
            in_channels=in_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            large_kernel=large_kernel,
            partial_channels=partial_channels,
        )
        self.config: dict[str, Any] = {
            "scale": scale,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "dim": dim,
            "num_blocks": num_blocks,
            "large_kernel": large_kernel,
            "partial_channels": partial_channels,
        }
        self.scale = scale
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fused = fused

        self.register_buffer("mean", _channel_mean(in_channels))
        self.head = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.blocks = nn.Sequential(
            *(
                AetherBlock(dim, partial_channels, large_kernel, fused=fused)
                for _ in range(num_blocks)
            )
        )
        self.body_tail = make_conv(dim, dim, (3, 1), fused=fused)
        self.upsample = nn.Conv2d(dim, out_channels * scale * scale, 3, padding=1)
        # Learned shortcut from the input straight to the sub-pixel output, initialised to
        # nearest-neighbour upsampling: the body only has to learn the residual detail.
        self.skip = nn.Conv2d(in_channels, out_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        if not fused:
            self._init_skip_as_nearest()

    @torch.no_grad()
    def _init_skip_as_nearest(self) -> None:
        self.skip.weight.zero_()
        self.skip.bias.zero_()
        if self.in_channels == self.out_channels:
            r2 = self.scale * self.scale
            for c in range(self.out_channels):
                self.skip.weight[c * r2 : (c + 1) * r2, c, 1, 1] = 1.0

    def forward_unclamped(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.mean
        feat = self.head(x)
        feat = feat + self.body_tail(self.blocks(feat))
        out = self.shuffle(self.upsample(feat) + self.skip(x))
        # A fused model has the output mean folded into the upsampler bias (see fuse()).
        return out if self.fused else out + self._output_mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_unclamped(x)
        return out if self.training else out.clamp(0.0, 1.0)

    def _output_mean(self) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return self.mean
        return _channel_mean(self.out_channels).to(self.mean)

    @torch.no_grad()
    def fuse(self) -> "AetherNet":
        """Turn the model, in place, into its deploy form and return it. Idempotent.

        Every RepConv (parallel branches + BatchNorms) becomes one nn.Conv2d, and the output
        mean shift is folded into the upsampler bias (PixelShuffle maps channel
        c*r*r + i to colour c, so each colour's mean goes to its r*r sub-pixel channels)."""
        if self.fused:
            return self
        fuse_children(self)
        r2 = self.scale * self.scale
        self.upsample.bias.add_(self._output_mean().flatten().repeat_interleave(r2))
        self.fused = True
        return self

    def extra_repr(self) -> str:
        return f"fused={self.fused}, " + ", ".join(f"{k}={v}" for k, v in self.config.items())


def _channel_mean(channels: int) -> torch.Tensor:
    values = _RGB_MEAN if channels == 3 else (0.5,) * channels
    return torch.tensor(values, dtype=torch.float32).reshape(1, channels, 1, 1)


def _check_hyperparameters(**hp: int) -> None:
    for name, value in hp.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"AetherNet: {name} must be a positive integer, got {value!r}")
    if hp["large_kernel"] % 2 == 0 or hp["large_kernel"] < 3:
        raise ValueError(
            f"AetherNet: large_kernel must be odd and >= 3, got {hp['large_kernel']}"
        )
    if hp["partial_channels"] > hp["dim"]:
        raise ValueError(
            f"AetherNet: partial_channels ({hp['partial_channels']}) must not exceed "
            f"dim ({hp['dim']})"
        )


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, int]] = {
    "aether_tiny": {"dim": 32, "num_blocks": 6, "large_kernel": 7, "partial_channels": 16},
    "aether_small": {"dim": 48, "num_blocks": 8, "large_kernel": 9, "partial_channels": 16},
    "aether_medium": {"dim": 64, "num_blocks": 16, "large_kernel": 11, "partial_channels": 32},
    "aether_large": {"dim": 128, "num_blocks": 24, "large_kernel": 13, "partial_channels": 32},
}


def _preset(name: str, scale: int, overrides: dict[str, Any]) -> AetherNet:
    return AetherNet(**{**PRESETS[name], "scale": scale, **overrides})


def aether_tiny(scale: int = 4, **overrides: Any) -> AetherNet:
    """Real-time class preset."""
    return _preset("aether_tiny", scale, overrides)


def aether_small(scale: int = 4, **overrides: Any) -> AetherNet:
    """SPAN / Compact class preset."""
    return _preset("aether_small", scale, overrides)


def aether_medium(scale: int = 4, **overrides: Any) -> AetherNet:
    """Mid-size preset."""
    return _preset("aether_medium", scale, overrides)


def aether_large(scale: int = 4, **overrides: Any) -> AetherNet:
    """Quality preset."""
    return _preset("aether_large", scale, overrides)


PRESET_FACTORIES = {f.__name__: f for f in (aether_tiny, aether_small, aether_medium, aether_large)}


# ---------------------------------------------------------------------------------------
# Checkpoint I/O
# ---------------------------------------------------------------------------------------


class AetherCheckpointError(ValueError):
    """A file or state dict is not a loadable AetherNet checkpoint. The message says what was
    found and what was expected; nothing in the file is ever executed."""


# Wrappers used by BasicSR-style trainers (neosr, traiNNer-redux) and others, in order of
# preference: the EMA weights are the ones meant for inference.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
_SAFETENSORS_METADATA_KEY = "aether"

_REQUIRED_KEYS = ("mean", "head.weight", "upsample.weight", "skip.weight")


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


def detect_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Infer every AetherNet hyperparameter from a state dict's keys and shapes alone.

    ``AetherNet(**detect_config(sd))`` builds a model that loads ``sd`` with strict=True.
    Raises AetherCheckpointError if the state dict is not an AetherNet one."""
    keys = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor)]
    if not keys:
        raise AetherCheckpointError(
            "not an AetherNet checkpoint: found no tensors; expected a state dict with "
            f"{', '.join(_REQUIRED_KEYS)} and blocks.*"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    block_ids = {int(k.split(".")[1]) for k in keys if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if missing or not block_ids:
        raise AetherCheckpointError(
            f"not an AetherNet checkpoint: found {_describe_keys(sorted(keys))}; expected "
            f"AetherNet keys such as {', '.join(_REQUIRED_KEYS)} and blocks.0.*"
            + (f" (missing {', '.join(missing)})" if missing else "")
        )
    fused = "body_tail.weight" in state_dict
    large_key = "blocks.0.spatial.conv." + ("weight" if fused else "branches.0.conv.weight")
    if large_key not in state_dict:
        raise AetherCheckpointError(
            f"incomplete AetherNet checkpoint: {large_key!r} is missing; the file may be "
            "damaged or from an incompatible version"
        )
    head = state_dict["head.weight"]
    large = state_dict[large_key]
    in_channels = int(head.shape[1])
    scale, out_channels = _scale_and_out_channels(
        int(state_dict["upsample.weight"].shape[0]), in_channels
    )
    return {
        "scale": scale,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "dim": int(head.shape[0]),
        "num_blocks": max(block_ids) + 1,
        "large_kernel": int(large.shape[-1]),
        "partial_channels": int(large.shape[0]),
        "fused": fused,
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
            f"{path!r} is not a readable PyTorch checkpoint (corrupt or truncated?): "
            f"{_first_line(exc)}"
        ) from None
    metadata = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), str):
        metadata = _parse_metadata(obj["metadata"])
    return obj, metadata


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _pickle_imports_code(path: str) -> bool:
    """Whether a pickle that torch's weights-only loader refused is a well-formed pickle that
    imports Python objects (code) rather than damaged bytes. Only parses opcodes
    (pickletools), never executes them."""
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
        return any(
            op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ")
            for op, _, _ in pickletools.genops(data)
        )
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
            f"{path!r} is not a readable safetensors file (corrupt or truncated?): "
            f"{_first_line(exc)}"
        ) from None
    return tensors, _parse_metadata(raw) if raw else {}


def _parse_metadata(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The plain state dict inside a trainer checkpoint: unwraps params_ema / params /
    state_dict / model / net, strips a DataParallel 'module.' prefix, drops non-tensors."""
    if not isinstance(obj, Mapping):
        raise AetherCheckpointError(
            f"not an AetherNet checkpoint: found a {type(obj).__name__}, expected a state "
            "dict (a mapping of parameter names to tensors)"
        )
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping) and obj[key]:
            obj = obj[key]
            break
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    if not state_dict:
        raise AetherCheckpointError(
            f"not an AetherNet checkpoint: found {'an empty dict' if not obj else _describe_keys(sorted(map(str, obj)))} "
            "with no tensors; expected a state dict of AetherNet weights"
        )
    return state_dict


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a .pth / .pt / .safetensors checkpoint."""
    obj, metadata = _read_checkpoint_file(os.fspath(path))
    return unwrap_state_dict(obj), metadata


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> AetherNet:
    """The AetherNet whose weights are ``state_dict`` (eval mode, float32)."""
    config = detect_config(state_dict)
    model = AetherNet(**config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise AetherCheckpointError(
            "AetherNet checkpoint does not match the architecture inferred from it "
            f"({preset_name(config)}, x{config['scale']}): "
            + " ".join(str(exc).split())[:300]
        ) from None
    return model.eval()


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
        "version": __version__,
        "preset": preset_name(model.config),
        "config": dict(model.config),
        "fused": model.fused,
        **extra,
    }


def save_checkpoint(
    model: AetherNet,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    param_key: str = "params",
) -> None:
    """Save plain tensors + JSON metadata (.pth: ``{param_key: sd, "metadata": json}``;
    .safetensors: tensors + header metadata). Written to a temp file, then renamed."""
    path = os.fspath(path)
    meta = json.dumps({**checkpoint_metadata(model), **(metadata or {})}, sort_keys=True)
    # clone: saved tensors must own compact storage (no views, no shared buffers)
    state_dict = OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(dict(state_dict), tmp, metadata={_SAFETENSORS_METADATA_KEY: meta})
        else:
            torch.save({param_key: state_dict, "metadata": meta}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------
# ONNX export (onnx is imported lazily: the file itself needs only torch)
# ---------------------------------------------------------------------------------------

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "output"
# 14..18: per-channel Q/DQ needs >= 13, onnx's converter has no Sub adapter down to 13,
# DirectML stops at 17 (the default).
ONNX_OPSETS = range(14, 19)


@contextlib.contextmanager
def _quiet_exporter():
    """The torch.onnx exporter logs and warns about its own internals (missing torchvision
    ops, pytree deprecations); none of it concerns our users."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
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


def onnx_model_proto(model: AetherNet, *, opset: int = 17, example_size: int = 16) -> Any:
    """The ONNX ModelProto of ``model`` (any form; export a fused one for deployment):
    input ``input`` [batch, C, height, width] -> output ``output`` [batch, C, height*s,
    width*s], batch/height/width dynamic, channels static."""
    import onnx
    import onnx.version_converter

    if opset not in ONNX_OPSETS:
        raise ValueError(
            f"ONNX opset {opset} is not supported; use {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]}"
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
    onnx.checker.check_model(proto)
    return proto


def set_onnx_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Replace the model's metadata_props (values that are not strings are stored as JSON)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def save_onnx(proto: Any, path: str | os.PathLike) -> None:
    """Write an ONNX model atomically (temp file, then rename)."""
    import onnx

    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
        registry.register(
            factory if default_scale is None else _with_default_scale(factory, default_scale)
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
