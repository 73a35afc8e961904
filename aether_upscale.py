"""Upscale images with any AetherNet model: a release artifact or a training checkpoint.

    python3 aether_upscale.py --model release/model_int8.onnx --input photos/ --output upscaled/

--model: any of the six files aether_release.py writes (model_{fp32,fp16,int8}.{pth,onnx}) or
any checkpoint load_model() accepts (.pth / .pt / .safetensors, training form, fused, QAT).
The .pth family runs in PyTorch, .onnx in ONNX Runtime (float16 input for model_fp16.onnx,
as its graph declares). The scale comes from the checkpoint or the ONNX metadata and is checked
on a small probe input before any image is read.

--input: one image file or a folder (its images, not sub-folders). Each is written to
--output as ``<stem>.png``: PNG keeps everything an input can have (16 bits, alpha, grey).

Pixels: 8-bit in gives 8-bit out and 16-bit in gives 16-bit out (tiles are converted to float
one at a time, never rounded to 8 bits; an INT8 model's own output has 8-bit levels, which a note
says); greyscale, also when stored as equal RGB(A) channels, is fed to the model as three equal
channels and written back as grey (their mean); alpha is upscaled separately with bicubic
interpolation (see upscale_alpha for why not with the model).

Tiling: the low-resolution image is cut into a grid of nearly equal tiles of at most --tile
pixels a side; each is run with at least --overlap pixels of real context on every side that
has image there, the context is cropped off the output and the rest pasted into one
preallocated integer output array. A model's output at a pixel depends only on input pixels
within its receptive radius (aether_tiny and _small: 10 px, _medium 20, _large 42), so with
--overlap at least that radius tiling is exact up to float rounding; for deeper models the far
context's weight is tiny.
Memory is the decoded input, the integer output and one tile's activations, whatever the
image size.

Exit codes: 0 every image written; 1 some images could not be read or upscaled (each named in
a warning on stderr) but others were written; 2 bad input (one line on stderr, nothing
written), or no image could be written.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnx
import torch
from tqdm import tqdm

from aether_arch import (
    CHECKPOINT_SUFFIXES,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    AetherCheckpointError,
    detect_config,
    error_summary,
    read_checkpoint,
)
from aether_cli import (
    InputError,
    OneLineErrorParser,
    describe_exception,
    format_size,
    note,
    one_line,
    prepare_output_dir,
    run_cli,
    thread_count,
    warn,
    whole_number,
)
from aether_data import IMAGE_SUFFIXES, ImageReadError, image_files, read_raw_image, write_raw_image
from aether_runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    Upscaler,
    onnx_providers,
    onnx_runtime,
    pytorch_runtime,
    resolve_device,
)

PROG = "aether_upscale.py"
# 256 low-resolution pixels a side (a 320 px window with the overlap): one aether_large tile
# then needs ~0.35 GB in ONNX Runtime (a 576 px window for --tile 512: ~1.2 GB), and on the CPU
# smaller tiles cost no more time per pixel despite the overlap (they fit the caches better).
DEFAULT_TILE = 256
# At least the receptive radius of aether_tiny, _small and _medium (10 / 10 / 20 px), so their tiled
# output equals the untiled one (aether_large's, 42 px, is nearly equal: its far context weighs little).
DEFAULT_OVERLAP = 32
OUTPUT_SUFFIX = ".png"
# The probe that checks a model's scale and channels before any image is read; not square,
# so that a model that swaps height and width is caught too.
PROBE_HEIGHT, PROBE_WIDTH = 16, 24


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


@dataclass
class Runner:
    """A loaded model: float32 NCHW RGB in [0, 1] -> float32 NCHW RGB, ``scale`` x larger."""

    label: str  # the runtime, e.g. "ONNX Runtime CPU"
    scale: int
    upscale: Upscaler  # the one aether_release validates the file with
    eight_bit: bool = False  # its output holds 8-bit levels only (an INT8 graph's uint8 output)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return self.upscale(lr)


def open_runner(model_path: str, *, device: str = "auto", threads: int = 0) -> Runner:
    """Load ``model_path`` (.onnx in ONNX Runtime, a checkpoint in PyTorch) on ``device``
    (cpu / cuda / auto) and check it on a probe input. InputError (one line) if it is missing,
    of an unknown type, not an AetherNet model, or does not give an RGB image scale x larger.
    ``threads`` > 0 sets ONNX Runtime's and PyTorch's (process-wide) CPU threads."""
    path = Path(model_path)
    if not path.is_file():
        raise InputError(
            f"--model {model_path!r}: no such file (give a model_*.pth / model_*.onnx "
            "file from aether_release.py or a training checkpoint)"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        runner = _open_onnx(path, device, threads)
    elif suffix in CHECKPOINT_SUFFIXES:
        if threads:
            torch.set_num_threads(threads)
        runner = _open_pytorch(path, device)
    else:
        raise InputError(
            f"--model {model_path!r}: unsupported model type {suffix or '(no extension)'!r}; "
            f"expected .onnx or a PyTorch checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
        )
    runner.scale = _probe_scale(runner, model_path)
    runner.eight_bit = _outputs_8bit_levels(runner)
    return runner


def _outputs_8bit_levels(runner: Runner) -> bool:
    """Whether a smooth ramp, off the 8-bit grid, comes out on it: the model's last step is
    8-bit (INT8 files and QAT checkpoints), so a 16-bit image loses its extra bits there."""
    ramp = np.linspace(0.1003, 0.8997, PROBE_HEIGHT * PROBE_WIDTH, dtype=np.float32)
    levels = runner(np.repeat(ramp.reshape(1, 1, PROBE_HEIGHT, PROBE_WIDTH), 3, axis=1))
    levels = np.asarray(levels, np.float64) * 255
    return bool(np.abs(levels - np.round(levels)).max() < 1e-3)


def _checkpoint_error(path: Path, exc: AetherCheckpointError) -> InputError:
    message = str(exc)  # names the file when the file itself is damaged, not when it is foreign
    return InputError(f"--model: {message}" if str(path) in message else f"--model {str(path)!r}: {message}")


def _open_pytorch(path: Path, device_option: str) -> Runner:
    device = resolve_device(device_option)
    try:
        state_dict, _ = read_checkpoint(str(path))
        config = detect_config(state_dict)
    except AetherCheckpointError as exc:
        raise _checkpoint_error(path, exc) from None
    if config["in_channels"] != 3 or config["out_channels"] != 3:
        raise InputError(
            f"--model {str(path)!r}: a {config['in_channels']}->{config['out_channels']} channel "
            "model; images are upscaled as RGB, which needs 3 channels in and out"
        )
    # model_fp16.pth runs in float16 on a GPU (float32 maths on the CPU, see pytorch_runtime).
    half = any(tensor.dtype == torch.float16 for tensor in state_dict.values())
    precision = "int8" if config["qat"] else "fp16" if half else "fp32"
    runtime = pytorch_runtime(state_dict, precision, device)  # the file is read once
    try:
        upscale = runtime.open()
    except AetherCheckpointError as exc:
        raise _checkpoint_error(path, exc) from None
    label = runtime.label
    if config["qat"]:
        label += " (model_int8.onnx runs the same INT8 maths fastest)"
    return Runner(label, config["scale"], upscale)


def _onnx_provider_choices(device_option: str) -> list[str]:
    """Execution providers to try, in order: --device cpu the CPU; cuda CUDA (which must be
    installed); auto CUDA when installed, then the CPU (CUDA may be installed but unusable)."""
    has_cuda = CUDA_PROVIDER in onnx_providers()
    if device_option == "cuda" and not has_cuda:
        raise InputError(
            "--device cuda: ONNX Runtime has no CUDA provider (install onnxruntime-gpu, or use --device cpu or auto)"
        )
    if device_option == "cpu" or not has_cuda:
        return [CPU_PROVIDER]
    return [CUDA_PROVIDER] if device_option == "cuda" else [CUDA_PROVIDER, CPU_PROVIDER]


def _open_onnx(path: Path, device_option: str, threads: int) -> Runner:
    providers = _onnx_provider_choices(device_option)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise many types for damaged files
        raise InputError(
            f"--model {str(path)!r} is not a readable ONNX model (corrupt or truncated?): {error_summary(exc)}"
        ) from None
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value.name for value in proto.graph.input if value.name not in initializers]
    outputs = [value.name for value in proto.graph.output]
    if (inputs, outputs) != ([ONNX_INPUT_NAME], [ONNX_OUTPUT_NAME]):
        raise InputError(
            f"--model {str(path)!r} is not an AetherNet ONNX model: it has inputs {inputs} and "
            f"outputs {outputs}, expected [{ONNX_INPUT_NAME!r}] and [{ONNX_OUTPUT_NAME!r}] "
            "(use the .onnx files aether_release.py writes)"
        )
    declared = {entry.key: entry.value for entry in proto.metadata_props}.get("scale", "")
    # 0: measured by the probe (str.isdigit would pass '²', which int() refuses)
    scale = int(declared) if re.fullmatch(r"[1-9][0-9]?", declared) else 0
    del proto  # the weights; ONNX Runtime reads the file itself
    for provider in providers:  # --device auto: CUDA may be installed but unusable here
        runtime = onnx_runtime(path, provider, threads)
        try:
            return Runner(runtime.label, scale, runtime.open())
        except Exception as exc:  # ONNX Runtime raises its own types for graphs it cannot run
            failure = f"ONNX Runtime cannot load it on {provider}: {describe_exception(exc)}"
    raise InputError(f"--model {str(path)!r}: {failure}")


def _probe_scale(runner: Runner, model_path: str) -> int:
    """The scale the model really applies, checked against the declared one (if any)."""
    probe = np.full((1, 3, PROBE_HEIGHT, PROBE_WIDTH), 0.5, np.float32)
    try:
        shape = tuple(runner(probe).shape)
    except Exception as exc:  # a model that cannot run an RGB image is the wrong model
        raise InputError(
            f"--model {model_path!r} does not run on a 1x3x{PROBE_HEIGHT}x{PROBE_WIDTH} "
            f"RGB input: {describe_exception(exc)}"
        ) from None
    scale = shape[-1] // PROBE_WIDTH if len(shape) == 4 else 0
    declared = runner.scale or scale
    if scale < 1 or shape != (1, 3, PROBE_HEIGHT * declared, PROBE_WIDTH * declared):
        raise InputError(
            f"--model {model_path!r} turns a 1x3x{PROBE_HEIGHT}x{PROBE_WIDTH} input into "
            f"{'x'.join(map(str, shape))}; expected an RGB image "
            + (f"{declared} times larger (its declared scale)" if runner.scale else "an integer factor larger")
        )
    return scale


# ---------------------------------------------------------------------------------------
# Tiled upscaling
# ---------------------------------------------------------------------------------------


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """[0, length) cut into ceil(length / tile) nearly equal spans (a thin last tile would cost
    as much overlap as a full one); one span if ``tile`` is 0 or at least ``length``."""
    count = -(-length // tile) if tile else 1
    bounds = [index * length // count for index in range(count + 1)]
    return list(itertools.pairwise(bounds))


def tile_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, window start, window end) per tile_spans span: the model sees the window,
    which is the same length for every tile: the span plus at least ``overlap`` pixels of
    context on each side, or up to the image border. At a border the window slides inward
    rather than shrinking, so that every tile has one shape (ONNX Runtime and cuDNN then reuse
    one memory plan instead of growing one per shape)."""
    spans = tile_spans(length, tile)
    window = min(length, max(end - start for start, end in spans) + 2 * overlap)
    windows = []
    for start, end in spans:
        window_start = min(max(0, start - overlap), length - window)
        windows.append((start, end, window_start, window_start + window))
    return windows


def _model_input(pixels: np.ndarray, max_value: int) -> np.ndarray:
    """(h, w) grey or (h, w, 3) BGR integers -> (1, 3, h, w) float32 RGB in [0, 1]."""
    planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)[::-1]
    lr = np.empty((1, 3, *pixels.shape[:2]), np.float32)
    lr[0] = planes  # grey is broadcast to three equal channels
    lr /= max_value
    return lr


def _stored_pixels(sr: np.ndarray, *, grey: bool, dtype: np.dtype) -> np.ndarray:
    """(3, h, w) float RGB -> (h, w) grey or (h, w, 3) BGR integers of ``dtype``."""
    planes = sr.mean(axis=0) if grey else sr[::-1].transpose(1, 2, 0)
    max_value = np.iinfo(dtype).max
    return np.clip(np.rint(planes * max_value), 0, max_value).astype(dtype)


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic, on the integers. Not the model: its output on a flat plane wanders by a few
    levels (more at the image border, from its zero padding), which would make opaque areas
    slightly see-through; bicubic keeps fully opaque and fully transparent areas exact."""
    height, width = alpha.shape
    return cv2.resize(alpha, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)


def upscale_image(
    image: np.ndarray,
    runner: Runner,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = False,
) -> np.ndarray:
    """Upscale an image as read_raw_image returns it (uint8 / uint16; (H, W) grey, (H, W, 3)
    BGR or (H, W, 4) BGRA) into a new array of the same type and layout, ``runner.scale``
    times larger; ``tile`` 0 runs the whole image at once. See the module docstring."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {image.dtype}")
    scale, (height, width) = runner.scale, image.shape[:2]
    grey, max_value = is_grey(image), np.iinfo(image.dtype).max
    colour = image if image.ndim == 2 else image[..., 0] if grey else image[..., :3]
    output = np.empty((height * scale, width * scale, *image.shape[2:]), image.dtype)
    output_colour = output if image.ndim == 2 else output[..., 0] if grey else output[..., :3]
    rows, columns = tile_windows(height, tile, overlap), tile_windows(width, tile, overlap)
    with tqdm(
        total=len(rows) * len(columns), desc="tiles", unit="tile", leave=False, disable=None if progress else True
    ) as bar:
        for top, bottom, in_top, in_bottom in rows:
            for left, right, in_left, in_right in columns:
                lr = _model_input(colour[in_top:in_bottom, in_left:in_right], max_value)
                sr = runner(lr)
                if sr.shape != (1, 3, lr.shape[2] * scale, lr.shape[3] * scale):
                    raise RuntimeError(
                        f"the model turned a {'x'.join(map(str, lr.shape))} tile into "
                        f"{'x'.join(map(str, sr.shape))}, expected x{scale}"
                    )
                core = sr[
                    0,
                    :,
                    (top - in_top) * scale : (bottom - in_top) * scale,
                    (left - in_left) * scale : (right - in_left) * scale,
                ]
                output_colour[top * scale : bottom * scale, left * scale : right * scale] = _stored_pixels(
                    core, grey=grey, dtype=image.dtype
                )
                bar.update(1)
    if image.ndim == 3 and grey:
        output[..., 1], output[..., 2] = output_colour, output_colour
    if image.ndim == 3 and image.shape[2] == 4:
        output[..., 3] = upscale_alpha(np.ascontiguousarray(image[..., 3]), scale)
    return output


def is_grey(image: np.ndarray) -> bool:
    """Greyscale, also when stored as equal colour channels: OpenCV decodes a grey + alpha PNG
    as BGRA with B = G = R (and cannot write two channels), and grey photos are often saved as
    RGB; such an image stays grey, written as equal channels (the model would add colour fringes)."""
    if image.ndim == 2:
        return True
    b, g, r = image[..., 0], image[..., 1], image[..., 2]
    return np.array_equal(b, g) and np.array_equal(g, r)


def describe_pixels(image: np.ndarray) -> str:
    """'16-bit greyscale', '8-bit RGBA', '8-bit greyscale as RGB', ..."""
    layout = "greyscale" if image.ndim == 2 else ("RGBA" if image.shape[2] == 4 else "RGB")
    if image.ndim == 3 and is_grey(image):
        layout = "greyscale + alpha" if image.shape[2] == 4 else "greyscale as RGB"
    return f"{image.dtype.itemsize * 8}-bit {layout}"


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's MemAvailable); None elsewhere."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            return int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1]) * 1024
    return None


def check_output_fits(image: np.ndarray, scale: int) -> None:
    """ImageReadError when the whole output array (allocated at once; tiling bounds the rest)
    would not fit in the memory available: a small file can declare a large image, and Linux
    would grant the array, then kill the process while it is filled."""
    needed = image.nbytes * scale * scale
    available = available_memory()
    if available is not None and needed > available:
        height, width = image.shape[:2]
        raise ImageReadError(
            f"its {width * scale}x{height * scale} output needs {format_size(needed)}, more than the "
            f"{format_size(available)} of memory available; split or shrink the image first"
        )


def upscale_file(source: Path, target: Path, runner: Runner, *, tile: int, overlap: int) -> tuple[str, int]:
    """Read, upscale and write one image (atomically); what was done, for the log, and the
    image's bits per channel."""
    image = read_raw_image(source)
    check_output_fits(image, runner.scale)
    started = time.perf_counter()
    output = upscale_image(image, runner, tile=tile, overlap=overlap, progress=True)
    target.parent.mkdir(parents=True, exist_ok=True)  # created with the first output only
    write_raw_image(target, output)
    return (
        f"{source.name}: {image.shape[1]}x{image.shape[0]} -> {output.shape[1]}x{output.shape[0]} "
        f"{describe_pixels(image)}, {time.perf_counter() - started:.2f} s -> {target}",
        image.dtype.itemsize * 8,
    )


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Upscale images with an AetherNet model: any aether_release.py artifact "
        "(model_{fp32,fp16,int8}.{pth,onnx}) or training checkpoint.",
        epilog=f"Each input is written to OUTPUT/<stem>{OUTPUT_SUFFIX} with its bit depth (8 or 16), "
        "greyscale and alpha kept; alpha is upscaled with bicubic interpolation. Memory stays "
        "bounded by tiling (measured peak RSS for a 4000x3000 RGB input with the default tile: see "
        "README). Exit codes: 0 all images written, 1 some images failed (warnings on stderr) "
        "but others were written, 2 bad input or nothing written.",
    )
    parser.add_argument(
        "--model",
        "--model-path",
        required=True,
        metavar="MODEL",
        help=".onnx (ONNX Runtime) or .pth/.pt/.safetensors (PyTorch) AetherNet model",
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE_OR_DIR",
        help=f"an image, or a folder of images ({', '.join(IMAGE_SUFFIXES)})",
    )
    parser.add_argument(
        "--output",
        "--output-dir",
        required=True,
        metavar="DIR",
        help=f"folder for the results, named <input stem>{OUTPUT_SUFFIX} (created if "
        "missing; existing files of those names are replaced)",
    )
    parser.add_argument(
        "--tile",
        type=whole_number(0),
        default=DEFAULT_TILE,
        metavar="PX",
        help="largest tile side in input pixels; 0 = the whole image at once (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap",
        type=whole_number(0),
        default=DEFAULT_OVERLAP,
        metavar="PX",
        help="context in input pixels around each tile, cropped off its output (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="cuda: PyTorch on the GPU / ONNX Runtime's CUDA provider; auto (default) = cuda when available, else cpu",
    )
    parser.add_argument(
        "--threads",
        type=thread_count(allow_default=True),
        default=0,
        metavar="N",
        help="CPU threads for PyTorch and ONNX Runtime; 0 = their default, one per core (default: %(default)s)",
    )
    return parser


def plan(input_option: str, output_dir: Path) -> list[tuple[Path, Path]]:
    """(input image, output file) pairs; InputError if the input is missing or not an image,
    if two inputs would give one output name, or an output would replace an input."""
    source = Path(input_option)
    if source.is_dir():
        sources = image_files(input_option, "--input")
    elif not source.exists():
        raise InputError(f"--input {input_option!r}: no such file or folder")
    elif not source.is_file():  # reading a FIFO or a device would block or never end
        raise InputError(f"--input {input_option!r} is not a regular file or a folder")
    elif source.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            f"--input {input_option!r}: unsupported file type {source.suffix or '(none)'!r}; "
            f"expected an image ({', '.join(IMAGE_SUFFIXES)}) or a folder of them"
        )
    else:
        sources = [source]
    resolved_sources = {path.resolve() for path in sources}
    claimed: dict[Path, Path] = {}
    for path in sources:
        target = output_dir / (path.stem + OUTPUT_SUFFIX)
        if target in claimed:
            raise InputError(
                f"--input: {claimed[target].name!r} and {path.name!r} would both be written "
                f"as {target.name!r}; rename one of them"
            )
        if target.resolve() in resolved_sources:
            raise InputError(
                f"--output {str(output_dir)!r}: {target.name!r} would replace the input "
                "image of that name; choose another output folder"
            )
        claimed[target] = path
    return [(path, target) for target, path in claimed.items()]


def upscale_all(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    output_dir = prepare_output_dir(args.output)
    jobs = plan(args.input, output_dir)
    runner = open_runner(args.model, device=args.device, threads=args.threads)
    print(
        one_line(
            f"{args.model}: x{runner.scale} in {runner.label}; {len(jobs)} image(s), "
            f"tile {args.tile or 'off'}, overlap {args.overlap}"
        )
    )
    warnings_seen: list[str] = []
    written, said_8bit = 0, False
    for source, target in tqdm(jobs, desc="images", unit="img", disable=None):
        try:
            summary, depth = upscale_file(source, target, runner, tile=args.tile, overlap=args.overlap)
        except Exception as exc:  # one bad image must not stop the others; each is named
            expected = isinstance(exc, (ImageReadError, OSError))  # the message says it all
            reason = error_summary(exc) if expected else describe_exception(exc)
            # a runtime's allocation failure; never read into an expected error, whose message names the file
            if isinstance(exc, MemoryError) or (not expected and "alloc" in str(exc).lower()):
                reason = (
                    f"not enough memory for {'the whole image at once' if not args.tile else f'--tile {args.tile}'}"
                )
                reason += f"; use a smaller --tile (default {DEFAULT_TILE}) ({describe_exception(exc)})"
            warn(f"skipped {source.name}: {reason}", warnings_seen)
            continue
        written += 1
        tqdm.write(one_line(summary))
        if runner.eight_bit and depth == 16 and not said_8bit:
            said_8bit = True
            note(
                f"{args.model} works in 8-bit levels (INT8): its 16-bit outputs hold 256 levels; "
                "model_fp32 keeps 16 bits"
            )
    elapsed = time.perf_counter() - started
    if not written:
        raise InputError(f"no image written: all {len(jobs)} input image(s) failed (see the warnings above)")
    print(one_line(f"{written} of {len(jobs)} image(s) written to {output_dir} in {elapsed:.1f} s"))
    return 1 if warnings_seen else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    return run_cli(PROG, build_parser().parse_args, upscale_all, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
