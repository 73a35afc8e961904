"""Turn an AetherNet checkpoint into release files, each validated in the runtime it is for.

    python3 aether_release.py --model-path runs/tiny_x2/net_g_5000.pth \
        --output-dir release/ --validation-dir samples/val

Writes into --output-dir:

    model_fp32.pth   fused (deploy-form) float32 state dict
    model_fp16.pth   the same with every floating tensor float16 (load_model returns float32)
    model_int8.pth   calibrated QAT state dict, conv weights int8 (load_model dequantizes them)
    model_fp32.onnx  fused float32 graph
    model_fp16.onnx  float16 weights AND float16 input/output (see FP16_IO_DTYPE)
    model_int8.onnx  QDQ graph with int8 weights, for --int8-profile (cpu: ONNX Runtime's
                     uint8-activation fast path; tensorrt: symmetric int8 activations)
    model_fp32.ncnn.param + model_fp32.ncnn.bin
                     NCNN model (upscayl, chaiNNer's NCNN path, *-ncnn-vulkan) converted by
                     pnnx from model_fp32.onnx; input blob "data", output blob "output"
    model_fp16.ncnn.param + model_fp16.ncnn.bin
                     the same with float16 weights (ncnn's fp16 storage)
    release_report.json, release_report.md, comparison.png (bicubic | FP32 | INT8 | original)

Every file carries the same metadata (ONNX metadata_props, the .pth "metadata" JSON):
architecture, preset, scale, config, precision, channels, value range, colour order, layout,
io_dtype, int8_profile, quantization ("qat" | "ptq" | "none"), version and the source's sha256.
NCNN files have no place for metadata: the report describes them. Without the optional pnnx and
ncnn packages (or with --skip-ncnn) the NCNN files are not made, and the report says why.

INT8 comes from the checkpoint's own learned ranges when it was trained with QAT for the
requested profile; otherwise from post-training calibration (PTQ) on real images, with a loud
warning, because PTQ loses more quality than QAT fine-tuning.

Validation: every artifact is loaded in its runtime (the .pth files with load_model in PyTorch,
the .onnx files in ONNX Runtime on the CPU provider, and the CUDA provider when installed, the
NCNN files in ncnn on the CPU) and
upscales every validation image downscaled under each LR protocol of aether_degrade.PROTOCOLS
(``aa-bicubic``: antialiased bicubic, the SR benchmark's; ``sharp``: plain cubic without
antialiasing, as many cameras and phones downscale) (on CPU the FP16 .pth runs
in float32 maths: CPU float16 convolutions are emulated and ~50x slower). Each output must have exactly
scale x the input size, finite values in [0, 1], and a PSNR against the FP32 PyTorch output on the
same input (fidelity) of at least FIDELITY_FLOOR_DB[precision]; an INT8 one also a PSNR against the
quantized model's own arithmetic (the QAT simulation in PyTorch, which ONNX Runtime's plain Q/DQ
graph reproduces) of at least INT8_REFERENCE_FLOOR_DB[profile]: integer kernels that compute
something else (int16 pair sums saturating on a CPU without VNNI) fail there even when they stay
above the loose FP32 floor. Quality (PSNR against the
original image) and bicubic's PSNR on the same LR are reported next to it, per protocol, with
a warning when the FP32 model is worse than bicubic under either, or another artifact (INT8
calibrated on too few images) is where FP32 is not; latency is the median of a few runs on the
first image.

Atomicity: everything is written into a staging folder inside --output-dir. After validation,
each artifact that passed replaces its final name with os.replace (so a re-run swaps files
atomically); one that failed is moved to ``<name>.failed`` for inspection (each file of an NCNN
artifact; nothing when pnnx could not make it) and any older file under its final name is
removed, so the folder never mixes a stale artifact with new ones. Artifacts that --skip-fp16 /
--skip-int8 / --skip-ncnn (or a missing pnnx) leave out are removed from the folder for the
same reason. The reports are written in every case and say what failed.

Exit codes: 0 every artifact passed; 1 an artifact failed validation (named on stderr) or a
write failed (disk full: one line); 2 bad input (one line on stderr, nothing written); 130
Ctrl-C, 143 SIGTERM (one line; the staging folder is removed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

import aether_arch
import aether_ncnn
from aether_arch import (
    CPU_WEIGHT_QMAX,
    INT8_PROFILES,
    ONNX_OPSETS,
    PRESETS,
    AetherCheckpointError,
    AetherNet,
    QuantConv2d,
    atomic_write,
    build_from_state_dict,
    checkpoint_metadata,
    detect_config,
    float_copy,
    is_calibrated,
    preset_name,
    read_checkpoint,
    save_checkpoint,
    save_onnx,
    set_onnx_metadata,
    valid_utf8,
)
from aether_cli import (
    InputError,
    OneLineErrorParser,
    describe_exception,
    format_size,
    markdown_table,
    note,
    prepare_output_dir,
    removed_if_left_empty,
    run_cli,
    thread_count,
    warn,
    whole_number,
)
from aether_data import (
    ImageReadError,
    UnmeasurableImageError,
    bicubic_upscale,
    image_files,
    psnr,
    read_image,
    release_pairs,
    to_image,
    write_image,
)
from aether_degrade import PROTOCOLS
from aether_ncnn import NCNN_INPUT_NAME, NCNN_OUTPUT_NAME, NcnnConversionError, convert_onnx, ncnn_runtime
from aether_runtime import (
    FP16_IO_DTYPE,
    Runtime,
    Upscaler,
    calibration_batches,
    has_qat_ranges_for,
    int8_model,
    onnx_models,
    onnx_providers,
    onnx_runtime,
    pytorch_runtime,
    resolve_device,
)

PROG = "aether_release.py"
PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("pth", "onnx")
# NCNN artifacts, after the six above. No INT8: ncnn quantizes with its own calibration table
# and int8 kernels, not the Q/DQ grids the other INT8 files carry.
NCNN_PRECISIONS = ("fp32", "fp16")
NCNN_FORMAT = "ncnn"
NCNN_SUFFIXES = (".param", ".bin")  # an NCNN artifact is two files: graph and weights
NCNN_SOURCE = "model_fp32.onnx"  # what pnnx converts: the validated FP32 graph
FIRST_PROTOCOL = next(iter(PROTOCOLS))  # the SR benchmark's, whose figures stand alone
WORSE_THAN_BICUBIC_HINTS = {
    "aa-bicubic": "is the checkpoint trained?",
    "sharp": "users who upscale sharp (non-antialiased) photos get a worse picture than bicubic; the model "
    "over-sharpens aliased input: train with aether_train.py --degradation robust (several downscaling kernels) "
    "and more weight on plain cubic (--kernels), or use a bigger preset",
}
LOSSY_INT8_HINT = (
    "calibrate INT8 on images like the ones it will upscale (--calibration-dir), fine-tune it with QAT "
    "(aether_train.py --qat), or use model_fp16 / model_fp32"
)
# Minimum PSNR of an artifact's output against the FP32 PyTorch output on the same input.
# FP32 ONNX differs from PyTorch only by float reordering; FP16 keeps ~11 bits of mantissa;
# INT8 is bounded by 8-bit activations (PTQ of a good model lands around 35-45 dB).
FIDELITY_FLOOR_DB = {"fp32": 60.0, "fp16": 45.0, "int8": 30.0}
# Minimum PSNR of an INT8 artifact's output against the INT8 reference (the calibrated model's
# float simulation of its grids), by --int8-profile. Kernels that do the graph's arithmetic only
# flip roundings: 67-72 dB on samples/val (ONNX Runtime and oneDNN, x86 with and without VNNI).
# The full [-127, 127] weight grid on an AVX2 CPU without VNNI saturated vpmaddubsw's int16 pair
# sums: 40.8-50.8 dB, while its fidelity to FP32 (39.4 dB) still passed the 30 dB floor. The
# tensorrt profile's symmetric int8 activations run on ONNX Runtime's CPU kernels (not their
# target) at 53.8-55.7 dB on that CPU, hence its lower floor.
INT8_REFERENCE_FLOOR_DB = {"cpu": 60.0, "tensorrt": 50.0}
# Latency: the median of runs on the first image: the validation run plus extra runs while
# they fit in LATENCY_BUDGET_S (at least one, at most LATENCY_MAX_RUNS in all). Fast runs are
# noisy and get many samples; a slow one (the INT8 .pth simulates integer maths in float64 on
# CPU) would cost seconds per sample and gets two.
LATENCY_MAX_RUNS = 10
LATENCY_BUDGET_S = 1.0
COMPARISON_CROP = 128  # side of the high-resolution crop shown in comparison.png
COMPARISON_MIN_PANEL = 192  # small crops are enlarged (nearest neighbour) to this width
STAGING_PREFIX = ".aether-release-"
FAILED_SUFFIX = ".failed"
REPORT_JSON = "release_report.json"
REPORT_MD = "release_report.md"
COMPARISON_PNG = "comparison.png"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Make FP32 / FP16 / INT8 PyTorch and ONNX (and FP32 / FP16 NCNN) release files from an AetherNet "
        "checkpoint and validate each one in its runtime on real images.",
        epilog="Writes model_{fp32,fp16,int8}.{pth,onnx}, model_{fp32,fp16}.ncnn.{param,bin} (when pnnx "
        "and ncnn are installed), release_report.json, release_report.md and comparison.png; "
        "model_fp16.onnx takes and returns float16 tensors. Exit codes: 0 all artifacts passed, 1 an "
        "artifact failed validation (kept as NAME.failed), 2 bad input.",
    )
    parser.add_argument(
        "--model-path",
        required=True,
        metavar="CKPT",
        help="AetherNet checkpoint (.pth/.pt/.safetensors; training form, fused or QAT; params_ema preferred)",
    )
    parser.add_argument(
        "--output-dir",
        required=True,
        metavar="DIR",
        help="where the artifacts and reports go (created if missing; existing "
        "release files in it are replaced atomically)",
    )
    parser.add_argument(
        "--validation-dir",
        required=True,
        metavar="DIR",
        help="images every artifact must upscale correctly; each is mod-cropped, "
        "downscaled under each LR protocol (aa-bicubic, sharp), upscaled and compared with the original",
    )
    parser.add_argument(
        "--calibration-dir",
        metavar="DIR",
        help="images for INT8 post-training calibration of non-QAT checkpoints "
        "(default: the validation images; held-out images give a fairer "
        "INT8 score)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=17,
        choices=ONNX_OPSETS,
        help="ONNX opset (default: %(default)s, the DirectML maximum)",
    )
    parser.add_argument(
        "--int8-profile",
        default="cpu",
        choices=tuple(INT8_PROFILES),
        help="INT8 target: cpu = ONNX Runtime CPU (uint8 activations), tensorrt = "
        "symmetric int8 activations (default: %(default)s)",
    )
    parser.add_argument(
        "--skip-fp16",
        action="store_true",
        help="do not make the FP16 files (FP16 files of an earlier release in "
        "--output-dir are removed, so the folder stays one release)",
    )
    parser.add_argument(
        "--skip-int8", action="store_true", help="do not make the INT8 files (likewise removes earlier ones)"
    )
    parser.add_argument(
        "--skip-ncnn",
        action="store_true",
        help="do not make the NCNN files (likewise removes earlier ones); they are also left out, "
        "with a note, when the pnnx or ncnn package is not installed",
    )
    parser.add_argument(
        "--max-images",
        type=whole_number(1),
        metavar="N",
        help="use at most N usable images from each image folder (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=thread_count(allow_default=False),
        default=2,
        metavar="N",
        help="CPU threads for PyTorch and ONNX Runtime (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="PyTorch device for calibration and for validating the .pth files "
        "(default: %(default)s = cuda when available)",
    )
    return parser


# ---------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Timings(dict):
    """Seconds spent per step, in the order the steps ran."""

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)


def json_number(value: float | None) -> float | str | None:
    """PSNR of identical images is infinite, which JSON cannot hold."""
    if value is None or math.isfinite(value):
        return None if value is None else round(value, 3)
    return "inf"


def format_db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}"


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


@dataclass
class ValidationImage:
    """One validation image's LR under one protocol: each image file gives one per protocol."""

    name: str
    hr: np.ndarray  # (H, W, 3) float32 RGB, mod-cropped to a multiple of the scale
    lr: torch.Tensor  # (1, 3, H / scale, W / scale) float32 on the CPU: what every artifact upscales
    bicubic_psnr: float
    notes: list[str]
    protocol: str  # the LR protocol (aether_degrade.PROTOCOLS) lr was made under


def load_images(
    paths: list[Path], option: str, scale: int, limit: int | None, warnings_seen: list[str]
) -> list[ValidationImage]:
    """Up to ``limit`` usable images; unreadable, too small or flat ones are skipped with a
    warning (or, when nothing usable is left, reported in the one-line error)."""
    images: list[ValidationImage] = []
    skipped: list[str] = []
    for path in paths:
        if limit is not None and len(images) >= limit * len(PROTOCOLS):
            break
        try:
            image, notes = read_image(path)
        except (ImageReadError, OSError) as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        try:
            pairs = release_pairs(image, scale)
        except UnmeasurableImageError as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        for protocol, (hr, lr, bicubic) in pairs.items():
            images.append(ValidationImage(path.name, hr, lr, bicubic, notes, protocol))
    folder = paths[0].parent
    if not images:
        raise InputError(f"{option} {str(folder)!r}: no usable images ({len(skipped)} skipped: {'; '.join(skipped)})")
    for reason in skipped:
        warn(f"{option}: skipped {reason}", warnings_seen)
    for image in images:
        if image.notes and image.protocol == FIRST_PROTOCOL:
            note(f"{image.name}: {', '.join(image.notes)}")
    return images


def image_count(images: list[ValidationImage]) -> int:
    """Image files, each counted once whatever the number of protocols."""
    return len({image.name for image in images})


def artifact_files(name: str) -> list[str]:
    """The files of an artifact: ``name`` itself, or for an NCNN one its .param and .bin."""
    return [name + suffix for suffix in NCNN_SUFFIXES] if name.endswith("." + NCNN_FORMAT) else [name]


def artifact_names(precisions: Sequence[str], ncnn_precisions: Sequence[str]) -> list[str]:
    """The artifacts of a release, in report order: .pth, .onnx, then NCNN."""
    names = [f"model_{p}.{f}" for f in FORMATS for p in PRECISIONS if p in precisions]
    return names + [f"model_{p}.{NCNN_FORMAT}" for p in NCNN_PRECISIONS if p in ncnn_precisions]


def release_file_names() -> list[str]:
    """Every name a release writes, replaces or removes in its output folder."""
    files = [file for name in artifact_names(PRECISIONS, NCNN_PRECISIONS) for file in artifact_files(name)]
    return [*files, *(name + FAILED_SUFFIX for name in files), REPORT_JSON, REPORT_MD, COMPARISON_PNG]


def check_model_outside_release(model_path: str, output_dir: Path) -> None:
    """The release replaces and removes files of an earlier release in --output-dir: never the
    checkpoint it is releasing (under any name: a link is followed)."""
    for name in release_file_names():
        candidate = output_dir / name
        with contextlib.suppress(OSError):
            if candidate.exists() and os.path.samefile(candidate, model_path):
                raise InputError(
                    f"--model-path {model_path!r} is {name} in --output-dir, a file this release replaces; "
                    "copy the checkpoint elsewhere or choose another --output-dir"
                )


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process, or not a pid at all
    return True


def remove_stale_staging_dirs(output_dir: Path) -> None:
    """Staging folders of releases that died without cleaning up (SIGKILL, power loss): named
    ``.aether-release-PID-*``, left by a process that is no longer running."""
    for path in output_dir.glob(STAGING_PREFIX + "*"):
        pid = path.name[len(STAGING_PREFIX) :].split("-")[0]
        if path.is_dir() and not path.is_symlink() and not (pid.isdigit() and _process_is_running(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            note(f"removed {path.name}, the staging folder of an earlier release that did not finish")


def make_staging_dir(output_dir: Path) -> tempfile.TemporaryDirectory:
    try:  # prepare_output_dir checked this already; permissions can still say no (ACLs, races)
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging_dirs(output_dir)
        return tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=output_dir)
    except OSError as exc:
        raise InputError(f"--output-dir {str(output_dir)!r} is not writable ({exc.strerror or exc})") from None


def load_source(path: str) -> tuple[AetherNet, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, its detected config, the checkpoint's metadata)."""
    try:
        state_dict, metadata = read_checkpoint(path)
        config = detect_config(state_dict)
        model = build_from_state_dict(state_dict)
    except AetherCheckpointError as exc:
        raise InputError(f"--model-path: {exc}") from None
    if config["in_channels"] != 3 or config["out_channels"] != 3:
        raise InputError(
            f"--model-path {path!r}: a {config['in_channels']}->{config['out_channels']} channel "
            "model; releases are validated on RGB images and need 3 channels in and out"
        )
    return model, config, metadata


# ---------------------------------------------------------------------------------------
# Models behind the artifacts
# ---------------------------------------------------------------------------------------


def qat_command_hint(config: dict[str, Any], model_path: str) -> str:
    """The aether_train.py command that fine-tunes this checkpoint with QAT."""
    for name, values in PRESETS.items():
        if all(config[k] == v for k, v in values.items() if k != "num_blocks"):
            same_depth = config["num_blocks"] == values["num_blocks"]
            blocks = "" if same_depth else f" --num-blocks {config['num_blocks']}"
            return (
                f"python3 aether_train.py --qat --pretrained {model_path} --preset {name} "
                f"--scale {config['scale']}{blocks} --lr 1e-4 --steps 2000 --train-dir HR_IMAGES"
            )
    return f"python3 aether_train.py --qat --pretrained {model_path} --lr 1e-4 --steps 2000 ... (custom config)"


def warn_about_ptq(
    source: AetherNet, model_path: str, profile: str, calibration_origin: str, warnings_seen: list[str]
) -> None:
    """Say why INT8 is made by post-training calibration (PTQ) and how QAT would do better."""
    if source.qat and is_calibrated(source):
        warn(
            f"{model_path} was fine-tuned with QAT for the {source.int8_profile!r} INT8 "
            f"profile, but --int8-profile is {profile!r}: its activation grids do not carry over, "
            f"so INT8 is re-calibrated from its float weights (PTQ) on {calibration_origin}; "
            f"quality may be lower than a QAT fine-tune for {profile!r} would give",
            warnings_seen,
        )
    else:
        reason = (
            "is a QAT checkpoint whose activation ranges were never set"
            if source.qat
            else "is a float checkpoint (not trained with QAT)"
        )
        lines = [
            f"{model_path} {reason}.",
            f"INT8 is made by POST-TRAINING CALIBRATION (PTQ) on {calibration_origin}.",
            "PTQ INT8 quality is LOWER than quantization-aware training gives. For the best",
            "INT8 model, fine-tune this checkpoint with QAT and release that checkpoint:",
            f"    {qat_command_hint(source.config, model_path)}",
        ]
        warnings_seen.append(" ".join(line.strip() for line in lines))
        bar = "!" * 78
        tqdm.write("\n".join([bar, f"WARNING: {lines[0]}", *lines[1:], bar]), file=sys.stderr)


def warn_about_wide_int8_grid(
    int8: AetherNet | None, results: dict[str, ArtifactResult], args: argparse.Namespace, warnings_seen: list[str]
) -> None:
    """When an INT8 file missed the INT8 reference on a checkpoint QAT-trained on the old full
    int8 weight grid, say the likely cause (a CPU without VNNI) and the cure."""
    missed = [
        f"{name} in {run.runtime}"
        for name, artifact in results.items()
        if artifact.int8_reference_floor is not None
        for run in artifact.runs
        if (run.worst("int8_reference_db") or math.inf) < artifact.int8_reference_floor
    ]
    wide = int8 is not None and any(
        m.weight_qmax > CPU_WEIGHT_QMAX for m in int8.modules() if isinstance(m, QuantConv2d)
    )
    if missed and wide and args.int8_profile == "cpu":
        warn(
            f"{' and '.join(missed)} missed the INT8 reference: {args.model_path} was QAT-trained on the full "
            f"[-127, 127] weight grid, whose int16 pair sums saturate on x86 CPUs without VNNI; fine-tune it with "
            f"QAT again (this aether_arch trains the cpu profile on [-{CPU_WEIGHT_QMAX}, {CPU_WEIGHT_QMAX}]): "
            f"{qat_command_hint(int8.config, args.model_path)}",
            warnings_seen,
        )


def release_metadata(
    model: AetherNet,
    source_path: str,
    source_sha256: str,
    *,
    precision: str,
    io_dtype: str,
    quantization: str,
    int8_profile: str,
) -> dict[str, Any]:
    """Metadata stored in every artifact (ONNX metadata_props / .pth "metadata")."""
    return checkpoint_metadata(
        model,
        scale=model.scale,
        precision=precision,
        input_channels=model.in_channels,
        output_channels=model.out_channels,
        value_range="0-1",
        color_order="RGB",
        layout="NCHW",
        int8_profile=int8_profile,
        io_dtype=io_dtype,
        quantization=quantization,
        source_checkpoint=os.path.basename(source_path),
        source_sha256=source_sha256,
    )


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One artifact in one runtime, on every validation image."""

    runtime: str
    note: str = ""
    per_image: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    latency_runs: int = 0
    first_output: np.ndarray | None = field(default=None, repr=False)  # for comparison.png

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst(self, key: str = "fidelity_db") -> float | None:
        """The lowest per-image ``key`` ("fidelity_db", "int8_reference_db"); None when none was measured."""
        values = [r[key] for r in self.per_image if r.get(key) is not None]
        return min(values) if values else None

    def mean_quality(self, protocol: str = FIRST_PROTOCOL) -> float | None:
        values = [r["quality_db"] for r in self.per_image if r["quality_db"] is not None and r["protocol"] == protocol]
        return statistics.fmean(values) if values else None

    def mean_bicubic(self, protocol: str = FIRST_PROTOCOL) -> float | None:
        """Over the images mean_quality is over: the two are compared."""
        values = [r["bicubic_db"] for r in self.per_image if r["quality_db"] is not None and r["protocol"] == protocol]
        return statistics.fmean(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            **({"note": self.note} if self.note else {}),
            "passed": self.passed,
            "failures": self.failures,
            "latency_ms": json_number(self.latency_ms),
            "latency_runs": self.latency_runs,
            "worst_fidelity_db": json_number(self.worst()),
            "worst_int8_reference_db": json_number(self.worst("int8_reference_db")),
            "mean_quality_db": json_number(self.mean_quality()),  # the benchmark protocol
            "mean_quality_db_by_protocol": {p: json_number(self.mean_quality(p)) for p in PROTOCOLS},
            "mean_bicubic_db_by_protocol": {p: json_number(self.mean_bicubic(p)) for p in PROTOCOLS},
            "images": [{k: json_number(v) if k.endswith("_db") else v for k, v in r.items()} for r in self.per_image],
        }


@dataclass
class Reference:
    """What an artifact's outputs are held to: one image per validation image, and a floor."""

    name: str  # as the failure says it: "the FP32 PyTorch output"
    key: str  # the per-image record's field
    images: list[np.ndarray]
    floor: float


def check_output(
    output: np.ndarray, image: ValidationImage, references: list[tuple[Reference, np.ndarray]], scale: int
) -> tuple[dict[str, Any], list[str]]:
    """(per-image record, failures) for one output, against each (reference, its image)."""
    expected = (1, 3, image.lr.shape[-2] * scale, image.lr.shape[-1] * scale)
    record = {
        "image": image.name,
        "protocol": image.protocol,
        "output_shape": list(output.shape),
        **{reference.key: None for reference, _ in references},  # "fidelity_db" first
        "quality_db": None,
        "bicubic_db": image.bicubic_psnr,
    }
    label = f"{image.name} ({image.protocol} LR)"
    if tuple(output.shape) != expected:
        return record, [f"{label}: output shape {tuple(output.shape)}, expected {expected}"]
    if not np.isfinite(output).all():
        return record, [f"{label}: output has NaN or infinite values"]
    failures = []
    low, high = float(output.min()), float(output.max())
    if low < 0.0 or high > 1.0:
        failures.append(f"{label}: output range [{low:.4g}, {high:.4g}] is outside [0, 1]")
    result = to_image(output)
    record["quality_db"] = psnr(result, image.hr, border=scale)
    for reference, picture in references:
        record[reference.key] = value = psnr(result, picture)
        if value < reference.floor:
            failures.append(
                f"{label}: PSNR vs {reference.name} {value:.2f} dB is below the {reference.floor:g} dB floor"
            )
    return record, failures


def validate(
    runtime: Runtime, images: list[ValidationImage], references: list[Reference], scale: int, progress: tqdm
) -> RunResult:
    result = RunResult(runtime.label, runtime.note)
    try:
        upscale = runtime.open()
    except Exception as exc:  # any load failure is what this validation exists to catch
        result.failures.append(f"does not load: {describe_exception(exc)}")
        progress.update(len(images))
        return result
    first_run_s = None
    for index, image in enumerate(images):
        try:
            start = time.perf_counter()
            output = upscale(image.lr.numpy())
            elapsed = time.perf_counter() - start
        except Exception as exc:  # a runtime that cannot run the graph fails the artifact
            result.failures.append(f"{image.name}: does not run: {describe_exception(exc)}")
            progress.update(1)
            continue
        record, failures = check_output(output, image, [(r, r.images[index]) for r in references], scale)
        result.per_image.append(record)
        result.failures += failures
        if index == 0:
            first_run_s = elapsed
            if record["fidelity_db"] is not None:  # right shape, finite: fit for comparison.png
                result.first_output = to_image(output)
        progress.update(1)
    if first_run_s is not None:
        result.latency_ms, result.latency_runs = median_latency_ms(upscale, images[0].lr.numpy(), first_run_s)
    return result


def median_latency_ms(upscale: Upscaler, lr: np.ndarray, first_run_s: float) -> tuple[float, int]:
    """(median milliseconds, number of runs)."""
    samples = [first_run_s]
    while len(samples) == 1 or (len(samples) < LATENCY_MAX_RUNS and sum(samples[1:]) < LATENCY_BUDGET_S):
        start = time.perf_counter()
        upscale(lr)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, len(samples)


@dataclass
class ArtifactFile:
    name: str
    size: int
    sha256: str
    final_name: str = ""  # set when published: name, or name + FAILED_SUFFIX

    def to_json(self) -> dict[str, Any]:
        return {"file": self.final_name or self.name, "size_bytes": self.size, "sha256": self.sha256}


@dataclass
class ArtifactResult:
    name: str  # the file, or for NCNN the stem of its two files ("model_fp32.ncnn")
    precision: str
    quantization: str
    files: list[ArtifactFile]  # empty when the artifact could not be made (a failed conversion)
    runs: list[RunResult]
    int8_reference_floor: float | None = None  # INT8 artifacts: INT8_REFERENCE_FLOOR_DB[profile]

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(run.passed for run in self.runs)

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)

    @property
    def final_name(self) -> str:
        """Where its files went: "a", "a.failed", "a.param.failed + a.bin.failed"; "" for none."""
        return " + ".join(file.final_name or file.name for file in self.files)

    def where_kept(self) -> str:
        return f"moved to {self.final_name}" if self.files else "no file was made"

    def failure_summary(self) -> str:
        """The first failure in each runtime that had one."""
        return "; ".join(
            f"{run.runtime}: {run.failures[0]}"
            + (f" (and {len(run.failures) - 1} more)" if len(run.failures) > 1 else "")
            for run in self.runs
            if run.failures
        )

    def to_json(self) -> dict[str, Any]:
        # "file", "size_bytes" and "sha256" are those of the first file (for NCNN the .param an
        # app is pointed at, which names no .bin: apps find it beside it); "files" lists all.
        first = self.files[0].to_json() if self.files else {"file": artifact_files(self.name)[0]}
        return {
            "artifact": self.name,
            "file": first["file"],
            "files": [file.to_json() for file in self.files],
            "precision": self.precision,
            "quantization": self.quantization,
            "size_bytes": first.get("size_bytes"),
            "sha256": first.get("sha256"),
            "fidelity_floor_db": FIDELITY_FLOOR_DB[self.precision],
            "int8_reference_floor_db": self.int8_reference_floor,
            "passed": self.passed,
            "runs": [run.to_json() for run in self.runs],
        }


# ---------------------------------------------------------------------------------------
# Comparison image and reports
# ---------------------------------------------------------------------------------------


def comparison_image(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side centre crops of same-size (H, W, 3) images, each under its label; small
    crops are enlarged with nearest neighbour so that the pixels stay honest."""
    h, w = panels[0][1].shape[:2]
    crop_h, crop_w = min(h, COMPARISON_CROP), min(w, COMPARISON_CROP)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    zoom = max(1, math.ceil(COMPARISON_MIN_PANEL / crop_w))
    label_height = 24
    columns = []
    for label, picture in panels:
        crop = picture[top : top + crop_h, left : left + crop_w]
        crop = cv2.resize(crop, (crop_w * zoom, crop_h * zoom), interpolation=cv2.INTER_NEAREST)
        bar = np.zeros((label_height, crop.shape[1], 3), np.uint8)  # putText draws on 8-bit only
        cv2.putText(bar, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        columns.append(np.vstack([bar.astype(np.float32) / 255.0, crop]))
    gutter = np.ones((columns[0].shape[0], 4, 3), np.float32)
    return np.hstack([part for column in columns for part in (column, gutter)][:-1])


SUMMARY_HEADER = [
    "artifact",
    "runtime",
    "size",
    "fidelity dB (floor)",
    "vs INT8 reference dB (floor)",
    *(f"PSNR dB, {protocol} LR (bicubic)" for protocol in PROTOCOLS),
    "latency ms",
    "result",
]


def summary_rows(results: list[ArtifactResult]) -> list[list[str]]:
    rows = []
    for artifact in results:
        for run in artifact.runs:
            rows.append(
                [
                    artifact.name,
                    run.runtime,
                    format_size(artifact.size),
                    f"{format_db(run.worst())} (>= {FIDELITY_FLOOR_DB[artifact.precision]:g})",
                    "-"
                    if artifact.int8_reference_floor is None
                    else f"{format_db(run.worst('int8_reference_db'))} (>= {artifact.int8_reference_floor:g})",
                    *(f"{format_db(run.mean_quality(p))} ({format_db(run.mean_bicubic(p))})" for p in PROTOCOLS),
                    "-" if run.latency_ms is None else f"{run.latency_ms:.1f}",
                    "ok" if run.passed else "FAILED",
                ]
            )
    return rows


def ncnn_line(ncnn: dict[str, Any]) -> str:
    """The report's NCNN line: how the files were made, or why none were (one line, the same
    note stderr showed when pnnx or ncnn is missing)."""
    if ncnn["skipped"] is not None:
        return f"* {ncnn['skipped']}"
    return (
        f"* NCNN: converted by pnnx from `{ncnn['converted_from']}`; input blob `{ncnn['input_blob']}`, "
        f"output blob `{ncnn['output_blob']}`"
    )


def valid_text(value: Any) -> Any:
    """``value`` with every string in it made valid UTF-8 (valid_utf8): the report names files."""
    if isinstance(value, str):
        return valid_utf8(value)
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    return value


def markdown_report(report: dict[str, Any], results: list[ArtifactResult]) -> str:
    source, int8 = report["source"], report["int8"]
    int8_line = (
        "skipped"
        if int8["quantization"] is None
        else (
            f"{int8['quantization'].upper()}, profile `{int8['profile']}`"
            + (f", calibrated on {int8['calibration']}" if int8["calibration"] else "")
        )
    )
    lines = [
        f"# AetherNet release: {source['preset']} x{source['config']['scale']}",
        "",
        f"Status: **{report['status']}**. Made {report['created']} by {PROG} (aether_arch {report['aether_version']}).",
        "",
        f"* Source: `{source['path']}` ({source['form']} checkpoint, sha256 `{source['sha256']}`)",
        f"* Config: `{json.dumps(source['config'], sort_keys=True)}`",
        f"* INT8: {int8_line}",
        f"* FP16 ONNX input/output type: {report['fp16_onnx_io_dtype']}",
        ncnn_line(report["ncnn"]),
        f"* Validation: {len({i['name'] for i in report['images']})} image(s) from `{report['validation_dir']}`. "
        "Each is mod-cropped, downscaled under each LR protocol (aa-bicubic: antialiased bicubic, the SR "
        "benchmark's; sharp: cubic without antialiasing, as many cameras and phones downscale; 8-bit LR) and upscaled "
        "by every artifact; fidelity = worst PSNR against the FP32 PyTorch output on the same input, "
        "vs INT8 reference = worst PSNR of an INT8 file against the quantized model simulated in PyTorch "
        "(kernels that do the graph's arithmetic only flip roundings), "
        "PSNR = mean against the original (border = scale), next to bicubic upscaling of the same LR; "
        "latency = median on the first image.",
        "",
        "## Artifacts",
        "",
        markdown_table(
            ["file", "size", "sha256"],
            [
                [f["file"], format_size(f["size_bytes"]), f"`{f['sha256']}`"]
                if f
                else [f"{a['file']} (not made)", "-", "-"]
                for a in report["artifacts"]
                for f in a["files"] or [None]
            ],
        ),
        "",
        markdown_table(SUMMARY_HEADER, summary_rows(results)),
        "",
        "## Per image",
        "",
        markdown_table(
            [
                "artifact",
                "runtime",
                "image",
                "LR protocol",
                "fidelity dB",
                "vs INT8 reference dB",
                "PSNR dB",
                "bicubic dB",
            ],
            [
                [
                    artifact.name,
                    run.runtime,
                    r["image"],
                    r["protocol"],
                    format_db(r["fidelity_db"]),
                    format_db(r.get("int8_reference_db")),
                    format_db(r["quality_db"]),
                    format_db(r["bicubic_db"]),
                ]
                for artifact in results
                for run in artifact.runs
                for r in run.per_image
            ],
        ),
        "",
    ]
    failures = [
        f"* {a.name} ({f'kept as `{a.final_name}`' if a.files else 'no file was made'}): {a.failure_summary()}"
        for a in results
        if not a.passed
    ]
    if failures:
        lines += ["## Failures", "", *failures, ""]
    if report["warnings"]:
        lines += ["## Warnings", "", *(f"* {w}" for w in report["warnings"]), ""]
    lines += [
        "## Timings",
        "",
        markdown_table(
            ["step", "seconds"], [[name, f"{seconds:.2f}"] for name, seconds in report["timings_s"].items()]
        ),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------


def remove_if_present(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def publish(staging: Path, output_dir: Path, results: list[ArtifactResult], left_out: list[str]) -> None:
    """Move each validated artifact into place and each failed one to *.failed, and remove
    artifacts of an earlier release that this run did not make (see the module docstring)."""
    for artifact in results:
        made = {file.name: file for file in artifact.files}
        for name in artifact_files(artifact.name):
            final, failed = output_dir / name, output_dir / (name + FAILED_SUFFIX)
            if artifact.passed:
                os.replace(staging / name, final)
                remove_if_present(failed)
                made[name].final_name = final.name
            elif name in made:
                os.replace(staging / name, failed)
                remove_if_present(final)
                made[name].final_name = failed.name
            else:  # never made (pnnx failed): no file of an earlier release stays beside the others
                remove_if_present(final)
                remove_if_present(failed)
    for name in left_out:
        stale = [output_dir / (f + suffix) for f in artifact_files(name) for suffix in ("", FAILED_SUFFIX)]
        removed = [path.name for path in stale if remove_if_present(path)]
        if removed:
            note(f"removed {', '.join(removed)} of an earlier release: this run did not make it")


# ---------------------------------------------------------------------------------------
# The release
# ---------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Everything the release needs, checked before anything is written."""

    output_dir: Path
    device: torch.device
    source: AetherNet
    config: dict[str, Any]
    source_metadata: dict[str, Any]
    source_sha256: str
    images: list[ValidationImage]
    calibration_images: list[ValidationImage]
    calibration_origin: str


def check_inputs(args: argparse.Namespace, timings: Timings, warnings_seen: list[str]) -> Inputs:
    device = resolve_device(args.device)
    output_dir = prepare_output_dir(args.output_dir)
    check_model_outside_release(args.model_path, output_dir)
    image_folders = {"--validation-dir": args.validation_dir, "--calibration-dir": args.calibration_dir}
    for option, folder in image_folders.items():
        if folder is not None and Path(folder).resolve() == output_dir.resolve():
            raise InputError(f"--output-dir is the {option}: comparison.png would become an input image")
    validation_paths = image_files(args.validation_dir, "--validation-dir")
    separate_calibration = (
        not args.skip_int8
        and args.calibration_dir is not None
        and Path(args.calibration_dir).resolve() != Path(args.validation_dir).resolve()
    )
    calibration_paths = image_files(args.calibration_dir, "--calibration-dir") if separate_calibration else []
    with timings.step("load checkpoint"):
        source, config, source_metadata = load_source(args.model_path)
        source_sha256 = sha256_of(Path(args.model_path))
    with timings.step("read images"):
        images = load_images(validation_paths, "--validation-dir", config["scale"], args.max_images, warnings_seen)
        if separate_calibration:
            calibration_images = load_images(
                calibration_paths, "--calibration-dir", config["scale"], args.max_images, warnings_seen
            )
            origin = f"{image_count(calibration_images)} image(s) from {args.calibration_dir}"
        else:
            calibration_images, origin = images, f"the {image_count(images)} validation image(s)"
    return Inputs(
        output_dir, device, source, config, source_metadata, source_sha256, images, calibration_images, origin
    )


def write_artifacts(
    staging: Path,
    names: list[str],
    fp32_model: AetherNet,
    int8: AetherNet | None,
    metadata: dict[str, dict[str, Any]],
    opset: int,
    timings: Timings,
) -> None:
    with timings.step("export ONNX"):
        protos = onnx_models(fp32_model, int8, opset=opset, fp16="model_fp16.onnx" in names)
    for name in tqdm(names, desc="writing artifacts", unit="file", leave=False, disable=None):
        precision, fmt = name.removeprefix("model_").split(".")
        path = staging / name
        with timings.step(f"write {name}"):
            if fmt == "pth":
                model = int8 if precision == "int8" else fp32_model
                if precision == "fp16":
                    model = copy.deepcopy(fp32_model).half()
                save_checkpoint(model, path, metadata=metadata[precision], int8_weights=precision == "int8")
            else:
                set_onnx_metadata(protos[precision], metadata[precision])
                save_onnx(protos[precision], path)


def ncnn_plan(args: argparse.Namespace, precisions: list[str]) -> tuple[list[str], str | None]:
    """(precisions of the NCNN artifacts to make, the line saying why none are: None when they are)."""
    if args.skip_ncnn:
        return [], "NCNN artifact skipped: --skip-ncnn"
    missing = aether_ncnn.unavailable()
    if missing is not None:  # an optional part: the release goes on with the other six files
        line = f"NCNN artifact skipped: {missing}"
        note(line)
        return [], line
    return [p for p in NCNN_PRECISIONS if p in precisions], None


def write_ncnn_artifacts(staging: Path, names: list[str], threads: int, timings: Timings) -> dict[str, str]:
    """Convert the staged FP32 ONNX file into each NCNN artifact in ``names``; returns why each
    one that pnnx could not make failed (such an artifact fails like one that fails validation)."""
    errors = {}
    for name in names:
        precision = name.removeprefix("model_").split(".")[0]
        param, weights = (staging / file for file in artifact_files(name))
        with timings.step(f"convert {name}"):
            try:
                convert_onnx(staging / NCNN_SOURCE, param, weights, fp16=precision == "fp16", threads=threads)
            except NcnnConversionError as exc:
                errors[name] = f"does not convert: {exc}"
    return errors


@torch.no_grad()
def reference_outputs(model: AetherNet, images: list[ValidationImage], device: torch.device) -> list[np.ndarray]:
    """``model``'s output on every validation image, in PyTorch on ``device``."""
    model = model.to(device)
    references = [to_image(model(image.lr.to(device))) for image in images]
    model.cpu()
    return references


def int8_reference(int8: AetherNet, images: list[ValidationImage], device: torch.device, profile: str) -> Reference:
    """The INT8 artifacts' arithmetic as the graph defines it: the calibrated model's float
    simulation of its grids (ONNX Runtime's unoptimized Q/DQ graph matches it within 2/255)."""
    simulation = copy.deepcopy(int8)
    simulation.int8_backend = "simulation"  # not the kernels under test
    return Reference(
        "the INT8 reference (the quantized model simulated in PyTorch)",
        "int8_reference_db",
        reference_outputs(simulation, images, device),
        INT8_REFERENCE_FLOOR_DB[profile],
    )


def worse_than_bicubic(results: Sequence[ArtifactResult]) -> list[str]:
    """A warning for each LR protocol where the FP32 model is worse than bicubic, and for each
    other artifact (its first runtime) that is worse than bicubic where FP32 is not: the precision
    it runs at loses what the model gains."""
    runs = {artifact.name: artifact.runs[0] for artifact in results if artifact.runs}

    def below_bicubic(name: str, protocol: str) -> tuple[float, float] | None:
        run = runs.get(name)
        quality, bicubic = (run.mean_quality(protocol), run.mean_bicubic(protocol)) if run else (None, None)
        # at x1 bicubic is the image itself (infinite PSNR): there is nothing to be worse than
        if quality is None or bicubic is None or not math.isfinite(bicubic) or quality >= bicubic:
            return None
        return quality, bicubic

    messages = []
    for protocol, hint in WORSE_THAN_BICUBIC_HINTS.items():
        if fp32 := below_bicubic("model_fp32.onnx", protocol):
            messages.append(
                f"the FP32 model ({fp32[0]:.2f} dB) is worse than bicubic ({fp32[1]:.2f} dB) on "
                f"the validation images with {protocol} LR: {hint}"
            )
            continue
        for name in [name for name in runs if name != "model_fp32.onnx"]:
            if lossy := below_bicubic(name, protocol):
                messages.append(
                    f"{name} ({lossy[0]:.2f} dB) is worse than bicubic ({lossy[1]:.2f} dB) on the validation images "
                    f"with {protocol} LR, where FP32 is not: "
                    + (LOSSY_INT8_HINT if "int8" in name else "use model_fp32")
                )
    return messages


def validate_artifacts(
    staging: Path,
    names: list[str],
    inputs: Inputs,
    references: dict[str, list[Reference]],
    metadata: dict[str, dict[str, Any]],
    threads: int,
    timings: Timings,
    conversion_errors: dict[str, str],
) -> list[ArtifactResult]:
    """``references``: by precision, what that precision's outputs are held to."""
    runtimes = {}
    for name in names:
        precision, fmt = name.removeprefix("model_").split(".")
        if name in conversion_errors:
            runtimes[name] = []
        elif fmt == "pth":
            runtimes[name] = [pytorch_runtime(staging / name, precision, inputs.device)]
        elif fmt == "onnx":
            runtimes[name] = [onnx_runtime(staging / name, provider, threads) for provider in onnx_providers()]
        else:
            param, weights = (staging / file for file in artifact_files(name))
            runtimes[name] = [ncnn_runtime(param, weights, precision, threads)]
    results = []
    total = sum(map(len, runtimes.values())) * len(inputs.images)
    with tqdm(total=total, desc="validating", unit="run", leave=False, disable=None) as progress:
        for name in names:
            precision = name.removeprefix("model_").split(".")[0]
            progress.set_postfix_str(name)
            with timings.step(f"validate {name}"):
                runs = [
                    validate(runtime, inputs.images, references[precision], inputs.config["scale"], progress)
                    for runtime in runtimes[name]
                ]
            if name in conversion_errors:
                runs = [RunResult("pnnx", failures=[conversion_errors[name]])]
            paths = [staging / file for file in artifact_files(name)]
            files = [ArtifactFile(path.name, path.stat().st_size, sha256_of(path)) for path in paths if path.is_file()]
            floors = {r.key: r.floor for r in references[precision]}
            results.append(
                ArtifactResult(
                    name, precision, metadata[precision]["quantization"], files, runs, floors.get("int8_reference_db")
                )
            )
    for artifact in results:
        for run in artifact.runs:
            if run.note:
                note(f"{artifact.name} in {run.runtime}: {run.note}")
    return results


def comparison_panels(
    image: ValidationImage, reference: np.ndarray, results: dict[str, ArtifactResult], scale: int
) -> list[tuple[str, np.ndarray]]:
    """bicubic | FP32 | INT8 (the ONNX file on the CPU, when made) | original, labelled with PSNR."""
    pictures = [("bicubic", to_image(bicubic_upscale(image.lr, scale))), ("FP32", reference)]
    int8_onnx = results.get("model_int8.onnx")
    if int8_onnx is not None and int8_onnx.runs[0].first_output is not None:
        pictures.append(("INT8", int8_onnx.runs[0].first_output))
    labelled = [(f"{label} {format_db(psnr(p, image.hr, border=scale))} dB", p) for label, p in pictures]
    return [*labelled, ("original", image.hr)]


def build_report(
    args: argparse.Namespace,
    inputs: Inputs,
    quantization: str | None,
    ncnn_skipped: str | None,
    results: list[ArtifactResult],
    timings: Timings,
    warnings_seen: list[str],
) -> dict[str, Any]:
    source = inputs.source
    return {
        "tool": PROG,
        "aether_version": aether_arch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": "passed" if all(artifact.passed for artifact in results) else "failed",
        "source": {
            "path": args.model_path,
            "sha256": inputs.source_sha256,
            "form": "qat" if source.qat else ("fused" if inputs.config["fused"] else "training"),
            "preset": preset_name(source.config),
            "config": source.config,
            "metadata": inputs.source_metadata,
        },
        "int8": {
            "profile": args.int8_profile,
            "quantization": quantization,
            "calibration": inputs.calibration_origin if quantization == "ptq" else None,
        },
        "fp16_onnx_io_dtype": FP16_IO_DTYPE,
        "ncnn": {
            "skipped": ncnn_skipped,
            "converted_from": NCNN_SOURCE,
            "input_blob": NCNN_INPUT_NAME,
            "output_blob": NCNN_OUTPUT_NAME,
        },
        "fidelity_floor_db": FIDELITY_FLOOR_DB,
        "int8_reference_floor_db": INT8_REFERENCE_FLOOR_DB,
        "validation_dir": args.validation_dir,
        "images": [
            {
                "name": image.name,
                "hr_size": [image.hr.shape[1], image.hr.shape[0]],
                "lr_size": [image.lr.shape[-1], image.lr.shape[-2]],
                "protocol": image.protocol,
                "bicubic_db": json_number(image.bicubic_psnr),
                "notes": image.notes,
            }
            for image in inputs.images
        ],
        "options": vars(args),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            **aether_ncnn.versions(),
            "pytorch_device": str(inputs.device),
            "onnxruntime_providers": onnx_providers(),
            "threads": args.threads,
            "platform": platform.platform(),
        },
        "artifacts": [artifact.to_json() for artifact in results],
        "timings_s": dict(timings),
        "warnings": warnings_seen,
    }


def release(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    timings = Timings()
    warnings_seen: list[str] = []
    torch.set_num_threads(args.threads)
    inputs = check_inputs(args, timings, warnings_seen)
    if inputs.device.type == "cuda":  # TF32 convolutions would make the FP32 reference ~10-bit
        torch.backends.cudnn.allow_tf32 = False
    source, scale = inputs.source, inputs.config["scale"]
    precisions = ["fp32", *([] if args.skip_fp16 else ["fp16"]), *([] if args.skip_int8 else ["int8"])]
    ncnn_precisions, ncnn_skipped = ncnn_plan(args, precisions)
    names = artifact_names(precisions, ncnn_precisions)
    ncnn_names = [name for name in names if name.endswith("." + NCNN_FORMAT)]

    with removed_if_left_empty(inputs.output_dir), make_staging_dir(inputs.output_dir) as staging_name:
        staging = Path(staging_name)
        with timings.step("fuse"):
            fp32_model = float_copy(source)
        int8, quantization = None, None
        if "int8" in precisions:
            if not has_qat_ranges_for(source, args.int8_profile):
                warn_about_ptq(source, args.model_path, args.int8_profile, inputs.calibration_origin, warnings_seen)
            calibration = tqdm(
                calibration_batches(image.lr for image in inputs.calibration_images),
                desc="calibrating INT8",
                unit="img",
                leave=False,
                disable=None,
            )
            with timings.step("INT8 model"):
                int8, quantization = int8_model(
                    source, fp32_model, profile=args.int8_profile, calibration=calibration, device=inputs.device
                )
            if quantization == "ptq" and inputs.calibration_images is inputs.images:
                note(
                    "INT8 was calibrated on the validation images; held-out images "
                    "(--calibration-dir) give a fairer INT8 score"
                )

        provenance = {"source_path": args.model_path, "source_sha256": inputs.source_sha256}
        metadata = {
            "fp32": release_metadata(
                fp32_model, **provenance, precision="fp32", io_dtype="float32", quantization="none", int8_profile="none"
            ),
            "fp16": release_metadata(
                fp32_model,
                **provenance,
                precision="fp16",
                io_dtype=FP16_IO_DTYPE,
                quantization="none",
                int8_profile="none",
            ),
        }
        if int8 is not None:
            metadata["int8"] = release_metadata(
                int8,
                **provenance,
                precision="int8",
                io_dtype="float32",
                quantization=quantization,
                int8_profile=args.int8_profile,
            )
        write_artifacts(
            staging, [n for n in names if n not in ncnn_names], fp32_model, int8, metadata, args.opset, timings
        )
        conversion_errors = write_ncnn_artifacts(staging, ncnn_names, args.threads, timings)

        with timings.step("FP32 reference"):
            fp32_outputs = reference_outputs(fp32_model, inputs.images, inputs.device)
        references = {
            p: [Reference("the FP32 PyTorch output", "fidelity_db", fp32_outputs, FIDELITY_FLOOR_DB[p])]
            for p in precisions
        }
        if int8 is not None:
            with timings.step("INT8 reference"):
                references["int8"].append(int8_reference(int8, inputs.images, inputs.device, args.int8_profile))
        results = validate_artifacts(
            staging, names, inputs, references, metadata, args.threads, timings, conversion_errors
        )
        by_name = {artifact.name: artifact for artifact in results}

        for message in worse_than_bicubic(results):
            warn(message, warnings_seen)
        warn_about_wide_int8_grid(int8, by_name, args, warnings_seen)
        panels = comparison_panels(inputs.images[0], fp32_outputs[0], by_name, scale)
        write_image(staging / COMPARISON_PNG, comparison_image(panels))

        left_out = [name for name in artifact_names(PRECISIONS, NCNN_PRECISIONS) if name not in names]
        publish(staging, inputs.output_dir, results, left_out)
        os.replace(staging / COMPARISON_PNG, inputs.output_dir / COMPARISON_PNG)

    timings["total"] = round(time.perf_counter() - started, 3)
    report = build_report(args, inputs, quantization, ncnn_skipped, results, timings, warnings_seen)
    # Written last, straight into place (each atomically): they describe the folder as
    # published, failures included.
    reports = {
        REPORT_JSON: json.dumps(valid_text(report), indent=2, allow_nan=False) + "\n",
        REPORT_MD: valid_text(markdown_report(report, results)),
    }
    for name, text in reports.items():
        with atomic_write(inputs.output_dir / name) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")

    failed = [artifact for artifact in results if not artifact.passed]
    print(markdown_table(SUMMARY_HEADER, summary_rows(results)))
    print(
        f"{len(results)} artifact(s) in {inputs.output_dir} after {timings['total']:.1f} s: "
        + (f"{len(failed)} FAILED" if failed else "all passed")
    )
    for artifact in failed:
        print(
            f"{PROG}: error: {artifact.name} failed validation ({artifact.failure_summary()}); {artifact.where_kept()}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser().parse_args, release, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
