"""Benchmark AetherNet presets: size, compute and CPU latency.

Subcommands
-----------
``arch``
    For each preset, measures
      * parameters and MACs per low-resolution (LR) input pixel of the deploy (fused) form;
      * ONNX Runtime CPU latency of the fused FP32 ONNX graph and of the same graph
        statically quantized to INT8 (QDQ, per-channel), and the INT8 speed-up;
      * PyTorch CPU latency of the training form (eval mode) and of the fused form, and the
        speed-up that re-parameterization buys.
    It prints a Markdown table. The targets (INT8 speed-up >= 2.0x, fusion speed-up
    >= 1.5x) are only reported: a missed one is marked MISSED in its row, never hidden,
    and never turned into a failing test (timings depend on the machine).

``qat``
    The quantization-aware-training claims, measured:
      * PSNR on held-out images of the FP32 model, its QAT fine-tuned INT8 version and its
        post-training-calibrated (PTQ) INT8 version, all run as ONNX in ONNX Runtime;
      * ONNX Runtime latency of every preset's FP32 graph vs its real QAT Q/DQ INT8 export;
      * the cost of a QAT training step relative to a float one.

``compare``
    The headline claims against the networks users would pick instead, in one run on one
    machine (``python3 aether_bench.py compare --out DIR``; ``--quick`` for a smoke run):
      * ONNX Runtime CPU latency of every preset (FP32, FP16, the release INT8) and of the
        peers built from Spandrel's code with their published hyperparameters (SPAN 48 / 28
        channels, Compact, UltraCompact, SuperUltraCompact, PLKSR-tiny, RRDB/ESRGAN; FP32 and
        ORT static INT8), at 256x256 for scales 2 and 4 and on a 1280x720 frame; PyTorch
        training form, fused form and INT8 .pth path of the presets;
      * parameters, MACs per LR pixel, and efficiency against this machine's roofline (peak
        FP32 and INT8 conv throughput measured in the same run);
      * quality at equal training budget: aether_tiny and its two closest peers in size
        trained by aether_train.py's Trainer with the same data, degradation, loss, schedule
        and number of steps (``--budget``), then PSNR on held-out images in FP32 and INT8.
    Writes DIR/benchmarks.md (targets marked met / MISSED with the measured figures),
    DIR/benchmarks_results.json (everything measured; ``--render-only`` rebuilds the report from it),
    two PNG plots and the training logs. docs/benchmarks.md is a copy of one full run.

``readme-table``
    Writes the deterministic table of deploy-form parameters and MACs per LR pixel for every
    preset and scale into README.md, between ``<!-- preset-table:start -->`` and
    ``<!-- preset-table:end -->``; with ``--check`` it only verifies that the table there is
    current (exit 1 if not).

MACs are counted over every convolution (output elements x in_channels/groups x kH x kW);
PixelShuffle, ReLU, additions and concatenations are counted as free.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

import aether_train
from aether_arch import (
    ONNX_INPUT_NAME,
    PRESET_FACTORIES,
    AetherNet,
    atomic_write,
    calibrate_int8,
    load_model,
    onnx_model_proto,
    prepare_qat,
    save_checkpoint,
)
from aether_data import (
    ImageFolderError,
    InputError,
    OneLineErrorParser,
    bicubic_upscale,
    evaluation_pair,
    image_files,
    list_images,
    markdown_table,
    psnr,
    read_image,
    to_image,
    to_tensor,
    whole_number,
    write_image,
)
from aether_release import fp16_onnx

INT8_SPEEDUP_TARGET = 2.0
FUSION_SPEEDUP_TARGET = 1.5

WARMUP_ROUNDS = 2
# Slow presets get fewer timed rounds (see time_interleaved), but never fewer than this.
MIN_ROUNDS = 3

CALIBRATION_INPUTS = 8
CALIBRATION_SIZE = 64

README_TABLE_START = "<!-- preset-table:start -->"
README_TABLE_END = "<!-- preset-table:end -->"
README_TABLE_SCALES = (1, 2, 3, 4)
DEFAULT_README = Path(__file__).resolve().with_name("README.md")


# ---------------------------------------------------------------------------------------
# Size and compute
# ---------------------------------------------------------------------------------------


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_lr_pixel(model: nn.Module, in_channels: int = 3, size: int = 8) -> float:
    """Multiply-accumulates of every nn.Conv2d in ``model`` per input (LR) pixel, counted
    with forward hooks on one 1 x in_channels x size x size input."""
    total_macs = 0

    def count(conv: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total_macs
        kernel_h, kernel_w = conv.kernel_size
        total_macs += output.numel() * (conv.in_channels // conv.groups) * kernel_h * kernel_w

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total_macs / (size * size)


def deploy_form_shapes(preset: str, scale: int) -> AetherNet:
    """The preset's deploy (fused) form on the meta device: every shape, no weight values.
    Enough to count parameters and MACs, and instant even for the large preset."""
    with torch.device("meta"):
        return PRESET_FACTORIES[preset](scale=scale, fused=True).eval()


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Latencies of one measured runner, in milliseconds."""

    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    def __str__(self) -> str:
        return f"{self.median:.1f} ({min(self.samples_ms):.1f}-{max(self.samples_ms):.1f})"


def time_interleaved(
    runners: Mapping[str, Callable[[], object]],
    rounds: int,
    budget_s: float,
    *,
    warmup_rounds: int = WARMUP_ROUNDS,
    min_rounds: int = MIN_ROUNDS,
) -> dict[str, Timing]:
    """Time every runner once per round, alternating between them, so that drifts of the
    machine's speed (other load, clocks) hit all of them alike and their ratio stays fair.

    ``warmup_rounds`` untimed rounds come first. If ``rounds`` rounds would take longer than
    ``budget_s`` (judged from the last warm-up round), fewer are run, but at least
    ``min_rounds`` (or ``rounds`` if that is smaller)."""
    round_s = 0.0
    for _ in range(warmup_rounds):
        start = time.perf_counter()
        for run in runners.values():
            run()
        round_s = time.perf_counter() - start
    affordable = int(budget_s / round_s) if round_s > 0 else rounds
    rounds = min(rounds, max(affordable, min_rounds))

    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by the whole machine and by this process, at ``wall_s``."""

    wall_s: float
    machine_s: float
    own_s: float

    @classmethod
    def now(cls) -> "CpuSnapshot":
        try:  # Linux; elsewhere the share of other processes is reported as nan
            with open("/proc/stat", encoding="ascii") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:9]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
            # steal: time the hypervisor gave our virtual CPUs to someone else
            machine_s = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, AttributeError):
            machine_s = float("nan")
        own = os.times()
        return cls(time.perf_counter(), machine_s, own.user + own.system)

    def others_share_since(self, earlier: "CpuSnapshot") -> float:
        """Fraction of all CPUs' time that other processes took between the snapshots:
        timings taken while it is high are slower and noisier than the machine can do."""
        others_s = (self.machine_s - earlier.machine_s) - (self.own_s - earlier.own_s)
        return max(others_s, 0.0) / ((self.wall_s - earlier.wall_s) * (os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------


def ort_session(model: str | bytes, threads: int) -> ort.InferenceSession:
    """A CPU session for an ONNX file path or serialized model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # FP32 and INT8 sessions run alternately; a session's idle threads would otherwise
    # busy-wait after each run and steal the cores the other session is timed on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def session_runner(session: ort.InferenceSession, image: np.ndarray) -> Callable[[], object]:
    """One run of ``session`` on ``image``, cast to the session's input type (an FP16 model
    takes float16 input, as the release's model_fp16.onnx does)."""
    if session.get_inputs()[0].type == "tensor(float16)":
        image = image.astype(np.float16)
    return functools.partial(session.run, None, {ONNX_INPUT_NAME: image})


def time_sessions(
    sessions: Mapping[str, ort.InferenceSession], image: np.ndarray, repeats: int, budget_s: float
) -> dict[str, Timing]:
    """Latency of each session on ``image``, timed interleaved (see time_interleaved)."""
    return time_interleaved(
        {name: session_runner(session, image) for name, session in sessions.items()},
        repeats,
        budget_s,
    )


def quantize_int8(
    fp32_path: str,
    int8_path: str,
    workdir: str,
    calibration_inputs: Sequence[np.ndarray] | None = None,
) -> None:
    """Static INT8 quantization (QDQ, per-channel weights, uint8 activations) calibrated on
    ``calibration_inputs`` (NCHW float32), by default on random images (enough for timing:
    speed does not depend on the ranges). The graph is pre-processed first, as the quantizer
    recommends (without it the quantizer logs a warning on every call)."""
    if calibration_inputs is None:
        input_shape = onnx.load(fp32_path).graph.input[0].type.tensor_type.shape
        channels = input_shape.dim[1].dim_value
        rng = np.random.default_rng(0)
        shape = (1, channels, CALIBRATION_SIZE, CALIBRATION_SIZE)
        calibration_inputs = [rng.random(shape, dtype=np.float32) for _ in range(CALIBRATION_INPUTS)]

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{ONNX_INPUT_NAME: x} for x in calibration_inputs])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    fp32_path, int8_path, workdir = (os.path.abspath(p) for p in (fp32_path, int8_path, workdir))
    preprocessed_path = os.path.join(workdir, "preprocessed.onnx")
    try:
        # When ORT's symbolic shape inference gives up, it dumps its partial model into the
        # working directory: let that be the temporary one.
        with contextlib.chdir(workdir):
            quant_pre_process(fp32_path, preprocessed_path)
    except Exception:  # noqa: BLE001 - ORT's symbolic shape inference raises a bare Exception
        # It gives up on some graphs (Compact's nearest-neighbour Resize); ONNX's own shape
        # inference, which the pre-processing also runs, is enough for those.
        quant_pre_process(fp32_path, preprocessed_path, skip_symbolic_shape=True)
    quantize_static(
        preprocessed_path,
        int8_path,
        Inputs(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


class ExportableModule(nn.Module):
    """Any image-to-image network, with the two attributes that aether_arch.onnx_model_proto
    reads from an AetherNet (``qat``, ``in_channels``), so that every model in a comparison
    goes through the same exporter, opset and graph clean-up."""

    qat = False

    def __init__(self, model: nn.Module, in_channels: int = 3) -> None:
        super().__init__()
        self.model = model
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the exporter's dynamic shapes name x
        return self.model(x)


def onnx_bytes(model: nn.Module, in_channels: int = 3) -> bytes:
    """``model`` as a serialized ONNX model (AetherNet's exporter, opset 17, dynamic H/W)."""
    exportable = model if isinstance(model, AetherNet) else ExportableModule(model, in_channels)
    return onnx_model_proto(exportable, opset=17).SerializeToString()


def static_int8_bytes(
    fp32_model: bytes, calibration_inputs: Sequence[np.ndarray] | None = None
) -> bytes:
    """quantize_int8 for serialized models."""
    with tempfile.TemporaryDirectory(prefix="aether_bench_") as workdir:
        fp32_path = os.path.join(workdir, "fp32.onnx")
        int8_path = os.path.join(workdir, "int8.onnx")
        Path(fp32_path).write_bytes(fp32_model)
        quantize_int8(fp32_path, int8_path, workdir, calibration_inputs)
        return Path(int8_path).read_bytes()


def smooth_random_batches(count: int = 4, size: int = 64) -> list[torch.Tensor]:
    """Image-like calibration batches (smooth random fields) for models whose speed, not
    quality, is measured."""
    rng = torch.Generator().manual_seed(0)
    return [
        torch.nn.functional.interpolate(
            torch.rand(1, 3, size // 4, size // 4, generator=rng), size=(size, size), mode="bilinear"
        )
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# arch: latency of every preset
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetBenchmark:
    """What ``arch`` measured for one preset."""

    preset: str
    params: int
    macs_per_lr_pixel: float
    ort_fp32: Timing
    ort_int8: Timing
    torch_train_form: Timing
    torch_fused: Timing
    others_cpu_share: float

    @property
    def int8_speedup(self) -> float:
        return self.ort_fp32.median / self.ort_int8.median

    @property
    def fusion_speedup(self) -> float:
        return self.torch_train_form.median / self.torch_fused.median


def benchmark_preset(preset: str, args: argparse.Namespace) -> PresetBenchmark:
    start = CpuSnapshot.now()
    train_form = PRESET_FACTORIES[preset](scale=args.scale).eval()
    fused = copy.deepcopy(train_form).fuse()
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)

    fp32_model = onnx_bytes(fused)
    sessions = {
        "fp32": ort_session(fp32_model, args.threads),
        "int8": ort_session(static_int8_bytes(fp32_model), args.threads),
    }
    ort_timings = time_sessions(sessions, image, args.repeats, args.budget_s)
    del sessions  # free their memory before torch runs

    x = torch.from_numpy(image)
    with torch.inference_mode():
        torch_timings = time_interleaved(
            {"train_form": lambda: train_form(x), "fused": lambda: fused(x)},
            args.torch_repeats,
            args.budget_s,
        )

    return PresetBenchmark(
        preset=preset,
        params=parameter_count(fused),
        macs_per_lr_pixel=macs_per_lr_pixel(fused),
        ort_fp32=ort_timings["fp32"],
        ort_int8=ort_timings["int8"],
        torch_train_form=torch_timings["train_form"],
        torch_fused=torch_timings["fused"],
        others_cpu_share=CpuSnapshot.now().others_share_since(start),
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_line(threads: int) -> str:
    return (
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"CPU: {cpu_model()}; {threads} threads"
    )


def speedup_cell(ratio: float, target: float) -> str:
    cell = f"{ratio:.2f}x"
    return cell if ratio >= target else f"{cell} **MISSED** (target {target:.1f}x)"


def arch_markdown(results: Sequence[PresetBenchmark], args: argparse.Namespace) -> str:
    header = (
        "preset",
        "params (M)",
        "MACs/LR px (K)",
        "ORT FP32 ms",
        "ORT INT8 ms",
        "INT8 speed-up",
        "torch train-form ms",
        "torch fused ms",
        "fusion speed-up",
        "CPU used by others",
    )
    rows = [
        (
            f"`{r.preset}`",
            f"{r.params / 1e6:.3f}",
            f"{r.macs_per_lr_pixel / 1e3:.1f}",
            str(r.ort_fp32),
            str(r.ort_int8),
            speedup_cell(r.int8_speedup, INT8_SPEEDUP_TARGET),
            str(r.torch_train_form),
            str(r.torch_fused),
            speedup_cell(r.fusion_speedup, FUSION_SPEEDUP_TARGET),
            f"{r.others_cpu_share:.0%}",
        )
        for r in results
    ]
    runs = "; ".join(
        f"{r.preset} {len(r.ort_fp32.samples_ms)} ORT / {len(r.torch_fused.samples_ms)} torch"
        for r in results
    )
    missed = sum(
        (r.int8_speedup < INT8_SPEEDUP_TARGET) + (r.fusion_speedup < FUSION_SPEEDUP_TARGET)
        for r in results
    )
    return "\n".join(
        [
            "## AetherNet CPU benchmark",
            "",
            f"{machine_line(args.threads)}; "
            f"input 1×3×{args.size}×{args.size}, scale ×{args.scale}",
            "",
            markdown_table(header, rows),
            "",
            "Params and MACs: deploy (fused) form; MACs per low-resolution input pixel. "
            "Latency: median (min-max) in ms; FP32 and INT8 (and training and fused form) "
            f"runs alternate, after {WARMUP_ROUNDS} warm-up runs each. "
            f"Timed runs per preset: {runs}. CPU used by others: share of all CPUs' time "
            "that other processes took while the preset was measured; where it is high the "
            "latencies are inflated and noisy.",
            "",
            f"Targets: INT8 speed-up (ORT FP32 / INT8) >= {INT8_SPEEDUP_TARGET:.1f}x, "
            f"fusion speed-up (torch training form / fused form) >= "
            f"{FUSION_SPEEDUP_TARGET:.1f}x; missed: {missed} of {2 * len(results)}.",
        ]
    )


def run_arch(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    results = []
    for preset in args.presets:
        start = time.perf_counter()
        results.append(benchmark_preset(preset, args))
        seconds = time.perf_counter() - start
        print(f"[{preset}] measured in {seconds:.0f} s", file=sys.stderr, flush=True)
    report = arch_markdown(results, args)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n", encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------
# QAT: quality of FP32 vs QAT-INT8 vs PTQ-INT8, speed of the real QDQ export, step overhead
# ---------------------------------------------------------------------------------------


def onnx_upscaler(model: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run a serialized ONNX model (FP32, or QDQ INT8) in ONNX Runtime on NCHW tensors."""
    session = ort_session(model, threads)
    return lambda lr: torch.from_numpy(session.run(None, {ONNX_INPUT_NAME: lr.numpy()})[0])


def psnr_per_image(
    upscale: Callable[[torch.Tensor], torch.Tensor],
    pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    scale: int,
) -> list[float]:
    """PSNR (RGB, 8-bit, border = scale) of ``upscale`` on every (name, LR, HR) pair."""
    with torch.inference_mode():
        return [psnr(to_image(upscale(lr)), to_image(hr), border=scale) for _, lr, hr in pairs]


def held_out_pairs(folder: str, scale: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, LR, HR) for every image: HR cropped to a multiple of scale, LR by the project's
    bicubic degradation (the one training and the release quality check use)."""
    pairs = []
    for path in list_images(folder):
        hr, lr, _ = evaluation_pair(read_image(path)[0], scale)
        pairs.append((path.name, lr, to_tensor(hr)))
    return pairs


def qat_quality(args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    float_model = load_model(args.float_checkpoint)
    qat_model = load_model(args.qat_checkpoint)
    if not qat_model.qat:
        raise SystemExit(f"error: {args.qat_checkpoint} is not a QAT checkpoint")
    scale = float_model.scale
    calibration = [lr for _, lr, _ in held_out_pairs(args.calibration_dir, scale)]
    ptq_model = calibrate_int8(copy.deepcopy(float_model), calibration)
    upscalers = {
        "bicubic": lambda lr: bicubic_upscale(lr, scale),
        "FP32 (ORT)": onnx_upscaler(onnx_bytes(copy.deepcopy(float_model).fuse()), args.threads),
        "QAT-INT8 (ORT)": onnx_upscaler(onnx_bytes(qat_model), args.threads),
        "PTQ-INT8 (ORT)": onnx_upscaler(onnx_bytes(ptq_model), args.threads),
    }
    pairs = held_out_pairs(args.val_dir, scale)
    values = {name: psnr_per_image(upscale, pairs, scale) for name, upscale in upscalers.items()}
    rows = [
        [image_name, *(f"{values[name][i]:.3f}" for name in upscalers)]
        for i, (image_name, _, _) in enumerate(pairs)
    ]
    mean = {name: statistics.fmean(per_image) for name, per_image in values.items()}
    rows.append(["**mean**", *(f"**{v:.3f}**" for v in mean.values())])
    gap = mean["FP32 (ORT)"] - mean["QAT-INT8 (ORT)"]
    verdict = (
        f"QAT-INT8 is {gap:+.3f} dB below FP32 (target <= 0.15 dB, aim <= 0.05 dB: "
        f"{'met' if gap <= 0.15 else 'MISSED'}); PTQ-INT8 is "
        f"{mean['FP32 (ORT)'] - mean['PTQ-INT8 (ORT)']:+.3f} dB below FP32 "
        f"(QAT better than PTQ: {'yes' if mean['QAT-INT8 (ORT)'] > mean['PTQ-INT8 (ORT)'] else 'NO'})."
    )
    table = markdown_table(["image", *(f"{n} dB" for n in upscalers)], rows)
    return f"PSNR (RGB, 8-bit, border {scale}) on {args.val_dir}, x{scale}:\n\n{table}\n\n{verdict}", mean


def qat_export_speed(args: argparse.Namespace) -> str:
    """FP32 ONNX vs the real QAT Q/DQ export of every preset (calibrated on smooth random
    images: speed does not depend on the weights' values)."""
    calibration = smooth_random_batches()
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    rows = []
    for preset in args.presets:
        float_model = PRESET_FACTORIES[preset](scale=args.scale).eval()
        int8_model = calibrate_int8(copy.deepcopy(float_model), calibration)
        sessions = {
            name: ort_session(onnx_bytes(model), args.threads)
            for name, model in (("fp32", float_model.fuse()), ("int8", int8_model))
        }
        timings = time_sessions(sessions, x, args.repeats, budget_s=60.0)
        ratio = timings["fp32"].median / timings["int8"].median
        rows.append([preset, str(timings["fp32"]), str(timings["int8"]), speedup_cell(ratio, INT8_SPEEDUP_TARGET)])
    table = markdown_table(["preset", "ORT FP32 ms", "ORT QAT-INT8 (QDQ) ms", "INT8 speed-up"], rows)
    return f"ONNX Runtime CPU, {args.threads} threads, 1x3x{args.size}x{args.size}, x{args.scale}, median (min-max):\n\n{table}"


def qat_step_overhead(args: argparse.Namespace) -> str:
    """Seconds per training step, float training form vs QAT form, same batch."""
    torch.manual_seed(0)
    float_model = PRESET_FACTORIES["aether_tiny"](scale=2).train()
    qat_model = prepare_qat(copy.deepcopy(float_model)).train()
    lr_batch = torch.rand(16, 3, 48, 48)
    hr_batch = torch.rand(16, 3, 96, 96)
    qat_model(lr_batch)  # sets the activation ranges (first-batch initialisation)

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss = (model(lr_batch) - hr_batch).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    runners = {
        name: functools.partial(step, model, torch.optim.AdamW(model.parameters(), 1e-4))
        for name, model in (("float", float_model), ("qat", qat_model))
    }
    timings = time_interleaved(runners, rounds=10, budget_s=120.0)
    ratio = timings["qat"].median / timings["float"].median
    return (
        f"aether_tiny x2, batch 16 x 48x48 LR patches, CPU, {torch.get_num_threads()} threads: "
        f"float training form {timings['float']} ms/step, QAT {timings['qat']} ms/step "
        f"-> QAT costs {ratio:.2f}x a float step."
    )


def run_qat(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    sections = [
        f"# QAT benchmark\n\n{machine_line(args.threads)}",
        "## Quality: FP32 vs QAT-INT8 vs PTQ-INT8\n\n" + qat_quality(args)[0],
        "## Speed: FP32 ONNX vs QAT Q/DQ INT8 ONNX\n\n" + qat_export_speed(args),
        "## QAT training overhead\n\n" + qat_step_overhead(args),
    ]
    report = "\n\n".join(sections) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


# ---------------------------------------------------------------------------------------
# compare: AetherNet against the networks users would pick instead
# ---------------------------------------------------------------------------------------

# Targets of the comparison: reported (MISSED where missed), never asserted by tests.
INT8_SPEEDUP_AIM = 3.0
RRDB_SPEEDUP_TARGET = 50.0

ORT_FP32, ORT_FP16, ORT_INT8 = "ORT FP32", "ORT FP16", "ORT INT8"
TORCH_TRAINING_FORM, TORCH_FUSED, TORCH_INT8 = "torch training form", "torch fused", "torch INT8 .pth"
HD_HEIGHT, HD_WIDTH = 720, 1280
HD_LABEL = "1280×720"
HD_TILE, HD_TILE_OVERLAP = 256, 16
# PyTorch rows use a smaller input: the INT8 .pth path is a bit-exact reference about 10x
# slower than FP32 PyTorch (about 2 minutes per 256x256 run for aether_large here).
TORCH_SIZE = 128
ROOFLINE_CHANNELS = (64, 128, 256)
ROOFLINE_SIZE = 128
ROOFLINE_LAYERS = 4
QAT_SHARE = 0.2  # aether_tiny's last fifth of the training budget is QAT
AETHER_INT8 = "QAT Q/DQ export"
PEER_INT8 = "ORT static PTQ"
RESULTS_JSON = "benchmarks_results.json"
REPORT_NAME = "benchmarks.md"
SPEED_QUALITY_PNG = "benchmarks_speed_quality.png"
LATENCY_MACS_PNG = "benchmarks_latency_vs_macs.png"


def measurement(fmt: str, input_label: str) -> str:
    return f"{fmt} @ {input_label}"


def square_label(size: int) -> str:
    return f"{size}×{size}"


# Peers: Spandrel's architecture code with published hyperparameters ---------------------


def _span(feature_channels: int) -> Callable[[int], nn.Module]:
    def build(scale: int) -> nn.Module:
        from spandrel.architectures.SPAN import SPAN

        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=feature_channels, upscale=scale)

    return build


def _compact(num_feat: int, num_conv: int) -> Callable[[int], nn.Module]:
    def build(scale: int) -> nn.Module:
        from spandrel.architectures.Compact import Compact

        return Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=scale)

    return build


def _plksr_tiny(scale: int) -> nn.Module:
    from spandrel.architectures.PLKSR import PLKSR

    return PLKSR(
        dim=64, n_blocks=12, upscaling_factor=scale, ccm_type="DCCM", kernel_size=13,
        split_ratio=0.25, lk_type="PLK", use_ea=False,
    )


def _rrdb(scale: int) -> nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=scale)


@dataclass(frozen=True)
class Peer:
    build: Callable[[int], nn.Module]  # scale -> training form, from Spandrel's code
    hyperparameters: str  # what they are and where they are published
    tile_hd: bool = False  # 1280x720 runs in tiles (memory)


RRDB = "RRDB (ESRGAN)"
SPAN_BASELINE = "SPAN-28"
PEERS: dict[str, Peer] = {
    "SPAN-48": Peer(_span(48), "feature_channels 48: the SPAN paper's model (NTIRE 2024 ESR winner), Spandrel's default"),
    SPAN_BASELINE: Peer(_span(28), "feature_channels 28: the NTIRE Efficient SR challenge baseline (published: 0.151 M params at ×4)"),
    "Compact": Peer(_compact(64, 16), "num_feat 64, num_conv 16: Real-ESRGAN's SRVGGNetCompact defaults (Spandrel's Compact)"),
    "UltraCompact": Peer(_compact(64, 8), "num_feat 64, num_conv 8: traiNNer-redux `ultracompact` (archs/srvgg_arch.py)"),
    "SuperUltraCompact": Peer(_compact(24, 8), "num_feat 24, num_conv 8: traiNNer-redux `superultracompact`"),
    "PLKSR-tiny": Peer(_plksr_tiny, "dim 64, 12 blocks, DCCM, kernel 13, split 0.25, no EA: traiNNer-redux `plksr_tiny` (archs/plksr_arch.py; neosr's is the same)"),
    RRDB: Peer(
        _rrdb,
        "64 filters, 23 RRDB blocks: ESRGAN (Wang et al. 2018), Spandrel's defaults. 1280×720 runs in tiles: "
        "its upsampling convs work on 64-channel maps at output resolution (3.8 GB each for a ×4 frame)",
        tile_hd=True,
    ),
}


def peer_deploy_form(model: nn.Module) -> nn.Module:
    """A peer as it is deployed: a copy in eval mode. SPAN's Conv3XC layers train three
    branches and, in eval mode, re-fuse them into ``eval_conv`` on every forward; deployed,
    each is that fused 3x3 conv (and its LeakyReLU), as SPAN's own release runs it. The other
    peers deploy as they train."""
    from spandrel.architectures.SPAN.__arch.span import Conv3XC

    def fold(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, Conv3XC):
                child.update_params()
                conv = child.eval_conv
                setattr(module, name, nn.Sequential(conv, nn.LeakyReLU(0.05)) if child.has_relu else conv)
            else:
                fold(child)

    deployed = copy.deepcopy(model).eval()
    fold(deployed)
    return deployed


# Speed ------------------------------------------------------------------------------------


@dataclass
class SpeedRow:
    """Everything measured for one model at one scale."""

    model: str
    family: str  # "AetherNet" or "peer"
    scale: int
    params: int  # deploy form
    macs_per_lr_pixel: float  # deploy form
    int8_method: str
    timings: dict[str, Timing] = field(default_factory=dict)  # by measurement()
    left_out: dict[str, str] = field(default_factory=dict)  # measurement -> why
    lr_pixels: dict[str, int] = field(default_factory=dict)  # input label -> LR pixels per run
    others_cpu_share: float = float("nan")

    def median(self, fmt: str, input_label: str) -> float | None:
        timing = self.timings.get(measurement(fmt, input_label))
        return None if timing is None else timing.median

    def fastest(self, input_label: str) -> tuple[str, float] | None:
        """(format, median ms) of the fastest ONNX Runtime format at ``input_label``."""
        medians = [(self.median(f, input_label), f) for f in (ORT_FP32, ORT_FP16, ORT_INT8)]
        measured = [(ms, f) for ms, f in medians if ms is not None]
        return None if not measured else min(measured)[::-1]


def int8_pth_model(int8_model: AetherNet) -> AetherNet:
    """The model_int8.pth path: int8 weights saved, then rebuilt by load_model()."""
    with tempfile.TemporaryDirectory(prefix="aether_bench_") as workdir:
        path = os.path.join(workdir, "model_int8.pth")
        save_checkpoint(int8_model, path, int8_weights=True)
        return load_model(path).eval()


def aether_formats(
    preset: str, scale: int, with_torch: bool
) -> tuple[SpeedRow, dict[str, bytes], dict[str, nn.Module]]:
    training_form = PRESET_FACTORIES[preset](scale=scale).eval()
    fused = copy.deepcopy(training_form).fuse()
    int8_model = calibrate_int8(copy.deepcopy(training_form), smooth_random_batches())
    fp32_proto = onnx_model_proto(fused)
    ort_models = {
        ORT_FP32: fp32_proto.SerializeToString(),
        ORT_FP16: fp16_onnx(fp32_proto).SerializeToString(),
        ORT_INT8: onnx_bytes(int8_model),
    }
    torch_models = (
        {TORCH_TRAINING_FORM: training_form, TORCH_FUSED: fused, TORCH_INT8: int8_pth_model(int8_model)}
        if with_torch
        else {}
    )
    row = SpeedRow(preset, "AetherNet", scale, parameter_count(fused), macs_per_lr_pixel(fused), AETHER_INT8)
    return row, ort_models, torch_models


def peer_formats(name: str, scale: int) -> tuple[SpeedRow, dict[str, bytes], dict[str, nn.Module]]:
    deployed = peer_deploy_form(PEERS[name].build(scale))
    fp32_model = onnx_bytes(deployed)
    ort_models = {ORT_FP32: fp32_model, ORT_INT8: static_int8_bytes(fp32_model)}
    row = SpeedRow(name, "peer", scale, parameter_count(deployed), macs_per_lr_pixel(deployed), PEER_INT8)
    return row, ort_models, {}


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of equal tiles covering ``length`` with at least ``overlap`` pixels
    shared by neighbours; the last tile is moved back to end at the edge, so all tiles have
    one shape."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def hd_inputs(tiled: bool) -> list[np.ndarray]:
    frame = np.random.default_rng(2).random((1, 3, HD_HEIGHT, HD_WIDTH), dtype=np.float32)
    if not tiled:
        return [frame]
    return [
        np.ascontiguousarray(frame[:, :, top : top + HD_TILE, left : left + HD_TILE])
        for top in tile_origins(HD_HEIGHT, HD_TILE, HD_TILE_OVERLAP)
        for left in tile_origins(HD_WIDTH, HD_TILE, HD_TILE_OVERLAP)
    ]


def measure_hd(row: SpeedRow, sessions: Mapping[str, ort.InferenceSession], tiled: bool, args: argparse.Namespace) -> None:
    """FP32 and INT8 on a 1280x720 frame (tiles not stitched); a measurement whose single run
    the 256x256 median predicts to exceed --max-run-s is left out, with that prediction."""
    inputs = hd_inputs(tiled)
    pixels = sum(x.shape[2] * x.shape[3] for x in inputs)
    row.lr_pixels[HD_LABEL] = pixels
    runners = {}
    for fmt in (ORT_FP32, ORT_INT8):
        predicted_s = row.median(fmt, square_label(args.size)) / 1e3 * pixels / args.size**2
        if predicted_s > args.max_run_s:
            row.left_out[measurement(fmt, HD_LABEL)] = f"left out: predicted {predicted_s:.0f} s per run"
            continue
        tile_runners = [session_runner(sessions[fmt], x) for x in inputs]
        runners[fmt] = lambda runs=tile_runners: [run() for run in runs]
    if runners:
        timings = time_interleaved(runners, args.hd_repeats, args.budget_s, warmup_rounds=1, min_rounds=1)
        row.timings.update({measurement(fmt, HD_LABEL): t for fmt, t in timings.items()})


def measure_torch(row: SpeedRow, models: Mapping[str, nn.Module], int8_session: ort.InferenceSession, args: argparse.Namespace) -> None:
    """PyTorch training form, fused form and INT8 .pth path, with ORT INT8 on the same input."""
    image = np.random.default_rng(3).random((1, 3, TORCH_SIZE, TORCH_SIZE), dtype=np.float32)
    runners = {fmt: functools.partial(model, torch.from_numpy(image)) for fmt, model in models.items()}
    runners[ORT_INT8] = session_runner(int8_session, image)
    with torch.inference_mode():  # at least 2 rounds: one INT8 .pth run of aether_large takes ~40 s
        timings = time_interleaved(runners, args.repeats, args.budget_s, warmup_rounds=1, min_rounds=2)
    label = square_label(TORCH_SIZE)
    row.lr_pixels[label] = TORCH_SIZE**2
    row.timings.update({measurement(fmt, label): t for fmt, t in timings.items()})


def measure_speed(name: str, scale: int, args: argparse.Namespace) -> tuple[SpeedRow, bytes]:
    """The model's row, and its INT8 ONNX model for the head-to-head group."""
    start = CpuSnapshot.now()
    with_torch = name in PRESET_FACTORIES and scale == args.hd_scale and not args.skip_torch
    if name in PRESET_FACTORIES:
        row, ort_models, torch_models = aether_formats(name, scale, with_torch)
    else:
        row, ort_models, torch_models = peer_formats(name, scale)
    sessions = {fmt: ort_session(model, args.threads) for fmt, model in ort_models.items()}
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    timings = time_interleaved(
        {fmt: session_runner(session, image) for fmt, session in sessions.items()},
        args.repeats,
        args.budget_s,
        warmup_rounds=1,
    )
    label = square_label(args.size)
    row.lr_pixels[label] = args.size**2
    row.timings.update({measurement(fmt, label): t for fmt, t in timings.items()})
    if scale == args.hd_scale and not args.skip_hd:
        measure_hd(row, sessions, name in PEERS and PEERS[name].tile_hd, args)
    if torch_models:
        measure_torch(row, torch_models, sessions[ORT_INT8], args)
    row.others_cpu_share = CpuSnapshot.now().others_share_since(start)
    return row, ort_models[ORT_INT8]


def measure_head_to_head(int8_models: Mapping[str, bytes], args: argparse.Namespace) -> dict[str, Timing]:
    """Every model's INT8 ONNX in one interleaved group: the per-model rows are measured
    minutes apart, under whatever load the machine had then; comparisons across models use
    this group instead."""
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    sessions = {name: ort_session(model, args.threads) for name, model in int8_models.items()}
    return time_interleaved(
        {name: session_runner(session, image) for name, session in sessions.items()},
        args.repeats,
        2 * args.budget_s,
        warmup_rounds=1,
    )


# Roofline ---------------------------------------------------------------------------------


@dataclass
class Roofline:
    """This machine's peak convolution throughput in ONNX Runtime, measured in passes spread
    over the run: other processes slow some passes down, and a peak must be the best the
    machine can do, so each conv stack keeps its fastest pass."""

    macs: dict[str, float]  # per conv stack ("FORMAT: description")
    timings: dict[str, Timing]  # per conv stack, its fastest pass
    others_cpu_shares: list[float]  # per pass

    def peak(self, fmt: str) -> float:
        """Best MACs per second of ``fmt``'s stacks (FP16 and PyTorch: the FP32 peak)."""
        fmt = ORT_INT8 if fmt == ORT_INT8 else ORT_FP32
        return max(self.macs[n] / (t.median / 1e3) for n, t in self.timings.items() if n.startswith(f"{fmt}:"))

    def merged(self, later: "Roofline") -> "Roofline":
        timings = {n: min(t, later.timings[n], key=lambda timing: timing.median) for n, t in self.timings.items()}
        return Roofline(self.macs, timings, self.others_cpu_shares + later.others_cpu_shares)


def measure_roofline(args: argparse.Namespace) -> Roofline:
    """Dense 3x3 conv stacks (the best case for both precisions' kernels), FP32 and static
    QDQ INT8, through the same exporter and quantizer as the models; the peak of each
    precision is the best MACs per second among the stacks."""
    start = CpuSnapshot.now()
    runners, macs = {}, {}
    for channels in ROOFLINE_CHANNELS:
        layers = [m for _ in range(ROOFLINE_LAYERS) for m in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())]
        stack = nn.Sequential(*layers).eval()
        image = np.random.default_rng(4).random((1, channels, ROOFLINE_SIZE, ROOFLINE_SIZE), dtype=np.float32)
        fp32_model = onnx_bytes(stack, in_channels=channels)
        for fmt, model in ((ORT_FP32, fp32_model), (ORT_INT8, static_int8_bytes(fp32_model))):
            name = f"{fmt}: {ROOFLINE_LAYERS} × conv 3×3 {channels}→{channels} ch on {square_label(ROOFLINE_SIZE)}"
            runners[name] = session_runner(ort_session(model, args.threads), image)
            macs[name] = macs_per_lr_pixel(stack, in_channels=channels) * ROOFLINE_SIZE**2
    timings = time_interleaved(runners, args.repeats, args.budget_s)
    return Roofline(macs, timings, [CpuSnapshot.now().others_share_since(start)])


def roofline_efficiency(macs_per_pixel: float, lr_pixels: int, median_ms: float, peak_macs_per_s: float) -> float:
    """The time the MACs would take at this machine's peak, divided by the measured time."""
    return macs_per_pixel * lr_pixels / peak_macs_per_s / (median_ms / 1e3)


# Quality at equal training budget ----------------------------------------------------------


@dataclass
class QualityRow:
    model: str
    params: int  # deploy form
    macs_per_lr_pixel: float
    train_s: float  # wall time of all training steps (incl. loading and saving)
    psnr_fp32: float  # ONNX Runtime, held-out images
    psnr_int8: float
    int8_method: str
    fp32_source: str  # which weights the FP32 figure is of
    int8_latency: Timing  # ORT INT8, 1x3xSxS


@dataclass
class QualityResult:
    scale: int
    steps: int
    training: str  # the shared aether_train.py options
    val_images: list[str]
    bicubic_psnr: float
    input_size: int
    rows: list[QualityRow]


def calibration_crops(folder: str, scale: int, lr_size: int = 96) -> list[np.ndarray]:
    """LR centre crops of the training images (the project's bicubic degradation): the
    real-image calibration set of the peers' static INT8."""
    crops = []
    for path in list_images(folder)[:CALIBRATION_INPUTS]:
        image = read_image(path)[0]
        side = min(*image.shape[:2], lr_size * scale)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        crops.append(evaluation_pair(image[top : top + side, left : left + side], scale)[1].numpy())
    return crops


def training_argv(name: str, args: argparse.Namespace, out_dir: Path) -> list[str]:
    """The same aether_train.py options for every model; AetherNet presets switch to QAT
    for the last QAT_SHARE of the same number of steps."""
    argv = [
        "--scale", str(args.quality_scale), "--train-dir", args.train_dir,
        "--steps", str(args.budget), "--lr-patch", str(args.lr_patch),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--threads", str(args.threads), "--seed", "0", "--val-every", "0", "--save-every", "0",
        "--log-every", str(max(1, args.budget // 10)), "--out-dir", str(out_dir),
    ]
    if name in PRESET_FACTORIES:
        argv += ["--preset", name, "--qat-after", str(qat_switch_step(args.budget))]
    return argv


def qat_switch_step(steps: int) -> int:
    return min(steps - 1, max(1, round(steps * (1 - QAT_SHARE))))


def run_trainer(argv: list[str], model_factory: aether_train.ModelFactory | None = None) -> aether_train.Trainer:
    args = aether_train.parse_args(argv)
    processes = aether_train.Processes(0, 1, torch.device("cpu"))
    trainer = aether_train.Trainer(args, argv, processes, model_factory)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def train_and_export(name: str, args: argparse.Namespace, run_dir: Path) -> tuple[nn.Module, bytes, bytes, str, float]:
    """Train ``name`` with aether_train.Trainer; (deploy-form model, FP32 ONNX, INT8 ONNX,
    which weights the FP32 figure is of, training wall seconds)."""
    argv = training_argv(name, args, run_dir)
    start = time.perf_counter()
    if name in PRESET_FACTORIES:
        switch = qat_switch_step(args.budget)
        float_model = run_trainer([*argv, "--stop-at", str(switch)]).ema.module.fuse()
        int8_model = run_trainer([*argv, "--resume", str(run_dir)]).ema.module
        seconds = time.perf_counter() - start
        source = f"float EMA at the QAT switch (step {switch})"
        return float_model, onnx_bytes(float_model), onnx_bytes(int8_model), source, seconds
    trained = run_trainer(argv, lambda options: PEERS[name].build(options.scale)).ema.module
    seconds = time.perf_counter() - start
    deployed = peer_deploy_form(trained)
    fp32_model = onnx_bytes(deployed)
    int8_model = static_int8_bytes(fp32_model, calibration_crops(args.train_dir, args.quality_scale))
    return deployed, fp32_model, int8_model, f"EMA after {args.budget} steps", seconds


def measure_quality(args: argparse.Namespace, out_dir: Path) -> QualityResult:
    scale = args.quality_scale
    pairs = held_out_pairs(args.val_dir, scale)
    bicubic = statistics.fmean(psnr_per_image(lambda lr: bicubic_upscale(lr, scale), pairs, scale))
    rows, int8_sessions = [], {}
    logs = out_dir / "train_logs"
    logs.mkdir(exist_ok=True)
    for name in args.quality_models:
        with tempfile.TemporaryDirectory(prefix="aether_bench_train_") as run_dir:
            model, fp32_model, int8_model, source, seconds = train_and_export(name, args, Path(run_dir))
            (logs / f"{name}.log").write_bytes((Path(run_dir) / "train.log").read_bytes())
        print(f"[compare] trained {name} in {seconds:.0f} s", file=sys.stderr, flush=True)
        int8_sessions[name] = ort_session(int8_model, args.threads)
        rows.append(
            QualityRow(
                model=name,
                params=parameter_count(model),
                macs_per_lr_pixel=macs_per_lr_pixel(model),
                train_s=seconds,
                psnr_fp32=statistics.fmean(psnr_per_image(onnx_upscaler(fp32_model, args.threads), pairs, scale)),
                psnr_int8=statistics.fmean(psnr_per_image(onnx_upscaler(int8_model, args.threads), pairs, scale)),
                int8_method=AETHER_INT8 if name in PRESET_FACTORIES else PEER_INT8,
                fp32_source=source,
                int8_latency=Timing(()),
            )
        )
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    latencies = time_sessions(int8_sessions, image, args.repeats, args.budget_s)
    for row in rows:
        row.int8_latency = latencies[row.model]
    training = " ".join(training_argv("peer", args, Path("RUN_DIR"))[:-2])
    return QualityResult(scale, args.budget, training, [name for name, _, _ in pairs], bicubic, args.size, rows)


# Results, targets, report --------------------------------------------------------------------


@dataclass
class CompareResults:
    meta: dict[str, Any]  # command, machine, versions, options, wall time
    roofline: Roofline | None = None
    speed: list[SpeedRow] = field(default_factory=list)
    quality: QualityResult | None = None
    # per scale ("2", "4"): every model's INT8 ONNX timed in one interleaved group, so that
    # comparisons across models see the same machine load
    head_to_head: dict[str, dict[str, Timing]] = field(default_factory=dict)

    def int8_head_to_head(self, model: str, scale: int) -> float | None:
        timing = self.head_to_head.get(str(scale), {}).get(model)
        return None if timing is None else timing.median

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CompareResults":
        data = json.loads(text)

        def timings(values: Mapping[str, Any]) -> dict[str, Timing]:
            return {name: Timing(tuple(t["samples_ms"])) for name, t in values.items()}

        roofline = data["roofline"] and Roofline(**{**data["roofline"], "timings": timings(data["roofline"]["timings"])})
        head_to_head = {scale: timings(values) for scale, values in data.get("head_to_head", {}).items()}
        quality = data["quality"] and QualityResult(
            **{
                **data["quality"],
                "rows": [
                    QualityRow(**{**row, "int8_latency": Timing(tuple(row["int8_latency"]["samples_ms"]))})
                    for row in data["quality"]["rows"]
                ],
            }
        )
        speed = [SpeedRow(**{**row, "timings": timings(row["timings"])}) for row in data["speed"]]
        return cls(data["meta"], roofline, speed, quality, head_to_head)


@dataclass(frozen=True)
class Finding:
    met: bool | None  # None: not measured in this run
    text: str

    def __str__(self) -> str:
        verdict = {True: "met", False: "**MISSED**", None: "not measured"}[self.met]
        return f"{verdict}: {self.text}"


def find_row(rows: Sequence[SpeedRow], model: str, scale: int) -> SpeedRow | None:
    return next((r for r in rows if r.model == model and r.scale == scale), None)


def fastest_for_comparison(results: CompareResults, row: SpeedRow, size: int) -> tuple[str, float] | None:
    """(format, median ms) of ``row``'s fastest format; when that is INT8, its time in the
    head-to-head group (timed interleaved with the other models)."""
    fastest = row.fastest(square_label(size))
    interleaved = results.int8_head_to_head(row.model, row.scale)
    if fastest is not None and fastest[0] == ORT_INT8 and interleaved is not None:
        return ORT_INT8, interleaved
    return fastest


def int8_fastest_findings(results: CompareResults, size: int) -> list[Finding]:
    """INT8 ONNX is the fastest format of every preset and >= 2x faster than FP32 ONNX."""
    findings = []
    square = square_label(size)
    for row in (r for r in results.speed if r.family == "AetherNet"):
        fastest = row.fastest(square)
        fp32, int8 = row.median(ORT_FP32, square), row.median(ORT_INT8, square)
        if fastest is None or fp32 is None or int8 is None:
            continue
        ratio = fp32 / int8
        others = [f"{f} {row.median(f, square):.1f} ms" for f in (ORT_FP32, ORT_FP16) if row.median(f, square)]
        text = (
            f"`{row.model}` ×{row.scale} at {square}: INT8 {int8:.1f} ms vs {', '.join(others)}: "
            f"{ratio:.2f}× faster than FP32 (target {INT8_SPEEDUP_TARGET:.0f}×, aim {INT8_SPEEDUP_AIM:.0f}×: "
            f"{'reached' if ratio >= INT8_SPEEDUP_AIM else 'not reached'})"
        )
        met = fastest[0] == ORT_INT8 and ratio >= INT8_SPEEDUP_TARGET
        for label in (HD_LABEL, square_label(TORCH_SIZE)):
            int8_other = row.median(ORT_INT8, label)
            slower = [(f, ms) for f in (ORT_FP32, TORCH_TRAINING_FORM, TORCH_FUSED, TORCH_INT8) if (ms := row.median(f, label))]
            if int8_other is not None and slower:
                text += f"; at {label}: INT8 {int8_other:.1f} ms vs " + ", ".join(f"{f} {ms:.1f} ms" for f, ms in slower)
                met = met and all(int8_other < ms for _, ms in slower)
        if fastest[0] != ORT_INT8:
            text += f"; the fastest format is {fastest[0]}"
        findings.append(Finding(met, text))
    return findings


def span_findings(results: CompareResults, size: int) -> list[Finding]:
    """aether_tiny INT8 is faster than SPAN-28 INT8, with equal or better PSNR at equal budget."""
    findings = []
    square = square_label(size)
    scales = sorted({r.scale for r in results.speed})
    for scale in scales:
        tiny, span = find_row(results.speed, "aether_tiny", scale), find_row(results.speed, SPAN_BASELINE, scale)
        if tiny is None or span is None:
            findings.append(Finding(None, f"speed ×{scale}: aether_tiny or {SPAN_BASELINE} not measured"))
            continue
        tiny_ms, span_ms = results.int8_head_to_head("aether_tiny", scale), results.int8_head_to_head(SPAN_BASELINE, scale)
        source = "timed interleaved"
        if tiny_ms is None or span_ms is None:
            tiny_ms, span_ms, source = tiny.median(ORT_INT8, square), span.median(ORT_INT8, square), "separate rows"
        findings.append(
            Finding(
                tiny_ms < span_ms,
                f"speed ×{scale} at {square} ({source}): aether_tiny INT8 {tiny_ms:.1f} ms, {SPAN_BASELINE} "
                f"INT8 {span_ms:.1f} ms (aether_tiny takes {tiny_ms / span_ms:.2f}× SPAN-28's time)",
            )
        )
    quality = {r.model: r for r in results.quality.rows} if results.quality else {}
    if "aether_tiny" in quality and SPAN_BASELINE in quality:
        tiny, span = quality["aether_tiny"], quality[SPAN_BASELINE]
        findings.append(
            Finding(
                tiny.psnr_int8 >= span.psnr_int8,
                f"quality ×{results.quality.scale} after {results.quality.steps} steps each: aether_tiny INT8 "
                f"{tiny.psnr_int8:.3f} dB, {SPAN_BASELINE} INT8 {span.psnr_int8:.3f} dB "
                f"({tiny.psnr_int8 - span.psnr_int8:+.3f} dB; FP32: {tiny.psnr_fp32:.3f} vs "
                f"{span.psnr_fp32:.3f} dB)",
            )
        )
    else:
        findings.append(Finding(None, f"quality: aether_tiny and {SPAN_BASELINE} were not both trained"))
    return findings


def rrdb_findings(results: CompareResults, size: int) -> list[Finding]:
    """Every preset in its fastest format is >= 50x faster than RRDB in its fastest format."""
    findings = []
    square = square_label(size)
    for row in (r for r in results.speed if r.family == "AetherNet"):
        rrdb = find_row(results.speed, RRDB, row.scale)
        if rrdb is None or rrdb.fastest(square) is None or row.fastest(square) is None:
            findings.append(Finding(None, f"`{row.model}` ×{row.scale}: {RRDB} not measured"))
            continue
        (fmt, ms), (rrdb_fmt, rrdb_ms) = fastest_for_comparison(results, row, size), fastest_for_comparison(results, rrdb, size)
        ratio = rrdb_ms / ms
        findings.append(
            Finding(
                ratio >= RRDB_SPEEDUP_TARGET,
                f"`{row.model}` ×{row.scale} at {square}: {fmt} {ms:.1f} ms vs RRDB {rrdb_fmt} "
                f"{rrdb_ms:.1f} ms: {ratio:.1f}×",
            )
        )
    return findings


def timing_cell(row: SpeedRow, fmt: str, input_label: str) -> str:
    key = measurement(fmt, input_label)
    if key in row.timings:
        return str(row.timings[key])
    return row.left_out.get(key, "—")


def efficiency_cell(row: SpeedRow, fmt: str, input_label: str, roofline: Roofline | None) -> str:
    median = row.median(fmt, input_label)
    if median is None or roofline is None:
        return "—"
    return f"{roofline_efficiency(row.macs_per_lr_pixel, row.lr_pixels[input_label], median, roofline.peak(fmt)):.0%}"


def ratio_cell(numerator: float | None, denominator: float | None, target: float | None) -> str:
    if numerator is None or denominator is None:
        return "—"
    ratio = numerator / denominator
    return speedup_cell(ratio, target) if target is not None else f"{ratio:.2f}x"


def speed_table(results: CompareResults, size: int) -> str:
    square = square_label(size)
    header = (
        "model", "scale", "params (M)", "MACs/LR px (K)", "ORT FP32 ms", "ORT FP16 ms",
        "ORT INT8 ms", "INT8 from", "INT8 speed-up", "roofline FP32", "roofline INT8",
        "fastest vs RRDB", "CPU used by others",
    )
    rows = []
    for row in results.speed:
        preset = row.family == "AetherNet"
        rrdb = find_row(results.speed, RRDB, row.scale)
        fastest = fastest_for_comparison(results, row, size)
        rrdb_fastest = rrdb and fastest_for_comparison(results, rrdb, size)
        rows.append(
            (
                f"`{row.model}`" if preset else row.model,
                f"×{row.scale}",
                f"{row.params / 1e6:.3f}",
                f"{row.macs_per_lr_pixel / 1e3:.1f}",
                timing_cell(row, ORT_FP32, square),
                timing_cell(row, ORT_FP16, square),
                timing_cell(row, ORT_INT8, square),
                row.int8_method,
                ratio_cell(row.median(ORT_FP32, square), row.median(ORT_INT8, square), INT8_SPEEDUP_TARGET if preset else None),
                efficiency_cell(row, ORT_FP32, square, results.roofline),
                efficiency_cell(row, ORT_INT8, square, results.roofline),
                ratio_cell(rrdb_fastest and rrdb_fastest[1], fastest and fastest[1], RRDB_SPEEDUP_TARGET if preset else None),
                f"{row.others_cpu_share:.0%}",
            )
        )
    return markdown_table(header, rows)


def head_to_head_table(results: CompareResults) -> str | None:
    if not results.head_to_head:
        return None
    scales = sorted(results.head_to_head, key=int)
    models = list(dict.fromkeys(name for scale in scales for name in results.head_to_head[scale]))
    header = ("model", *(f"ORT INT8 ms at ×{scale}" for scale in scales))
    rows = [
        (
            f"`{name}`" if name in PRESET_FACTORIES else name,
            *(str(results.head_to_head[scale].get(name, "—")) for scale in scales),
        )
        for name in models
    ]
    return markdown_table(header, rows)


def hd_table(results: CompareResults) -> str | None:
    measured = [r for r in results.speed if HD_LABEL in r.lr_pixels]
    if not measured:
        return None
    header = ("model", "scale", "input", "ORT FP32 ms", "ORT INT8 ms", "INT8 speed-up", "roofline FP32", "roofline INT8")
    rows = []
    for row in measured:
        tiles = len(hd_inputs(True)) if row.lr_pixels[HD_LABEL] != HD_HEIGHT * HD_WIDTH else 0
        rows.append(
            (
                f"`{row.model}`" if row.family == "AetherNet" else row.model,
                f"×{row.scale}",
                f"{tiles} tiles of {square_label(HD_TILE)}" if tiles else "whole frame",
                timing_cell(row, ORT_FP32, HD_LABEL),
                timing_cell(row, ORT_INT8, HD_LABEL),
                ratio_cell(row.median(ORT_FP32, HD_LABEL), row.median(ORT_INT8, HD_LABEL),
                           INT8_SPEEDUP_TARGET if row.family == "AetherNet" else None),
                efficiency_cell(row, ORT_FP32, HD_LABEL, results.roofline),
                efficiency_cell(row, ORT_INT8, HD_LABEL, results.roofline),
            )
        )
    return markdown_table(header, rows)


def torch_table(results: CompareResults) -> str | None:
    label = square_label(TORCH_SIZE)
    measured = [r for r in results.speed if label in r.lr_pixels]
    if not measured:
        return None
    header = ("preset", "scale", "torch training form ms", "torch fused ms", "fusion speed-up", "torch INT8 .pth ms", "ORT INT8 ms")
    rows = [
        (
            f"`{row.model}`",
            f"×{row.scale}",
            timing_cell(row, TORCH_TRAINING_FORM, label),
            timing_cell(row, TORCH_FUSED, label),
            ratio_cell(row.median(TORCH_TRAINING_FORM, label), row.median(TORCH_FUSED, label), FUSION_SPEEDUP_TARGET),
            timing_cell(row, TORCH_INT8, label),
            timing_cell(row, ORT_INT8, label),
        )
        for row in measured
    ]
    return markdown_table(header, rows)


def quality_table(quality: QualityResult) -> str:
    header = (
        "model", "params (M)", "MACs/LR px (K)", "training wall time", "FP32 PSNR dB (ORT)",
        "INT8 PSNR dB (ORT)", "INT8 from", f"INT8 latency ms, {square_label(quality.input_size)} ×{quality.scale}",
    )
    rows = [("bicubic", "—", "—", "—", f"{quality.bicubic_psnr:.3f}", "—", "—", "—")]
    rows += [
        (
            f"`{row.model}`" if row.model in PRESET_FACTORIES else row.model,
            f"{row.params / 1e6:.3f}",
            f"{row.macs_per_lr_pixel / 1e3:.1f}",
            f"{row.train_s:.0f} s ({row.train_s / quality.steps:.2f} s/step)",
            f"{row.psnr_fp32:.3f}",
            f"{row.psnr_int8:.3f}",
            row.int8_method,
            str(row.int8_latency),
        )
        for row in quality.rows
    ]
    return markdown_table(header, rows)


def compare_markdown(results: CompareResults) -> str:
    meta = results.meta
    size = meta["options"]["size"]
    sections = [
        "# AetherNet and its peers: speed and quality on one machine",
        "",
        f"Generated by `{meta['command']}` (do not edit by hand; rerun it). Started {meta['started']}, "
        f"took {meta.get('wall_s', float('nan')) / 60:.1f} min.",
        "",
        f"Machine: {meta['machine']}. Versions: {meta['versions']}.",
        "",
    ]
    checks = {
        f"INT8 ONNX is the fastest format of every preset, ≥ {INT8_SPEEDUP_TARGET:.0f}× faster than FP32 ONNX "
        f"(aim ≥ {INT8_SPEEDUP_AIM:.0f}×)": int8_fastest_findings(results, size),
        f"`aether_tiny` INT8 is faster than {SPAN_BASELINE} INT8 at {square_label(size)}, with equal or better "
        "PSNR at equal training budget": span_findings(results, size),
        f"Every preset (fastest format) is ≥ {RRDB_SPEEDUP_TARGET:.0f}× faster than RRDB (fastest format) at "
        f"{square_label(size)}": rrdb_findings(results, size),
    }
    missed = sum(f.met is False for findings in checks.values() for f in findings)
    judged = sum(f.met is not None for findings in checks.values() for f in findings)
    sections += ["## Targets", "", f"Missed: {missed} of {judged} checks.", ""]
    for target, findings in checks.items():
        sections += [f"**{target}**", "", *(f"- {f}" for f in findings), ""]
    if results.roofline is not None:
        roofline = results.roofline
        sections += [
            "## Roofline of this machine",
            "",
            f"Peak measured in this run: FP32 {roofline.peak(ORT_FP32) / 1e9:.0f} GMAC/s, INT8 "
            f"{roofline.peak(ORT_INT8) / 1e9:.0f} GMAC/s (ONNX Runtime, {meta['options']['threads']} threads; "
            f"best of the dense conv stacks below, each timed in {len(roofline.others_cpu_shares)} passes "
            "spread over the run, the fastest kept; CPU used by others during the passes: "
            f"{', '.join(f'{share:.0%}' for share in roofline.others_cpu_shares)}). A row's roofline "
            "efficiency is (its MACs ÷ peak) ÷ its time; FP16 rows are judged against the FP32 peak. An "
            "efficiency above 100% means the peak was measured while other processes took CPU time and is "
            "too low.",
            "",
            markdown_table(
                ("conv stack", "GMAC per run", "ms", "GMAC/s"),
                [
                    (name, f"{roofline.macs[name] / 1e9:.2f}", str(t), f"{roofline.macs[name] / t.median / 1e6:.0f}")
                    for name, t in roofline.timings.items()
                ],
            ),
            "",
        ]
    if results.speed:
        sections += [
            f"## Speed at {square_label(size)} (ONNX Runtime CPU)",
            "",
            speed_table(results, size),
            "",
            "Latency: median (min-max) ms of one 1×3×H×W run; the formats of one model run alternately "
            "(interleaved), after one warm-up run each; slow models get fewer rounds (at least 3). "
            "INT8 from: AetherNet rows time the release INT8 (the Q/DQ export of the QAT model, ranges "
            "calibrated on smooth random images: speed does not depend on the values); peers are "
            "quantized with ONNX Runtime `quantize_static` (QDQ, per-channel int8 weights, uint8 "
            "activations). Peers have no FP16 row: FP16 ONNX runs at FP32 speed on this CPU (see the "
            "AetherNet rows). Params and MACs are of the deploy form (fused AetherNet, SPAN's fused "
            "convs). CPU used by others: share of all CPUs' time other processes took while the row "
            "was measured; where it is high, latencies are inflated and noisy. Weights are random "
            "(speed does not depend on them). Fastest vs RRDB: RRDB's fastest format's time ÷ this "
            "model's, INT8 taken from the interleaved group below.",
            "",
        ]
        table = head_to_head_table(results)
        if table:
            sections += [
                f"### INT8 of every model in one interleaved group ({square_label(size)})",
                "",
                table,
                "",
                "The rows above are measured one model after another, minutes apart, under whatever load "
                "the machine had at the time; here every model's INT8 ONNX runs in turn within each "
                "round, so the models see the same load. The cross-model targets use these times.",
                "",
            ]
        table = hd_table(results)
        if table:
            sections += [
                f"## Speed on a {HD_LABEL} input",
                "",
                table,
                "",
                f"Timed at ×{meta['options']['hd_scale']} only (the cost per LR pixel barely depends on the "
                "scale: compare the ×2 and ×4 rows above), FP32 and INT8 only, one warm-up run and at least "
                f"one timed run. Tiles: {HD_TILE_OVERLAP} px overlap, outputs not stitched. A measurement whose "
                f"single run the {square_label(size)} median predicts above --max-run-s "
                f"{meta['options']['max_run_s']:g} s is left out (the prediction is shown).",
                "",
            ]
        table = torch_table(results)
        if table:
            sections += [
                f"## PyTorch forms ({square_label(TORCH_SIZE)} input)",
                "",
                table,
                "",
                f"×{meta['options']['hd_scale']}, {square_label(TORCH_SIZE)} input (the INT8 .pth path is a "
                "bit-exact reference of the integer kernels, about 10× slower than FP32 PyTorch: too slow "
                f"for {square_label(size)} on large presets), torch eval mode, interleaved with ORT INT8 on "
                "the same input, one warm-up and at least 2 timed rounds. Fusion speed-up target: "
                f"{FUSION_SPEEDUP_TARGET:.1f}×.",
                "",
            ]
    if results.quality is not None:
        quality = results.quality
        sections += [
            "## Quality at equal training budget",
            "",
            quality_table(quality),
            "",
            f"![speed vs quality]({SPEED_QUALITY_PNG})",
            "",
            f"Every model trained from scratch by `aether_train.py`'s Trainer with the same data, "
            f"degradation (antialiased bicubic ×{quality.scale}), loss, AdamW, cosine schedule and EMA, "
            f"for {quality.steps} steps each: `{quality.training}`. AetherNet presets train float for "
            f"{qat_switch_step(quality.steps)} steps, then QAT for the rest (`--qat-after`): their FP32 "
            "figure is the float EMA at the switch, their INT8 the QAT model's Q/DQ export. Peers train "
            "float for all steps; their INT8 is `quantize_static` calibrated on LR crops of the training "
            f"images. PSNR: RGB, 8-bit, border {quality.scale}, mean over the held-out images "
            f"{', '.join(quality.val_images)} (never trained on), run in ONNX Runtime. Training wall time "
            "differs per model at the same step count (it is part of the comparison). Short CPU budgets "
            "favour fast-converging models; the figures compare training recipes of equal cost, not "
            "fully trained models.",
            "",
        ]
    if results.speed:
        sections += [f"![latency vs MACs]({LATENCY_MACS_PNG})", ""]
    peers = sorted({r.model for r in results.speed if r.family == "peer"} | {r.model for r in (results.quality.rows if results.quality else []) if r.model in PEERS})
    if peers:
        sections += ["## Peers", "", "Built from Spandrel's architecture code with random weights:", ""]
        sections += [f"- {name}: {PEERS[name].hyperparameters}." for name in peers]
        sections += [""]
    sections += ["## Options of this run", "", "```json", json.dumps(meta["options"], indent=1, sort_keys=True), "```"]
    return "\n".join(sections) + "\n"


# Plots (drawn with OpenCV) -------------------------------------------------------------------

PLOT_SIZE = (1000, 640)  # width, height
PLOT_MARGINS = (90, 30, 50, 70)  # left, right, top, bottom
AETHER_COLOR, PEER_COLOR, RRDB_COLOR, LINE_COLOR = (180, 90, 20), (40, 130, 240), (40, 40, 200), (120, 120, 120)


@dataclass(frozen=True)
class PlotPoint:
    x: float
    y: float
    label: str
    color: tuple[int, int, int]  # BGR
    filled: bool = True


@dataclass(frozen=True)
class PlotLine:
    start: tuple[float, float]
    end: tuple[float, float]
    label: str
    color: tuple[int, int, int] = LINE_COLOR


class PlotAxis:
    """Maps data values (linear or log10) onto a pixel range, with readable ticks."""

    def __init__(self, values: Sequence[float], log: bool, first_px: float, last_px: float) -> None:
        self.log = log
        scaled = [self._scale(v) for v in values]
        low, high = min(scaled), max(scaled)
        pad = (high - low) * 0.1 or (0.3 if log else abs(high) * 0.1 or 1.0)
        self.low, self.high = low - pad, high + pad
        self.first_px, self.last_px = first_px, last_px

    def _scale(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def __call__(self, value: float) -> int:
        fraction = (self._scale(value) - self.low) / (self.high - self.low)
        return round(self.first_px + fraction * (self.last_px - self.first_px))

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(math.floor(self.low), math.ceil(self.high) + 1)
            span = self.high - self.low
            steps = range(1, 10) if span < 1 else (1, 2, 5) if span < 3 else (1,)
            values = [m * 10.0**d for d in decades for m in steps]
        else:
            raw = (self.high - self.low) / 6
            magnitude = 10.0 ** math.floor(math.log10(raw))
            step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
            values = [k * step for k in range(math.ceil(self.low / step), math.floor(self.high / step) + 1)]
        return [v for v in values if self.low <= self._scale(v) <= self.high]


def write_scatter_plot(
    path: Path,
    title: str,
    x_label: str,
    y_label: str,
    points: Sequence[PlotPoint],
    lines: Sequence[PlotLine] = (),
    log_x: bool = False,
    log_y: bool = False,
) -> None:
    width, height = PLOT_SIZE
    left, right, top, bottom = PLOT_MARGINS
    canvas = np.full((height, width, 3), 255, np.uint8)
    x_axis = PlotAxis([p.x for p in points], log_x, left, width - right)
    # the y range also shows horizontal reference lines (e.g. bicubic's PSNR)
    levels = [line.start[1] for line in lines if line.start[1] == line.end[1]]
    y_axis = PlotAxis([p.y for p in points] + levels, log_y, height - bottom, top)
    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (0, 0, 0)
    for value in x_axis.ticks():
        x = x_axis(value)
        cv2.line(canvas, (x, top), (x, height - bottom), grey, 1)
        cv2.putText(canvas, f"{value:g}", (x - 12, height - bottom + 20), font, 0.45, black, 1, cv2.LINE_AA)
    for value in y_axis.ticks():
        y = y_axis(value)
        cv2.line(canvas, (left, y), (width - right, y), grey, 1)
        cv2.putText(canvas, f"{value:g}", (8, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (width - right, height - bottom), black, 1)
    area = (left, top, width - right - left, height - bottom - top)
    for line in lines:
        inside, start, end = cv2.clipLine(area, (x_axis(line.start[0]), y_axis(line.start[1])), (x_axis(line.end[0]), y_axis(line.end[1])))
        if inside:
            cv2.line(canvas, start, end, line.color, 2, cv2.LINE_AA)
            anchor = max(start, end, key=lambda p: p[0])
            text_width = cv2.getTextSize(line.label, font, 0.45, 1)[0][0]
            cv2.putText(canvas, line.label, (anchor[0] - text_width - 6, anchor[1] - 8), font, 0.45, line.color, 1, cv2.LINE_AA)
    for point in points:
        center = (x_axis(point.x), y_axis(point.y))
        cv2.circle(canvas, center, 6, point.color, -1 if point.filled else 2, cv2.LINE_AA)
        text_width = cv2.getTextSize(point.label, font, 0.45, 1)[0][0]
        text_x = center[0] + 9 if center[0] + 9 + text_width < width - right else center[0] - 9 - text_width
        cv2.putText(canvas, point.label, (text_x, center[1] - 7), font, 0.45, point.color, 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, top - 18), font, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, x_label, (left + (width - left - right) // 2 - 4 * len(x_label), height - 20), font, 0.5, black, 1, cv2.LINE_AA)
    label = np.full((24, 10 * len(y_label), 3), 255, np.uint8)
    cv2.putText(label, y_label, (0, 17), font, 0.5, black, 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = max(0, (height - label.shape[0]) // 2)
    canvas[y0 : y0 + label.shape[0], 40 : 40 + label.shape[1]] = label[: height - y0]
    write_image(path, canvas[:, :, ::-1].astype(np.float32) / 255.0)


def family_color(model: str) -> tuple[int, int, int]:
    return AETHER_COLOR if model in PRESET_FACTORIES else RRDB_COLOR if model == RRDB else PEER_COLOR


def write_plots(results: CompareResults, out_dir: Path) -> list[Path]:
    written = []
    quality = results.quality
    if quality is not None and quality.rows:
        points = [
            PlotPoint(row.int8_latency.median, row.psnr_int8, f"{row.model} INT8", family_color(row.model))
            for row in quality.rows
        ]
        bicubic = PlotLine((1e-3, quality.bicubic_psnr), (1e6, quality.bicubic_psnr), "bicubic")
        path = out_dir / SPEED_QUALITY_PNG
        write_scatter_plot(
            path,
            f"Quality at equal training budget ({quality.steps} steps, x{quality.scale}) vs INT8 speed",
            f"ORT INT8 latency, ms (1x3x{quality.input_size}x{quality.input_size}, log scale)",
            "PSNR on held-out images, dB",
            points,
            [bicubic],
            log_x=True,
        )
        written.append(path)
    size = results.meta["options"]["size"]
    square = square_label(size)
    scale = max((r.scale for r in results.speed), default=None)
    rows = [r for r in results.speed if r.scale == scale]
    if rows:
        points = []
        for row in rows:
            for fmt, filled in ((ORT_FP32, False), (ORT_INT8, True)):
                median = row.median(fmt, square)
                if median is not None:
                    label = row.model if filled else ""
                    points.append(PlotPoint(row.macs_per_lr_pixel / 1e3, median, label, family_color(row.model), filled))
        lines = []
        if results.roofline is not None:
            for fmt in (ORT_FP32, ORT_INT8):
                peak = results.roofline.peak(fmt)
                ends = [(k, k * 1e3 * size**2 / peak * 1e3) for k in (1e-3, 1e6)]
                lines.append(PlotLine(ends[0], ends[1], f"{fmt.split()[-1]} peak"))
        path = out_dir / LATENCY_MACS_PNG
        write_scatter_plot(
            path,
            f"Latency vs compute at {square}, x{scale} (filled: INT8, hollow: FP32; lines: roofline)",
            "MACs per LR pixel, K (log scale)",
            "ORT latency, ms (log scale)",
            points,
            lines,
            log_x=True,
            log_y=True,
        )
        written.append(path)
    return written


# Running ------------------------------------------------------------------------------------


def library_versions() -> str:
    import spandrel

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"onnx {onnx.__version__}, spandrel {spandrel.__version__}, numpy {np.__version__}, "
        f"opencv {cv2.__version__}"
    )


def write_report(results: CompareResults, out_dir: Path) -> str:
    report = compare_markdown(results)
    write_plots(results, out_dir)
    with atomic_write(out_dir / REPORT_NAME) as tmp:
        Path(tmp).write_text(report, encoding="utf-8")
    return report


def save_results(results: CompareResults, out_dir: Path) -> None:
    """Written after every step, so an interrupted run keeps what it measured."""
    with atomic_write(out_dir / RESULTS_JSON) as tmp:
        Path(tmp).write_text(results.to_json(), encoding="utf-8")


def run_compare(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    if args.render_only:
        results = CompareResults.from_json((out_dir / RESULTS_JSON).read_text(encoding="utf-8"))
        print(write_report(results, out_dir))
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    options = {k: v for k, v in vars(args).items() if k not in ("run", "command_line", "render_only", "out", "quick")}
    results = CompareResults(
        meta={
            "command": args.command_line,
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{machine_line(args.threads)}, {os.cpu_count()} CPUs visible",
            "versions": library_versions(),
            "options": options,
        }
    )

    def progress(message: str) -> None:
        print(f"[compare {time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    if not args.skip_speed:
        results.roofline = measure_roofline(args)
        for scale in args.scales:
            int8_models = {}
            for name in [*args.presets, *args.peers]:
                row, int8_models[name] = measure_speed(name, scale, args)
                results.speed.append(row)
                progress(f"{name} x{scale} measured")
                save_results(results, out_dir)
            results.head_to_head[str(scale)] = measure_head_to_head(int8_models, args)
            del int8_models
            # another roofline pass after each scale: the peak keeps each stack's fastest pass
            results.roofline = results.roofline.merged(measure_roofline(args))
            roofline = results.roofline
            progress(f"x{scale} head-to-head and roofline (FP32 {roofline.peak(ORT_FP32) / 1e9:.0f}, "
                     f"INT8 {roofline.peak(ORT_INT8) / 1e9:.0f} GMAC/s) measured")
            save_results(results, out_dir)
    if not args.skip_quality:
        results.quality = measure_quality(args, out_dir)
        progress("quality measured")
    results.meta["wall_s"] = time.perf_counter() - started
    save_results(results, out_dir)
    print(write_report(results, out_dir))
    return 0


QUICK_DEFAULTS = {
    "presets": ["aether_tiny"], "peers": [SPAN_BASELINE, "UltraCompact"], "scales": [4],
    "repeats": 3, "budget": 20, "skip_hd": True,
}
FULL_DEFAULTS = {
    "presets": list(PRESET_FACTORIES), "peers": list(PEERS), "scales": [2, 4],
    "repeats": 7, "budget": 700, "skip_hd": False,
}


def resolve_compare_options(args: argparse.Namespace) -> None:
    """Fill the options left unset from --quick's or the full run's defaults; check them."""
    for name, value in (QUICK_DEFAULTS if args.quick else FULL_DEFAULTS).items():
        if getattr(args, name) in (None, False):
            setattr(args, name, value)
    if args.hd_scale is None:
        args.hd_scale = max(args.scales)
    if args.budget_s <= 0 or args.max_run_s <= 0:
        raise InputError("--budget-s and --max-run-s must be positive")
    out_dir = Path(args.out)
    if args.render_only:
        if not (out_dir / RESULTS_JSON).is_file():
            raise InputError(f"--render-only: {out_dir / RESULTS_JSON} not found")
        return
    if not args.skip_quality:
        image_files(args.train_dir, "--train-dir")
        image_files(args.val_dir, "--val-dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise InputError(f"--out {str(out_dir)!r}: cannot write there ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------------------
# readme-table: parameters and MACs of every preset and scale
# ---------------------------------------------------------------------------------------


class MissingMarkersError(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def preset_table_markdown() -> str:
    """The README's preset table (deploy form, deterministic: no timings)."""
    scales = " / ".join(f"×{scale}" for scale in README_TABLE_SCALES)
    header = ("preset", f"params (M) at {scales}", f"MACs per LR pixel (K) at {scales}")
    rows = []
    for preset in PRESET_FACTORIES:
        models = [deploy_form_shapes(preset, scale) for scale in README_TABLE_SCALES]
        rows.append(
            (
                f"`{preset}`",
                " / ".join(f"{parameter_count(m) / 1e6:.3f}" for m in models),
                " / ".join(f"{macs_per_lr_pixel(m) / 1e3:.1f}" for m in models),
            )
        )
    return markdown_table(header, rows)


def readme_with_preset_table(readme_text: str) -> str:
    """``readme_text`` with the current preset table between the marker lines."""
    start = readme_text.find(README_TABLE_START)
    end = readme_text.find(README_TABLE_END, start + 1)
    if start < 0 or end < 0:
        raise MissingMarkersError(
            f"the preset table markers are missing: add the lines {README_TABLE_START} and "
            f"{README_TABLE_END} (in that order) where the table belongs"
        )
    head = readme_text[: start + len(README_TABLE_START)]
    return f"{head}\n\n{preset_table_markdown()}\n\n{readme_text[end:]}"


def run_readme_table(args: argparse.Namespace) -> int:
    readme = Path(args.readme)
    try:
        text = readme.read_text(encoding="utf-8")
        updated = readme_with_preset_table(text)
    except (OSError, MissingMarkersError) as exc:
        print(f"error: {readme}: {exc}", file=sys.stderr)
        return 2
    if updated == text:
        print(f"{readme}: preset table is up to date")
        return 0
    if args.check:
        print(
            f"{readme}: preset table is out of date; run python3 aether_bench.py readme-table",
            file=sys.stderr,
        )
        return 1
    readme.write_text(updated, encoding="utf-8")
    print(f"{readme}: preset table updated")
    return 0


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presets",
        nargs="+",
        metavar="PRESET",
        choices=list(PRESET_FACTORIES),
        default=list(PRESET_FACTORIES),
        help=f"presets to measure (default: all of {', '.join(PRESET_FACTORIES)})",
    )
    parser.add_argument("--scale", type=whole_number(1), default=4)
    parser.add_argument("--size", type=whole_number(1), default=256, help="input height and width")
    parser.add_argument("--threads", type=whole_number(1), default=2, help="intra-op threads (ORT and torch)")
    parser.add_argument("--repeats", type=whole_number(1), default=10, help="timed ONNX Runtime runs")


def add_compare_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="speed (ORT FP32/FP16/INT8, PyTorch), roofline efficiency and quality at equal "
        "training budget of the presets next to SPAN, Compact, PLKSR and RRDB",
    )
    compare.add_argument("--out", required=True, metavar="DIR",
                         help=f"folder for {REPORT_NAME}, {RESULTS_JSON}, the PNG plots and the training logs")
    compare.add_argument("--quick", action="store_true",
                         help="a smoke run of a few minutes: aether_tiny, SPAN-28 and UltraCompact at x4, "
                              "no 1280x720, 3 timed rounds, 20 training steps (explicit options still apply)")
    compare.add_argument("--render-only", action="store_true",
                         help=f"only rewrite the report and plots from DIR/{RESULTS_JSON}")
    speed = compare.add_argument_group("speed")
    speed.add_argument("--presets", nargs="+", metavar="PRESET", choices=list(PRESET_FACTORIES),
                       help="AetherNet presets (default: all)")
    speed.add_argument("--peers", nargs="+", metavar="PEER", choices=list(PEERS),
                       help=f"peer networks (default: all of {', '.join(PEERS)})")
    speed.add_argument("--scales", nargs="+", type=whole_number(1), metavar="S", help="scales timed at 256x256 (default: 2 4)")
    speed.add_argument("--size", type=whole_number(1), default=256, help="square input size (default: 256)")
    speed.add_argument("--threads", type=whole_number(1), default=2, help="intra-op threads, ORT and torch (default: 2)")
    speed.add_argument("--repeats", type=whole_number(1), help="most timed rounds per measurement (default: 7)")
    speed.add_argument("--budget-s", type=float, default=30.0,
                       help="seconds one measurement should take: slow models get fewer rounds, at least 3 "
                            "(1 at 1280x720) (default: 30)")
    speed.add_argument("--hd-scale", type=int, help="scale of the 1280x720 and PyTorch rows (default: the largest of --scales)")
    speed.add_argument("--hd-repeats", type=whole_number(1), default=3, help="most timed rounds at 1280x720 (default: 3)")
    speed.add_argument("--max-run-s", type=float, default=60.0,
                       help="leave out a 1280x720 measurement whose single run is predicted longer (default: 60)")
    speed.add_argument("--skip-hd", action="store_true", help="no 1280x720 rows")
    speed.add_argument("--skip-torch", action="store_true", help="no PyTorch rows")
    speed.add_argument("--skip-speed", action="store_true", help="no speed rows at all (quality only)")
    quality = compare.add_argument_group("quality at equal training budget")
    quality.add_argument("--skip-quality", action="store_true", help="no training")
    quality.add_argument("--budget", type=whole_number(2), metavar="STEPS",
                         help="training steps per model, the same for all (default: 700)")
    quality.add_argument("--quality-models", nargs="+", metavar="MODEL", choices=[*PRESET_FACTORIES, *PEERS],
                         default=["aether_tiny", SPAN_BASELINE, "UltraCompact"],
                         help="models trained (default: aether_tiny SPAN-28 UltraCompact)")
    quality.add_argument("--quality-scale", type=whole_number(1), default=2, help="scale they are trained at (default: 2)")
    quality.add_argument("--lr-patch", type=whole_number(1), default=32, help="LR patch size (default: 32)")
    quality.add_argument("--batch-size", type=whole_number(1), default=16, help="patches per step (default: 16)")
    quality.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, all models (default: 1e-3)")
    quality.add_argument("--train-dir", default="samples/train", help="HR training images (default: samples/train)")
    quality.add_argument("--val-dir", default="samples/val", help="held-out HR images (default: samples/val)")
    compare.set_defaults(run=run_compare)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    # One-line errors (exit 2) instead of argparse's usage block; subparsers inherit the class.
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    arch = commands.add_parser("arch", help="parameters, MACs and CPU latency of the presets")
    add_speed_options(arch)
    arch.add_argument("--torch-repeats", type=int, default=3, help="timed PyTorch runs")
    arch.add_argument(
        "--budget-s",
        type=float,
        default=45.0,
        help=f"seconds one measurement may take; slow presets get fewer timed runs "
        f"(at least {MIN_ROUNDS})",
    )
    arch.add_argument("--out", help="also write the Markdown report to this file")
    arch.set_defaults(run=run_arch)

    qat = commands.add_parser(
        "qat", help="FP32 vs QAT-INT8 vs PTQ-INT8 quality, QDQ export speed, QAT step cost"
    )
    add_speed_options(qat)
    qat.add_argument(
        "--float-checkpoint",
        default="samples/aether_tiny_x2_float.pth",
        help="the float model QAT started from (its PTQ version is built from it)",
    )
    qat.add_argument(
        "--qat-checkpoint",
        default="samples/aether_tiny_x2.pth",
        help="the same model after QAT fine-tuning",
    )
    qat.add_argument("--val-dir", default="samples/val", help="held-out HR images")
    qat.add_argument(
        "--calibration-dir", default="samples/train", help="images for PTQ calibration"
    )
    qat.add_argument("--out", help="also write the Markdown report to this file")
    qat.set_defaults(run=run_qat)

    readme = commands.add_parser(
        "readme-table", help="write the preset parameter/MAC table into README.md"
    )
    readme.add_argument("--readme", default=str(DEFAULT_README))
    readme.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the table is out of date"
    )
    readme.set_defaults(run=run_readme_table)
    add_compare_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "compare":
        resolve_compare_options(args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except (InputError, ImageFolderError) as exc:
        print(f"aether_bench.py: error: {exc}", file=sys.stderr)
        return 2
    args.command_line = shlex.join(["python3", "aether_bench.py", *argv])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
