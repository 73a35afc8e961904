"""Benchmark AetherNet against the networks users would pick instead, and keep the README's
preset table current.

Subcommands
-----------
``compare``
    The headline claims, measured in one run on one machine (``python3 aether_bench.py compare
    --out DIR``; ``--quick`` for a smoke run):
      * ONNX Runtime CPU latency of every preset (FP32, FP16, the release INT8) and of the
        peers built from Spandrel's code with their published hyperparameters (SPAN 48 / 28
        channels, Compact, UltraCompact, SuperUltraCompact, PLKSR-tiny, RRDB/ESRGAN; FP32 and
        ORT static INT8), at 256x256 for scales 2 and 4 and on a 1280x720 frame; PyTorch
        training form, fused form and INT8 .pth path of the presets. AetherNet's formats are made
        by the release's own functions (aether_runtime), so what is timed is what is released;
      * parameters, MACs per LR pixel, and efficiency against this machine's roofline (peak
        FP32 and INT8 conv throughput measured in the same run);
      * quality at equal training budget: aether_tiny and its two closest peers in size
        trained by aether_train.py's training loop with the same data, degradation, loss,
        schedule and number of steps (``--budget``), then PSNR on held-out images in FP32 and INT8;
      * QAT on the shipped sample: FP32 vs QAT-INT8 vs PTQ-INT8 quality, and the cost of a QAT
        training step next to a float one.
    Writes DIR/benchmarks_results.json (everything measured, after every step), and from it
    (aether_bench_report.py) DIR/benchmarks.md with the targets marked met / MISSED, two PNG
    plots; plus the training logs. ``--render-only`` rebuilds the report from the JSON.
    docs/benchmarks.md is a copy of one full run.

``readme-table``
    Writes the deterministic table of deploy-form parameters and MACs per LR pixel for every
    preset and scale into README.md, between ``<!-- preset-table:start -->`` and
    ``<!-- preset-table:end -->``; with ``--check`` it only verifies that the table there is
    current (exit 1 if not).

Latencies are medians of interleaved runs with spread (ONNX Runtime's spinning off, see
aether_runtime.ort_session); figures are printed, never asserted by tests. MACs are counted
over every convolution (output elements x in_channels/groups x kH x kW); PixelShuffle, ReLU,
additions and concatenations are counted as free.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from aether_arch import (
    PRESET_FACTORIES,
    AetherCheckpointError,
    AetherNet,
    RepConv,
    float_copy,
    int8_state_dict,
    load_model,
)
from aether_bench_design import design_report
from aether_bench_plots import write_plots
from aether_bench_pth_int8 import add_pth_int8_parser, pth_int8_report
from aether_bench_quality import held_out_pairs, measure_qat, measure_quality
from aether_bench_report import (
    AETHER_INT8,
    HD_HEIGHT,
    HD_LABEL,
    HD_TILE,
    HD_TILE_OVERLAP,
    HD_WIDTH,
    ORT_FP16,
    ORT_FP32,
    ORT_INT8,
    PEER_INT8,
    PEER_OF,
    REPORT_NAME,
    RESULTS_JSON,
    SPAN_BASELINE,
    TORCH_FUSED,
    TORCH_INT8,
    TORCH_SIZE,
    TORCH_TRAINING_FORM,
    CompareResults,
    Roofline,
    SpeedRow,
    Timing,
    load_results,
    load_zoo_quality,
    measurement,
    save_results,
    square_label,
    write_report,
)
from aether_bench_zoo import add_zoo_parsers
from aether_cli import InputError, OneLineErrorParser, markdown_table, run_cli, whole_number
from aether_data import image_files
from aether_measure import (
    MIN_ROUNDS,
    CpuSnapshot,
    macs_per_lr_pixel,
    parameter_count,
    session_runner,
    time_interleaved,
)
from aether_peers import PEERS, onnx_bytes, peer_deploy_form, static_int8_bytes
from aether_runtime import has_qat_ranges_for, int8_model, onnx_models, ort_session

PROG = "aether_bench.py"
ROOFLINE_CHANNELS = (64, 128, 256)
ROOFLINE_SIZE = 128
ROOFLINE_LAYERS = 4
ORT_PRECISIONS = {ORT_FP32: "fp32", ORT_FP16: "fp16", ORT_INT8: "int8"}  # ORT rows -> release precisions

README_TABLE_START = "<!-- preset-table:start -->"
README_TABLE_END = "<!-- preset-table:end -->"
README_TABLE_SCALES = (1, 2, 3, 4)
DEFAULT_README = Path(__file__).resolve().with_name("README.md")


# ---------------------------------------------------------------------------------------
# Size and compute
# ---------------------------------------------------------------------------------------


def deploy_form_shapes(preset: str, scale: int) -> AetherNet:
    """The preset's deploy (fused) form on the meta device: every shape, no weight values.
    Enough to count parameters and MACs, and instant even for the large preset."""
    with torch.device("meta"):
        return PRESET_FACTORIES[preset](scale=scale, fused=True).eval()


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
# compare: speed and the roofline
# ---------------------------------------------------------------------------------------


# Speed ------------------------------------------------------------------------------------


def aether_formats(
    preset: str, scale: int, with_torch: bool
) -> tuple[SpeedRow, dict[str, bytes], dict[str, nn.Module]]:
    """The preset's release formats, made by the release's own functions (INT8 calibrated on
    smooth random images: speed does not depend on the values)."""
    training_form = PRESET_FACTORIES[preset](scale=scale).eval()
    fused = float_copy(training_form)
    int8, _ = int8_model(training_form, fused, profile="cpu", calibration=smooth_random_batches())
    protos = onnx_models(fused, int8)
    ort_models = {fmt: protos[precision].SerializeToString() for fmt, precision in ORT_PRECISIONS.items()}
    # model_int8.pth as load_model() rebuilds it from the int8 state dict the release saves
    torch_int8 = load_model(int8_state_dict(int8))
    torch_models = (
        {TORCH_TRAINING_FORM: training_form, TORCH_FUSED: fused, TORCH_INT8: torch_int8} if with_torch else {}
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


def measure_hd(
    row: SpeedRow, sessions: Mapping[str, ort.InferenceSession], tiled: bool, args: argparse.Namespace
) -> None:
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


def branch_sums(run: Callable[[], object]) -> object:
    """``run()`` with every RepConv adding up its branches, the training form's own cost: in eval
    mode a RepConv otherwise runs its fused kernel, and fusion would look free."""
    original = RepConv.forward
    RepConv.forward = RepConv.branch_sum
    try:
        return run()
    finally:
        RepConv.forward = original


def measure_torch(
    row: SpeedRow, models: Mapping[str, nn.Module], int8_session: ort.InferenceSession, args: argparse.Namespace
) -> None:
    """PyTorch training form, fused form and INT8 .pth path, with ORT INT8 on the same input."""
    image = np.random.default_rng(3).random((1, 3, TORCH_SIZE, TORCH_SIZE), dtype=np.float32)
    runners = {fmt: functools.partial(model, torch.from_numpy(image)) for fmt, model in models.items()}
    if TORCH_TRAINING_FORM in runners:
        runners[TORCH_TRAINING_FORM] = functools.partial(branch_sums, runners[TORCH_TRAINING_FORM])
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
    sessions = {fmt: ort_session(model, threads=args.threads) for fmt, model in ort_models.items()}
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


def measure_head_to_head(
    int8_models: Mapping[str, bytes], args: argparse.Namespace, height: int | None = None, width: int | None = None
) -> dict[str, Timing]:
    """Every model's INT8 ONNX in one interleaved group (on a --size square, or height x width):
    the per-model rows are measured minutes apart, under whatever load the machine had then;
    comparisons across models use this group instead."""
    shape = (1, 3, height or args.size, width or args.size)
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    sessions = {name: ort_session(model, threads=args.threads) for name, model in int8_models.items()}
    return time_interleaved(
        {name: session_runner(session, image) for name, session in sessions.items()},
        args.hd_repeats if height else args.repeats,
        2 * args.budget_s,
        warmup_rounds=1,
        min_rounds=MIN_ROUNDS,
    )


# Roofline ---------------------------------------------------------------------------------


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
            runners[name] = session_runner(ort_session(model, threads=args.threads), image)
            macs[name] = macs_per_lr_pixel(stack, in_channels=channels) * ROOFLINE_SIZE**2
    timings = time_interleaved(runners, args.repeats, args.budget_s)
    return Roofline(macs, timings, [CpuSnapshot.now().others_share_since(start)])


# Quality at equal training budget ----------------------------------------------------------


# Running ------------------------------------------------------------------------------------


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
    return f"torch {torch.__version__}, onnxruntime {ort.__version__}; CPU: {cpu_model()}; {threads} threads"


def library_versions() -> str:
    import spandrel

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"onnx {onnx.__version__}, spandrel {spandrel.__version__}, numpy {np.__version__}, "
        f"opencv {cv2.__version__}"
    )


def render(results: CompareResults, out_dir: Path) -> str:
    """DIR/benchmarks.md and its two plots from ``results``; the report."""
    write_plots(results, out_dir)
    return write_report(results, out_dir)


# --render-only's options that take one section from a rerun: option -> CompareResults field
RERUN_SECTIONS = {"quality_from": "quality", "qat_from": "qat"}


def run_compare(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    if args.render_only:
        results = load_results(out_dir)
        if args.zoo:
            results.zoo_quality, results.meta["zoo_quality"] = args.zoo, args.zoo_quality
        for option, section in RERUN_SECTIONS.items():
            if getattr(args, option):
                rerun = load_results(Path(getattr(args, option)))
                if getattr(rerun, section) is None:
                    raise InputError(
                        f"--{option.replace('_', '-')} {getattr(args, option)}: its run has no {section} section"
                    )
                setattr(results, section, getattr(rerun, section))
                results.meta.setdefault("amended", []).append(
                    f"{'QAT' if section == 'qat' else section} section from `{rerun.meta['command']}`, "
                    f"started {rerun.meta['started']}"
                )
        if args.zoo or any(getattr(args, option) for option in RERUN_SECTIONS):
            save_results(results, out_dir)
        print(render(results, out_dir))
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    left_out = ("run", "command_line", "render_only", "out", "quick", "zoo", *RERUN_SECTIONS)
    options = {k: v for k, v in vars(args).items() if k not in left_out}
    results = CompareResults(
        meta={
            "command": args.command_line,
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{machine_line(args.threads)}, {os.cpu_count()} CPUs visible",
            "versions": library_versions(),
            "options": options,
            "peers": {
                name: PEERS[name].hyperparameters
                for name in dict.fromkeys([*args.peers, *args.quality_models])
                if name in PEERS
            },
        },
        zoo_quality=args.zoo,
    )
    if args.zoo:
        results.meta["zoo_quality"] = args.zoo_quality

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
            pairs = [name for pair in PEER_OF.items() for name in pair if name in int8_models]
            if scale == args.hd_scale and not args.skip_hd and pairs:
                hd_models = {name: int8_models[name] for name in pairs}
                results.head_to_head_hd = measure_head_to_head(hd_models, args, HD_HEIGHT, HD_WIDTH)
            del int8_models
            # another roofline pass after each scale: the peak keeps each stack's fastest pass
            results.roofline = results.roofline.merged(measure_roofline(args))
            roofline = results.roofline
            progress(
                f"x{scale} head-to-head and roofline (FP32 {roofline.peak(ORT_FP32) / 1e9:.0f}, "
                f"INT8 {roofline.peak(ORT_INT8) / 1e9:.0f} GMAC/s) measured"
            )
            save_results(results, out_dir)
    if not args.skip_quality:
        results.quality = measure_quality(args, out_dir)
        progress("quality measured")
        save_results(results, out_dir)
    if not args.skip_qat:
        results.qat = measure_qat(args)
        progress("QAT measured")
    results.meta["wall_s"] = time.perf_counter() - started
    save_results(results, out_dir)
    print(render(results, out_dir))
    return 0


QUICK_DEFAULTS = {
    "presets": ["aether_tiny"],
    "peers": [SPAN_BASELINE, "UltraCompact"],
    "scales": [4],
    "repeats": 3,
    "budget": 20,
    "skip_hd": True,
}
FULL_DEFAULTS = {
    "presets": list(PRESET_FACTORIES),
    "peers": list(PEERS),
    "scales": [2, 4],
    "repeats": 7,
    "budget": 700,
    "skip_hd": False,
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
    args.zoo = load_zoo_quality(args.zoo_quality) if args.zoo_quality else {}
    reruns = [getattr(args, option) for option in RERUN_SECTIONS if getattr(args, option)]
    for option in RERUN_SECTIONS:
        if getattr(args, option) and not args.render_only:
            raise InputError(f"--{option.replace('_', '-')} only goes with --render-only")
    if args.render_only:
        for folder in (out_dir, *map(Path, reruns)):
            if not (folder / RESULTS_JSON).is_file():
                raise InputError(f"--render-only: {folder / RESULTS_JSON} not found")
        return
    if not args.skip_quality:
        image_files(args.train_dir, "--train-dir")
    # read now, not after the speed section's half hour: a flat or tiny image is an error
    if not args.skip_quality:
        held_out_pairs(args.val_dir, args.quality_scale)
    if not args.skip_qat:
        image_files(args.calibration_dir, "--calibration-dir")
        models = {}
        for option, path in (("--float-checkpoint", args.float_checkpoint), ("--qat-checkpoint", args.qat_checkpoint)):
            try:
                models[option] = load_model(path)
            except AetherCheckpointError as exc:
                raise InputError(f"{option}: {exc}") from None
        if not has_qat_ranges_for(models["--qat-checkpoint"], "cpu"):
            raise InputError(
                f"--qat-checkpoint {args.qat_checkpoint!r} is not a QAT-trained checkpoint for the cpu INT8 profile"
            )
        scales = {option: model.scale for option, model in models.items()}
        if len(set(scales.values())) > 1:
            raise InputError(
                f"--float-checkpoint is a x{scales['--float-checkpoint']} model, --qat-checkpoint a "
                f"x{scales['--qat-checkpoint']} one: QAT is compared with the float model it was fine-tuned from"
            )
        held_out_pairs(args.val_dir, scales["--qat-checkpoint"])
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


def add_compare_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="speed (ORT FP32/FP16/INT8, PyTorch), roofline efficiency and quality at equal "
        "training budget of the presets next to SPAN, Compact, PLKSR and RRDB",
    )
    compare.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"folder for {REPORT_NAME}, {RESULTS_JSON}, the PNG plots and the training logs",
    )
    compare.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few minutes: aether_tiny, SPAN-28 and UltraCompact at x4, "
        "no 1280x720, 3 timed rounds, 20 training steps (explicit options still apply)",
    )
    compare.add_argument(
        "--render-only", action="store_true", help=f"only rewrite the report and plots from DIR/{RESULTS_JSON}"
    )
    speed = compare.add_argument_group("speed")
    speed.add_argument(
        "--presets",
        nargs="+",
        metavar="PRESET",
        choices=list(PRESET_FACTORIES),
        help="AetherNet presets (default: all)",
    )
    speed.add_argument(
        "--peers",
        nargs="+",
        metavar="PEER",
        choices=list(PEERS),
        help=f"peer networks (default: all of {', '.join(PEERS)})",
    )
    speed.add_argument(
        "--scales", nargs="+", type=whole_number(1), metavar="S", help="scales timed at 256x256 (default: 2 4)"
    )
    speed.add_argument("--size", type=whole_number(1), default=256, help="square input size (default: 256)")
    speed.add_argument(
        "--threads", type=whole_number(1), default=2, help="intra-op threads, ORT and torch (default: 2)"
    )
    speed.add_argument("--repeats", type=whole_number(1), help="most timed rounds per measurement (default: 7)")
    speed.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help="seconds one measurement should take: slow models get fewer rounds, at least 3 "
        "(1 at 1280x720) (default: 30)",
    )
    speed.add_argument(
        "--hd-scale", type=int, help="scale of the 1280x720 and PyTorch rows (default: the largest of --scales)"
    )
    speed.add_argument(
        "--hd-repeats", type=whole_number(1), default=3, help="most timed rounds at 1280x720 (default: 3)"
    )
    speed.add_argument(
        "--max-run-s",
        type=float,
        default=60.0,
        help="leave out a 1280x720 measurement whose single run is predicted longer (default: 60)",
    )
    speed.add_argument("--skip-hd", action="store_true", help="no 1280x720 rows")
    speed.add_argument("--skip-torch", action="store_true", help="no PyTorch rows")
    speed.add_argument("--skip-speed", action="store_true", help="no speed rows at all (quality only)")
    quality = compare.add_argument_group("quality at equal training budget")
    quality.add_argument("--skip-quality", action="store_true", help="no training")
    quality.add_argument(
        "--zoo-quality",
        metavar="JSON",
        help="report the trained checkpoints of `aether_bench.py quality` (its quality_results.json) as the "
        "equal-budget comparison instead of the short training here; with --render-only, adds it to DIR's results",
    )
    quality.add_argument(
        "--quality-from",
        metavar="DIR",
        help="with --render-only: replace the quality section by DIR's (a run with --skip-speed --skip-qat, "
        "e.g. after a change to the network); the report says so",
    )
    quality.add_argument(
        "--budget",
        type=whole_number(2),
        metavar="STEPS",
        help="training steps per model, the same for all (default: 700)",
    )
    quality.add_argument(
        "--quality-models",
        nargs="+",
        metavar="MODEL",
        choices=[*PRESET_FACTORIES, *PEERS],
        default=["aether_tiny", SPAN_BASELINE, "UltraCompact"],
        help="models trained (default: aether_tiny SPAN-28 UltraCompact)",
    )
    quality.add_argument(
        "--quality-scale", type=whole_number(1), default=2, help="scale they are trained at (default: 2)"
    )
    quality.add_argument("--lr-patch", type=whole_number(1), default=32, help="LR patch size (default: 32)")
    quality.add_argument("--batch-size", type=whole_number(1), default=16, help="patches per step (default: 16)")
    quality.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, all models (default: 1e-3)")
    quality.add_argument("--train-dir", default="samples/train", help="HR training images (default: samples/train)")
    quality.add_argument("--val-dir", default="samples/val", help="held-out HR images (default: samples/val)")
    qat = compare.add_argument_group("QAT on the shipped sample")
    qat.add_argument("--skip-qat", action="store_true", help="no QAT quality and step cost")
    qat.add_argument(
        "--float-checkpoint",
        default="samples/aether_tiny_x2_float.pth",
        help="a float checkpoint (default: samples/aether_tiny_x2_float.pth)",
    )
    qat.add_argument(
        "--qat-checkpoint",
        default="samples/aether_tiny_x2.pth",
        help="its QAT fine-tune (default: samples/aether_tiny_x2.pth)",
    )
    qat.add_argument(
        "--calibration-dir",
        default="samples/train",
        help="images for the PTQ version of the float checkpoint (default: samples/train)",
    )
    qat.add_argument(
        "--qat-from",
        metavar="DIR",
        help="with --render-only: replace the QAT section by DIR's (a run with --skip-speed --skip-quality, "
        "e.g. after a change to INT8 calibration); the report says so",
    )
    compare.set_defaults(run=run_compare)


def run_design(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[design {time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    peak = measure_roofline(args).peak(ORT_INT8)
    report = f"Generated by `{args.command_line}`.\n\n" + design_report(args, peak, progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "design.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


def run_pth_int8(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    return pth_int8_report(args, measure_roofline(args).peak(ORT_INT8))


def add_design_parser(commands: argparse._SubParsersAction) -> None:
    design = commands.add_parser("design", help="speed and quality of the candidate v2 bodies (the design study)")
    design.add_argument("--out", required=True, metavar="DIR", help="folder for design.md")
    design.add_argument("--scale", type=whole_number(1), default=2, help="(default: 2)")
    design.add_argument("--size", type=whole_number(1), default=256, help="square input size (default: 256)")
    design.add_argument("--threads", type=whole_number(1), default=2, help="(default: 2)")
    design.add_argument("--repeats", type=whole_number(1), default=9, help="most timed rounds (default: 9)")
    design.add_argument("--budget-s", type=float, default=120.0, help="seconds per interleaved group (default: 120)")
    design.add_argument("--budget", type=whole_number(2), default=700, help="training steps per design (default: 700)")
    design.add_argument("--skip-quality", action="store_true", help="no training")
    design.add_argument("--train-dir", default="samples/train", help="(default: samples/train)")
    design.add_argument("--val-dir", default="samples/val", help="(default: samples/val)")
    design.set_defaults(run=run_design)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    # One-line errors (exit 2) instead of argparse's usage block; subparsers inherit the class.
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    readme = commands.add_parser("readme-table", help="write the preset parameter/MAC table into README.md")
    readme.add_argument("--readme", default=str(DEFAULT_README))
    readme.add_argument("--check", action="store_true", help="do not write; exit 1 if the table is out of date")
    readme.set_defaults(run=run_readme_table)
    add_compare_parser(commands)
    add_design_parser(commands)
    add_pth_int8_parser(commands, run_pth_int8)
    add_zoo_parsers(commands)
    args = parser.parse_args(argv)
    if args.command == "compare":
        resolve_compare_options(args)
    args.command_line = shlex.join(["python3", PROG, *argv])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, parse_args, lambda args: args.run(args), argv)


if __name__ == "__main__":
    sys.exit(main())
