"""Images as every AetherNet script reads, degrades and scores them: image I/O, the LR
degradation and PSNR, so that training, release, upscaling and benchmarks measure quality the
same way.

Images are float32 RGB arrays in [0, 1], shape (H, W, 3); tensors are float32 NCHW.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from aether_arch import atomic_write
from aether_cli import InputError
from aether_degrade import PROTOCOLS, downscale, protocol_lr

# Decoded images are bounded before they are decoded: the file's header (read by Pillow, which
# reads headers alone) may declare at most this many pixels. OpenCV's own limit cannot do it: it
# is read once, when cv2 is imported, and its default (2**30) lets a 1 KB PNG claim 6 GB of
# 16-bit RGB. A user raises both at once by setting that variable before starting a script.
_PIXEL_LIMIT_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"
_limit = os.environ.get(_PIXEL_LIMIT_VARIABLE, "")
MAX_IMAGE_PIXELS = int(_limit) if _limit.isdigit() else 1 << 27  # 134 Mpx: 16384 x 8192
MAX_IMAGE_BYTES = 1 << 30
# The release skips validation and calibration images whose low-resolution version (after
# mod-crop and downscaling) has a side shorter than this: PSNR ignores a border of `scale` pixels.
MIN_LR_SIDE = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file could not be decoded."""


class ImageFolderError(InputError):
    """A folder of images given on a command line is missing, unreadable or has no images."""


def image_files(folder: str, option: str) -> list[Path]:
    """The images in ``folder``, passed as command-line ``option``; ImageFolderError with a
    one-line message (naming the option) if there are none to read."""
    if not Path(folder).is_dir():
        raise ImageFolderError(f"{option} {folder!r}: no such folder")
    try:
        paths = list_images(folder)
    except OSError as exc:
        raise ImageFolderError(f"{option} {folder!r}: cannot list it ({exc.strerror or exc})") from None
    if not paths:
        raise ImageFolderError(f"{option} {folder!r} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_declared_size(path: str) -> None:
    """ImageReadError when the image file's header (read without decoding) declares more than
    MAX_IMAGE_PIXELS pixels, or when it is not an image format Pillow knows (every IMAGE_SUFFIXES one)."""
    try:
        with warnings.catch_warnings():  # over Pillow's own limit (89 Mpx) it warns; ours is checked below
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                size = image.size
    except PIL.Image.DecompressionBombError:  # over twice Pillow's limit, so over ours
        size = None
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
        raise ImageReadError(f"cannot decode image {path!r} (corrupt or not an image)") from None
    if size is None or size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{path!r} declares more than {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx"
            + (f" ({size[0]}x{size[1]})" if size else "")
            + f", the most that is read (a decompression bomb? {_PIXEL_LIMIT_VARIABLE} raises it)"
        )


def read_raw_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as stored: uint8 or uint16, (H, W) greyscale or (H, W, 3) BGR or
    (H, W, 4) BGRA (OpenCV's channel order), without any conversion except a JPEG's EXIF
    orientation (a portrait phone photo stays upright). ImageReadError (one line) for anything
    that is not a readable image: not a regular file (a FIFO would block), too large, corrupt,
    or declaring more than MAX_IMAGE_PIXELS pixels (a decompression bomb)."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageReadError(f"cannot read {path!r} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(f"{path!r} is not a regular file (a pipe, device or folder?)")
    if info.st_size > MAX_IMAGE_BYTES:
        raise ImageReadError(
            f"{path!r} is {info.st_size / 2**30:.1f} GiB; images up to {MAX_IMAGE_BYTES >> 30} GiB are read"
        )
    check_declared_size(path)
    data = np.fromfile(path, dtype=np.uint8)  # also works for non-ASCII paths
    # IMREAD_UNCHANGED keeps alpha but ignores EXIF orientation; JPEG has no alpha, and the
    # flags that keep its depth and grey apply the orientation.
    oriented = Path(path).suffix.lower() in (".jpg", ".jpeg")
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if oriented else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(data, flags) if data.size else None
    except cv2.error as exc:  # e.g. a header OpenCV reads differently
        detail = next((line for line in str(exc).splitlines() if "error:" in line), str(exc)).split("error:")[-1]
        raise ImageReadError(f"cannot decode image {path!r}: {' '.join(detail.split())[:160]}") from None
    if image is None:
        raise ImageReadError(f"cannot decode image {path!r} (corrupt or not an image)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"unsupported pixel type {image.dtype} in {path!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ImageReadError(f"unsupported channel count {image.shape[2]} in {path!r}")
    return image


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Decode any 8/16-bit greyscale, RGB or RGBA image to float32 RGB in [0, 1].

    Returns (image, notes): notes say what was converted (greyscale expanded, alpha dropped,
    16-bit scaled) so callers can tell the user."""
    image = read_raw_image(path)
    notes = []
    if image.dtype == np.uint16:
        notes.append("16-bit")
        image = image.astype(np.float32) / 65535.0
    else:
        image = image.astype(np.float32) / 255.0
    if image.ndim == 2:
        notes.append("greyscale expanded to RGB")
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        notes.append("alpha channel dropped")
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image), notes


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a float RGB [0, 1] image as 8-bit (temp file, then rename)."""
    write_raw_image(path, cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR))


def write_raw_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image as read_raw_image returns it (uint8 / uint16; greyscale, BGR or BGRA) in
    the format of the path's suffix (temp file, then rename)."""
    path = os.fspath(path)
    ok, encoded = cv2.imencode(Path(path).suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode image for {path!r}")
    with atomic_write(path) as tmp:
        encoded.tofile(tmp)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> (1, 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def to_image(batch: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, 3, H, W) tensor or float32 array -> (H, W, 3) float32 array."""
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().float().cpu().numpy()
    return batch[0].transpose(1, 2, 0)


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop H and W down to multiples of ``scale`` so LR x scale == HR exactly."""
    h, w = image.shape[0] - image.shape[0] % scale, image.shape[1] - image.shape[1] % scale
    return image[:h, :w]


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling (like MATLAB's imresize / PIL), NCHW with H, W divisible
    by scale: the SR benchmark's degradation (protocol ``aa-bicubic``)."""
    return downscale(hr, scale, "aa-bicubic")


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline every quality figure is compared against."""
    if scale == 1:
        return lr
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def evaluation_lr(image: np.ndarray, scale: int, protocol: str = "aa-bicubic") -> tuple[np.ndarray, torch.Tensor]:
    """(HR image cropped to a multiple of ``scale``, its LR tensor under the LR ``protocol``
    (aether_degrade.PROTOCOLS)): the input of every quality figure, and of INT8 calibration."""
    hr = mod_crop(image, scale)
    return hr, protocol_lr(to_tensor(hr), scale, protocol)


def evaluation_pair(
    image: np.ndarray, scale: int, protocol: str = "aa-bicubic"
) -> tuple[np.ndarray, torch.Tensor, float]:
    """How every quality figure is set up: evaluation_lr and the PSNR of bicubic upscaling of
    that LR vs the HR."""
    hr, lr = evaluation_lr(image, scale, protocol)
    return hr, lr, psnr(to_image(bicubic_upscale(lr, scale)), hr, border=scale)


class UnmeasurableImageError(ValueError):
    """An evaluation image on which PSNR cannot rank upscalers."""


def evaluation_pairs(
    image: np.ndarray, scale: int, protocols: Sequence[str] = PROTOCOLS
) -> dict[str, tuple[np.ndarray, torch.Tensor, float]]:
    """evaluation_pair under each of ``protocols``; UnmeasurableImageError for an image PSNR
    cannot rank upscalers on. One too small to keep any pixel inside the border PSNR leaves out
    has no PSNR at all. Bicubic reproduces a flat image exactly: its PSNR is infinite, and so is
    the mean over a folder holding it, which would make every model "worse than bicubic" whatever
    it does. At x1 the LR is the image itself and bicubic is exact on every image, so x1 is not
    checked for that."""
    height, width = image.shape[:2]
    if min(height, width) // scale * scale <= 2 * scale:
        raise UnmeasurableImageError(
            f"{width}x{height} is too small for x{scale} (PSNR leaves out a border of {scale} pixels)"
        )
    pairs = {protocol: evaluation_pair(image, scale, protocol) for protocol in protocols}
    if scale > 1 and any(math.isinf(bicubic) for _, _, bicubic in pairs.values()):
        raise UnmeasurableImageError("bicubic reproduces it exactly (a flat image): PSNR cannot rank upscalers on it")
    return pairs


def release_pairs(image: np.ndarray, scale: int) -> dict[str, tuple[np.ndarray, torch.Tensor, float]]:
    """evaluation_pairs of an image the release validates and calibrates on: it also leaves out
    one whose LR has a side shorter than MIN_LR_SIDE (UnmeasurableImageError)."""
    if min(mod_crop(image, scale).shape[:2]) < MIN_LR_SIDE * scale:
        raise UnmeasurableImageError(
            f"{image.shape[1]}x{image.shape[0]} is too small for x{scale} (needs {MIN_LR_SIDE * scale} px a side)"
        )
    return evaluation_pairs(image, scale)


def psnr(a: np.ndarray, b: np.ndarray, *, border: int = 0) -> float:
    """PSNR in dB on RGB, after rounding both images to 8 bits (what a user saves), ignoring
    ``border`` pixels on each side (the usual SR convention: border = scale)."""
    a8, b8 = to_uint8(a).astype(np.float64), to_uint8(b).astype(np.float64)
    if border:
        a8, b8 = a8[border:-border, border:-border], b8[border:-border, border:-border]
    mse = np.mean((a8 - b8) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
