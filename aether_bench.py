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
import copy
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from aether_arch import (
    ONNX_INPUT_NAME,
    PRESET_FACTORIES,
    AetherNet,
    calibrate_int8,
    load_model,
    onnx_model_proto,
    prepare_qat,
    save_onnx,
)
from aether_data import (
    bicubic_upscale,
    evaluation_pair,
    list_images,
    markdown_table,
    psnr,
    read_image,
    to_image,
    to_tensor,
)

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
    runners: Mapping[str, Callable[[], object]], rounds: int, budget_s: float
) -> dict[str, Timing]:
    """Time every runner once per round, alternating between them, so that drifts of the
    machine's speed (other load, clocks) hit all of them alike and their ratio stays fair.

    WARMUP_ROUNDS untimed rounds come first. If ``rounds`` rounds would take longer than
    ``budget_s`` (judged from the last warm-up round), fewer are run, but at least
    MIN_ROUNDS (or ``rounds`` if that is smaller)."""
    round_s = 0.0
    for _ in range(WARMUP_ROUNDS):
        start = time.perf_counter()
        for run in runners.values():
            run()
        round_s = time.perf_counter() - start
    affordable = int(budget_s / round_s) if round_s > 0 else rounds
    rounds = min(rounds, max(affordable, MIN_ROUNDS))

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


def time_sessions(
    sessions: Mapping[str, ort.InferenceSession], image: np.ndarray, repeats: int, budget_s: float
) -> dict[str, Timing]:
    """Latency of each session on ``image``, timed interleaved (see time_interleaved)."""
    return time_interleaved(
        {
            name: functools.partial(session.run, None, {ONNX_INPUT_NAME: image})
            for name, session in sessions.items()
        },
        repeats,
        budget_s,
    )


def quantize_int8(fp32_path: str, int8_path: str, workdir: str) -> None:
    """Static INT8 quantization (QDQ, per-channel weights, uint8 activations) calibrated on
    random images. The graph is pre-processed first, as the quantizer recommends (without it
    the quantizer logs a warning on every call)."""

    class RandomImages(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            shape = (1, 3, CALIBRATION_SIZE, CALIBRATION_SIZE)
            self._batches = iter(
                [
                    {ONNX_INPUT_NAME: rng.random(shape, dtype=np.float32)}
                    for _ in range(CALIBRATION_INPUTS)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    preprocessed_path = os.path.join(workdir, "preprocessed.onnx")
    quant_pre_process(fp32_path, preprocessed_path)
    quantize_static(
        preprocessed_path,
        int8_path,
        RandomImages(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


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

    with tempfile.TemporaryDirectory(prefix="aether_bench_") as workdir:
        fp32_path = os.path.join(workdir, "fp32.onnx")
        int8_path = os.path.join(workdir, "int8.onnx")
        save_onnx(onnx_model_proto(fused, opset=17), fp32_path)
        quantize_int8(fp32_path, int8_path, workdir)
        sessions = {
            "fp32": ort_session(fp32_path, args.threads),
            "int8": ort_session(int8_path, args.threads),
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


def onnx_upscaler(model: AetherNet, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run ``model`` exported to ONNX (FP32, or QDQ INT8 for a QAT model) in ONNX Runtime."""
    session = ort_session(onnx_model_proto(model).SerializeToString(), threads)
    return lambda lr: torch.from_numpy(session.run(None, {ONNX_INPUT_NAME: lr.numpy()})[0])


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
        "FP32 (ORT)": onnx_upscaler(copy.deepcopy(float_model).fuse(), args.threads),
        "QAT-INT8 (ORT)": onnx_upscaler(qat_model, args.threads),
        "PTQ-INT8 (ORT)": onnx_upscaler(ptq_model, args.threads),
    }
    rows, means = [], {name: [] for name in upscalers}
    for image_name, lr, hr in held_out_pairs(args.val_dir, scale):
        cells = [image_name]
        for name, upscale in upscalers.items():
            with torch.inference_mode():
                value = psnr(to_image(upscale(lr)), to_image(hr), border=scale)
            means[name].append(value)
            cells.append(f"{value:.3f}")
        rows.append(cells)
    mean = {name: statistics.fmean(values) for name, values in means.items()}
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
    rng = torch.Generator().manual_seed(0)
    calibration = [
        torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=rng), size=(64, 64), mode="bilinear")
        for _ in range(4)
    ]
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    rows = []
    for preset in args.presets:
        float_model = PRESET_FACTORIES[preset](scale=args.scale).eval()
        int8_model = calibrate_int8(copy.deepcopy(float_model), calibration)
        sessions = {
            name: ort_session(onnx_model_proto(model).SerializeToString(), args.threads)
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
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (ORT and torch)")
    parser.add_argument("--repeats", type=int, default=10, help="timed ONNX Runtime runs")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
