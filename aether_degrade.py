"""How low-resolution inputs are made from HR images: the resampling kernels, the named training
recipes (random degradations drawn on the fly) and the evaluation protocols every quality
figure is measured under.

A model trained on one kernel only (antialiased bicubic, the SR-benchmark standard) learns to
undo exactly that blur, and over-sharpens input made any other way: the first shipped
aether_tiny x2 was +1.47 dB over bicubic on antialiased input and 1.5 dB *worse* than bicubic on
sharp, aliased input (plain cubic without antialiasing, as many cameras, phones and screenshot
tools downscale). So quality is reported under both protocols, and the shipped models are
trained on the ``robust`` recipe: a mix of kernels, with mild blur, noise and JPEG.

Tensors are float32 NCHW in [0, 1] with H and W divisible by the scale. Randomness comes only
from the ``torch.Generator`` passed in (the trainer's patch generator, whose state is saved in
the training state): a recipe is reproducible under a seed and across ``--resume``, and each
batch draws the same count of numbers whatever it picks, so the stream never depends on the
outcome.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# name -> what it is. "linear" samples midway between two pixels, so at x2 it equals "area" (the
# mean of each 2x2 block); at x3 and x4 they differ.
KERNELS = {
    "aa-bicubic": "bicubic with antialiasing (MATLAB imresize / PIL BICUBIC): the SR benchmark standard",
    "aa-bilinear": "bilinear with antialiasing (PIL BILINEAR)",
    "cubic": "plain cubic interpolation, no antialiasing (cv2.resize INTER_CUBIC): sharp, aliased",
    "linear": "plain linear interpolation, no antialiasing (cv2.resize INTER_LINEAR)",
    "area": "mean of each scale x scale block (cv2 INTER_AREA)",
    "lanczos": "Lanczos-3 with antialiasing (PIL LANCZOS)",
    "nearest": "nearest pixel, no filtering (the most aliased)",
}
# The LR protocols quality is reported under: name -> kernel.
PROTOCOLS = {"aa-bicubic": "aa-bicubic", "sharp": "cubic"}
LANCZOS_LOBES = 3


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < LANCZOS_LOBES, np.sinc(x) * np.sinc(x / LANCZOS_LOBES), 0.0)


def _antialiased_taps(scale: int) -> tuple[torch.Tensor, int, int]:
    """The 1-D Lanczos-3 taps of an integer downscale by ``scale`` (every output pixel has the
    same phase, so one kernel; stretched by ``scale`` as PIL does) and its left / right padding."""
    centre = (scale - 1) / 2  # output pixel i sits at input coordinate i * scale + centre
    first = math.ceil(centre - LANCZOS_LOBES * scale)
    last = math.floor(centre + LANCZOS_LOBES * scale)
    offsets = np.arange(first, last + 1) - centre
    weights = _lanczos(offsets / scale)
    taps = torch.from_numpy(weights / weights.sum()).float()
    return taps, -first, last - scale + 1


def _separable(batch: torch.Tensor, taps: torch.Tensor, stride: int, pad: tuple[int, int]) -> torch.Tensor:
    """Filter (and subsample by ``stride``) along W then H with the same 1-D taps, reflecting at
    the borders."""
    n, c, h, w = batch.shape
    planes = batch.reshape(n * c, 1, h, w)
    taps = taps.to(batch)
    planes = F.conv2d(_pad_borders(planes, (pad[0], pad[1], 0, 0), w), taps.view(1, 1, 1, -1), stride=(1, stride))
    planes = F.conv2d(_pad_borders(planes, (0, 0, pad[0], pad[1]), h), taps.view(1, 1, -1, 1), stride=(stride, 1))
    return planes.reshape(n, c, planes.shape[-2], planes.shape[-1])


def _pad_borders(planes: torch.Tensor, pad: tuple[int, int, int, int], size: int) -> torch.Tensor:
    # Reflection needs a padding smaller than the side; a patch smaller than the kernel (a tiny
    # --lr-patch with Lanczos, a --blur-sigma wider than the patch) repeats its edge instead.
    return F.pad(planes, pad, mode="reflect" if max(pad) < size else "replicate")


def downscale(hr: torch.Tensor, scale: int, kernel: str) -> torch.Tensor:
    """``hr`` downscaled by the integer ``scale`` with one of KERNELS, clamped to [0, 1]."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if scale == 1:
        return hr
    size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    if kernel == "lanczos":
        taps, left, right = _antialiased_taps(scale)
        lr = _separable(hr, taps, scale, (left, right))
    elif kernel == "area":
        lr = F.avg_pool2d(hr, scale)
    elif kernel == "nearest":
        lr = F.interpolate(hr, size=size, mode="nearest-exact")
    else:
        mode = "bicubic" if kernel.endswith("cubic") else "bilinear"
        lr = F.interpolate(hr, size=size, mode=mode, antialias=kernel.startswith("aa-"), align_corners=False)
    return lr.clamp(0, 1)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A (C, H, W) or NCHW image blurred by a Gaussian of ``sigma`` pixels (reflecting borders)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    batch = image if image.dim() == 4 else image[None]
    blurred = _separable(batch, (taps / taps.sum()).float(), 1, (radius, radius))
    return blurred if image.dim() == 4 else blurred[0]


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """A (3, H, W) RGB image in [0, 1] through 8-bit JPEG at ``quality`` (OpenCV, 4:2:0)."""
    rgb = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    decoded = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(decoded).permute(2, 0, 1).to(image.device, torch.float32) / 255


@dataclass(frozen=True)
class Recipe:
    """A random degradation: HR -> (blur) -> downscale by a kernel drawn from ``kernels`` ->
    (noise) -> (8-bit rounding) -> (JPEG), each step drawn per image."""

    kernels: tuple[tuple[str, float], ...]  # (kernel, probability); probabilities sum to 1
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # Gaussian sigma range, in HR pixels
    noise_prob: float = 0.0
    noise_sigma: tuple[float, float] = (0.5, 2.0)  # Gaussian noise sigma range, in 8-bit levels
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (80, 95)  # inclusive
    quantize: bool = True  # round the LR to 8 bits, as every real input is

    def __post_init__(self) -> None:
        if not self.kernels:
            raise ValueError("a recipe needs at least one kernel")
        for name, probability in self.kernels:
            if name not in KERNELS:
                raise ValueError(f"unknown kernel {name!r}; choose from {', '.join(KERNELS)}")
            if not probability > 0:
                raise ValueError(f"kernel {name!r} has probability {probability}; give only kernels with p > 0")
        total = sum(p for _, p in self.kernels)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"kernel probabilities sum to {total:g}, not 1")
        for name in ("blur_prob", "noise_prob", "jpeg_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        low, high = self.blur_sigma
        if not 0 < low <= high:
            raise ValueError(f"blur_sigma needs 0 < low <= high, got ({low}, {high})")
        low, high = self.noise_sigma
        if not 0 <= low <= high:
            raise ValueError(f"noise_sigma needs 0 <= low <= high, got ({low}, {high})")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality needs 1 <= low <= high <= 100, got ({low}, {high})")

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe, for checkpoint metadata and the training log."""
        record = dataclasses.asdict(self)
        record["kernels"] = {name: p for name, p in self.kernels}
        return record

    def apply(self, hr: torch.Tensor, scale: int, generator: torch.Generator) -> torch.Tensor:
        """The LR batch for the HR batch ``hr`` (NCHW). Draws from ``generator`` (a CPU
        generator) a fixed count of numbers per batch, whatever is picked."""
        n = hr.shape[0]
        if self.blur_prob:
            blur = torch.rand(n, generator=generator) < self.blur_prob
            sigmas = _in_range(torch.rand(n, generator=generator), self.blur_sigma)
            if blur.any():
                hr = torch.stack(
                    [gaussian_blur(x, float(s)) if b else x for x, b, s in zip(hr, blur, sigmas, strict=True)]
                )
        if len(self.kernels) == 1:
            lr = downscale(hr, scale, self.kernels[0][0])
        else:
            cumulative = torch.tensor([p for _, p in self.kernels], dtype=torch.float64).cumsum(0)
            picks = torch.searchsorted(cumulative, torch.rand(n, generator=generator, dtype=torch.float64), right=True)
            picks = picks.clamp(max=len(self.kernels) - 1)  # rounding in the cumulative sum
            lr = hr.new_empty(n, hr.shape[1], hr.shape[2] // scale, hr.shape[3] // scale)
            for index, (name, _) in enumerate(self.kernels):
                chosen = (picks == index).nonzero().flatten().to(hr.device)
                if len(chosen):
                    lr[chosen] = downscale(hr[chosen], scale, name)
        if self.noise_prob:
            noisy = torch.rand(n, generator=generator) < self.noise_prob
            sigmas = _in_range(torch.rand(n, generator=generator), self.noise_sigma) / 255
            noise = torch.randn(lr.shape, generator=generator) * (sigmas * noisy).view(n, 1, 1, 1)
            lr = (lr + noise.to(lr.device)).clamp(0, 1)
        if self.quantize:
            lr = on_8bit_grid(lr)
        if self.jpeg_prob:
            compress = torch.rand(n, generator=generator) < self.jpeg_prob
            low, high = self.jpeg_quality
            qualities = torch.randint(low, high + 1, (n,), generator=generator)
            if compress.any():
                lr = torch.stack([jpeg(x, int(q)) if c else x for x, c, q in zip(lr, compress, qualities, strict=True)])
        return lr


def _in_range(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


RECIPES = {
    # the SR benchmark protocol, and how the first sample was trained: no rounding, so that
    # sample's training command (with --min-patch-detail 0) reproduces it bit for bit
    "bicubic": Recipe(kernels=(("aa-bicubic", 1.0),), quantize=False),
    # the shipped models': the two protocols' kernels (antialiased bicubic, plain cubic) two
    # thirds of the time, the others for variety; blur, noise and JPEG mild and rare, so that
    # clean input keeps most of the benchmark-protocol gain
    "robust": Recipe(
        kernels=(
            ("aa-bicubic", 0.35),
            ("cubic", 0.3),
            ("lanczos", 0.1),
            ("aa-bilinear", 0.1),
            ("area", 0.05),
            ("linear", 0.05),
            ("nearest", 0.05),
        ),
        blur_prob=0.05,
        noise_prob=0.05,
        jpeg_prob=0.1,
    ),
}


def parse_kernels(text: str) -> tuple[tuple[str, float], ...]:
    """``"aa-bicubic:0.5,cubic:0.5"`` -> (("aa-bicubic", 0.5), ("cubic", 0.5)); ValueError with
    a one-line message if it is not that."""
    pairs = []
    for item in text.split(","):
        name, sep, probability = item.strip().partition(":")
        try:
            pairs.append((name, float(probability) if sep else 1.0))
        except ValueError:
            raise ValueError(f"{item!r} is not KERNEL:PROBABILITY") from None
    return tuple(pairs)


def on_8bit_grid(image: torch.Tensor) -> torch.Tensor:
    """``image`` (in [0, 1]) rounded to the 256 levels of a uint8 image, kept as float."""
    return (image * 255).round() / 255


def protocol_lr(hr: torch.Tensor, scale: int, protocol: str) -> torch.Tensor:
    """The LR input of an evaluation protocol (PROTOCOLS), rounded to 8 bits as every image a
    user upscales is (MATLAB's imresize and cv2.resize of a uint8 image return uint8). Unrounded,
    the LR holds sub-level detail no real input has: bicubic and float models used it (bicubic
    gained 0.9 dB on near-flat images, ~50 dB), while an INT8 model rounds its input first."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return on_8bit_grid(downscale(hr, scale, PROTOCOLS[protocol]))
