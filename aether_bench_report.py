"""The report of ``aether_bench.py compare``: what a run measured (the dataclasses saved as
benchmarks_results.json), the verdict on every target and the Markdown report (its two plots
are aether_bench_plots.py's).

Everything here reads only the results: ``python3 aether_bench.py compare --out DIR
--render-only`` rebuilds DIR/benchmarks.md and the plots from DIR/benchmarks_results.json.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from aether_arch import PRESET_FACTORIES, atomic_write
from aether_cli import InputError, markdown_table

# Targets: reported (MISSED where missed), never asserted by tests.
INT8_SPEEDUP_TARGET = 3.0  # INT8 ONNX over FP32 ONNX, every preset
INT8_SPEEDUP_AIM = 3.5
PEER_SPEEDUP_TARGET, PEER_SPEEDUP_AIM = 1.5, 2.0  # INT8 over the closest peer's INT8 (PEER_OF)
FLOOR_TARGET = 1.6  # INT8 time within this factor of the roofline floor (FLOOR_PRESETS)
FUSION_SPEEDUP_TARGET = 1.5
RRDB_SPEEDUP_TARGET = 50.0
QAT_GAP_TARGET_DB, QAT_GAP_AIM_DB = 0.1, 0.05  # QAT-INT8 below FP32

# What is measured, and on which input
ORT_FP32, ORT_FP16, ORT_INT8 = "ORT FP32", "ORT FP16", "ORT INT8"
TORCH_TRAINING_FORM, TORCH_FUSED, TORCH_INT8 = "torch training form", "torch fused", "torch INT8 .pth"
HD_HEIGHT, HD_WIDTH = 720, 1280
HD_LABEL = "1280×720"
HD_TILE, HD_TILE_OVERLAP = 256, 16
# PyTorch rows use a smaller input: the training form of aether_large is slow (and the INT8
# .pth path was a float64 reference, ~2 minutes per 256x256 run, when the committed run was made).
TORCH_SIZE = 128
AETHER_INT8 = "QAT Q/DQ export"
PEER_INT8 = "ORT static PTQ"
RRDB = "RRDB (ESRGAN)"
SPAN_BASELINE, SPAN_48 = "SPAN-28", "SPAN-48"
# The peer each small preset must clearly beat: of about its size, in its class of use.
PEER_OF = {"aether_tiny": SPAN_BASELINE, "aether_small": SPAN_48}
FLOOR_PRESETS = ("aether_tiny", "aether_small")

RESULTS_JSON = "benchmarks_results.json"
REPORT_NAME = "benchmarks.md"
SPEED_QUALITY_PNG = "benchmarks_speed_quality.png"
LATENCY_MACS_PNG = "benchmarks_latency_vs_macs.png"


def measurement(fmt: str, input_label: str) -> str:
    return f"{fmt} @ {input_label}"


def square_label(size: int) -> str:
    return f"{size}×{size}"


# ---------------------------------------------------------------------------------------
# What a run measured
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


def times_floor(macs_per_pixel: float, lr_pixels: int, median_ms: float, peak_macs_per_s: float) -> float:
    """The measured time divided by the roofline floor (the time the MACs take at this
    machine's peak): 1.0 would be the machine's limit."""
    return (median_ms / 1e3) / (macs_per_pixel * lr_pixels / peak_macs_per_s)


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
    # the same under the sharp LR protocol (cubic without antialiasing); None in runs before it
    psnr_fp32_sharp: float | None = None
    psnr_int8_sharp: float | None = None
    steps: int | None = None  # when models trained for different step counts (equal wall-clock)


@dataclass
class QualityResult:
    scale: int
    steps: int
    training: str  # the shared aether_train.py options
    val_images: list[str]
    bicubic_psnr: float
    input_size: int
    rows: list[QualityRow]
    qat_after: int | None = None  # AetherNet presets: the step where training switched to QAT
    bicubic_psnr_sharp: float | None = None  # bicubic under the sharp LR protocol


@dataclass
class QatResult:
    """QAT's promise on the shipped sample: PSNR of FP32, QAT-INT8 and PTQ-INT8 (all in ONNX
    Runtime) and what a QAT training step costs next to a float one."""

    scale: int
    float_checkpoint: str
    qat_checkpoint: str
    val_dir: str
    calibration: str  # what PTQ was calibrated on
    images: list[str]
    psnr: dict[str, list[float]]  # per method ("bicubic", "FP32", "QAT-INT8", "PTQ-INT8"), per image
    step_setup: str  # model, batch, threads of the step timing
    float_step: Timing
    qat_step: Timing

    def mean(self, method: str) -> float:
        return statistics.fmean(self.psnr[method])


@dataclass
class CompareResults:
    meta: dict[str, Any]  # command, machine, versions, options, wall time
    roofline: Roofline | None = None
    speed: list[SpeedRow] = field(default_factory=list)
    quality: QualityResult | None = None
    # per scale ("2", "4"): every model's INT8 ONNX timed in one interleaved group, so that
    # comparisons across models see the same machine load
    head_to_head: dict[str, dict[str, Timing]] = field(default_factory=dict)
    qat: QatResult | None = None
    # the same at 1280x720 (the --hd-scale), for the presets of PEER_OF and their peers
    head_to_head_hd: dict[str, Timing] = field(default_factory=dict)
    # per held-out folder: trained checkpoints at equal wall-clock budget (aether_bench.py quality's
    # quality_results.json, --zoo-quality); when present it replaces the short-budget quality above
    zoo_quality: dict[str, QualityResult] = field(default_factory=dict)

    def int8_head_to_head(self, model: str, scale: int) -> float | None:
        timing = self.head_to_head.get(str(scale), {}).get(model)
        return None if timing is None else timing.median

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CompareResults":
        return _from_json(cls, json.loads(text))


def _from_json(kind: Any, value: Any) -> Any:
    """``value``, parsed JSON, as the type ``kind``: a dataclass field by field (fields missing
    from older files keep their defaults), containers item by item, X | None as X or None."""
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        fields = [f.name for f in dataclasses.fields(kind) if f.name in value]
        return kind(**{name: _from_json(hints[name], value[name]) for name in fields})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in args if a is not type(None)]
        return None if value is None else _from_json(inner, value)
    if origin is dict:
        return {key: _from_json(args[1], item) for key, item in value.items()}
    if origin is list:
        return [_from_json(args[0], item) for item in value]
    if origin is tuple:
        return tuple(value)
    return value


@dataclass(frozen=True)
class Finding:
    met: bool | None  # None: not judged (not measured in this run, or a broken comparison)
    text: str

    def __str__(self) -> str:
        verdict = {True: "met", False: "**MISSED**", None: "not judged"}[self.met]
        return f"{verdict}: {self.text}"


def find_row(rows: Sequence[SpeedRow], model: str, scale: int) -> SpeedRow | None:
    return next((r for r in rows if r.model == model and r.scale == scale), None)


# ---------------------------------------------------------------------------------------
# Verdicts and tables
# ---------------------------------------------------------------------------------------


def speedup_cell(ratio: float, target: float) -> str:
    cell = f"{ratio:.2f}x"
    return cell if ratio >= target else f"{cell} **MISSED** (target {target:.1f}x)"


def fastest_for_comparison(results: CompareResults, row: SpeedRow, size: int) -> tuple[str, float] | None:
    """(format, median ms) of ``row``'s fastest format; when that is INT8, its time in the
    head-to-head group (timed interleaved with the other models)."""
    fastest = row.fastest(square_label(size))
    interleaved = results.int8_head_to_head(row.model, row.scale)
    if fastest is not None and fastest[0] == ORT_INT8 and interleaved is not None:
        return ORT_INT8, interleaved
    return fastest


def int8_fastest_findings(results: CompareResults, size: int) -> list[Finding]:
    """INT8 ONNX is the fastest format of every preset and >= INT8_SPEEDUP_TARGET x faster than
    FP32 ONNX, at size x size and on the 1280x720 frame."""
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
            f"{ratio:.2f}× faster than FP32 (target {INT8_SPEEDUP_TARGET:g}×, aim {INT8_SPEEDUP_AIM:g}×: "
            f"{'reached' if ratio >= INT8_SPEEDUP_AIM else 'not reached'})"
        )
        met = fastest[0] == ORT_INT8 and ratio >= INT8_SPEEDUP_TARGET
        hd_fp32, hd_int8 = row.median(ORT_FP32, HD_LABEL), row.median(ORT_INT8, HD_LABEL)
        if hd_fp32 is not None and hd_int8 is not None:
            text += f"; at {HD_LABEL}: INT8 {hd_int8:.1f} ms vs FP32 {hd_fp32:.1f} ms, {hd_fp32 / hd_int8:.2f}×"
            met = met and hd_fp32 / hd_int8 >= INT8_SPEEDUP_TARGET
        torch_label = square_label(TORCH_SIZE)
        int8_torch = row.median(ORT_INT8, torch_label)
        slower = [(f, ms) for f in (TORCH_TRAINING_FORM, TORCH_FUSED, TORCH_INT8) if (ms := row.median(f, torch_label))]
        if int8_torch is not None and slower:
            text += f"; at {torch_label}: INT8 {int8_torch:.1f} ms vs " + ", ".join(
                f"{f} {ms:.1f} ms" for f, ms in slower
            )
            met = met and all(int8_torch < ms for _, ms in slower)
        if fastest[0] != ORT_INT8:
            text += f"; the fastest format is {fastest[0]}"
        findings.append(Finding(met, text))
    return findings


def peer_findings(results: CompareResults, size: int) -> list[Finding]:
    """Each small preset's INT8 is >= PEER_SPEEDUP_TARGET x faster than its peer's INT8 (the
    interleaved groups: size x size at every scale, and the 1280x720 frame)."""
    findings = []
    square = square_label(size)
    for preset, peer in PEER_OF.items():
        groups = [
            (f"×{scale} at {square}", results.head_to_head.get(str(scale), {}))
            for scale in sorted(results.head_to_head, key=int)
        ]
        groups.append((f"×{results.meta['options'].get('hd_scale')} at {HD_LABEL}", results.head_to_head_hd))
        for where, group in groups:
            if preset not in group or peer not in group:
                if group:
                    findings.append(Finding(None, f"`{preset}` vs {peer} {where}: not both measured"))
                continue
            ours, theirs = group[preset].median, group[peer].median
            speedup = theirs / ours
            findings.append(
                Finding(
                    speedup >= PEER_SPEEDUP_TARGET,
                    f"`{preset}` vs {peer} {where} (timed interleaved): INT8 {ours:.1f} ms vs {theirs:.1f} ms, "
                    f"{speedup:.2f}× faster (target {PEER_SPEEDUP_TARGET:g}×, aim {PEER_SPEEDUP_AIM:g}×: "
                    f"{'reached' if speedup >= PEER_SPEEDUP_AIM else 'not reached'})",
                )
            )
    return findings


def floor_findings(results: CompareResults, size: int) -> list[Finding]:
    """FLOOR_PRESETS' INT8 runs within FLOOR_TARGET x of this machine's INT8 roofline floor."""
    square = square_label(size)
    findings = []
    for row in (r for r in results.speed if r.model in FLOOR_PRESETS):
        ratio = row_times_floor(row, ORT_INT8, square, results.roofline)
        if ratio is not None:
            findings.append(
                Finding(
                    ratio <= FLOOR_TARGET,
                    f"`{row.model}` ×{row.scale} at {square}: INT8 {row.median(ORT_INT8, square):.1f} ms = "
                    f"{ratio:.2f}× its floor (target ≤ {FLOOR_TARGET:g}×)",
                )
            )
    return findings


def speed_quality_png(index: int) -> str:
    """The scatter plot of the index-th quality table."""
    return SPEED_QUALITY_PNG if index == 0 else SPEED_QUALITY_PNG.replace(".png", f"_{index}.png")


def span_quality_findings(runs: dict[str, QualityResult]) -> list[Finding]:
    """aether_tiny against SPAN-28 in each quality run (keyed by what names it), per LR protocol."""
    findings = []
    for label, quality in runs.items():
        tiny = next((r for r in quality.rows if r.model.startswith("aether_tiny")), None)
        span = next((r for r in quality.rows if r.model.split("@")[0] == SPAN_BASELINE), None)
        if tiny is None or span is None:
            findings.append(Finding(None, f"{label}: aether_tiny and {SPAN_BASELINE} were not both measured"))
            continue
        for protocol, int8, fp32, bicubic in (
            ("aa-bicubic", "psnr_int8", "psnr_fp32", quality.bicubic_psnr),
            ("sharp", "psnr_int8_sharp", "psnr_fp32_sharp", quality.bicubic_psnr_sharp),
        ):
            mine, theirs = getattr(tiny, int8), getattr(span, int8)
            if mine is None or theirs is None:
                continue
            images = len(quality.val_images)
            where = f"{label} ({images} image{'s' if images != 1 else ''}), {protocol} LR"
            span_fp32 = getattr(span, fp32)
            if bicubic is not None and span_fp32 < bicubic:  # beating it then would prove nothing
                findings.append(
                    Finding(
                        None,
                        f"{where}: {span.model} FP32 {span_fp32:.3f} dB is below bicubic's {bicubic:.3f} dB: "
                        "a broken comparison (too short a budget), not a result",
                    )
                )
                continue
            findings.append(
                Finding(
                    mine >= theirs,
                    f"{where}: {tiny.model} INT8 {mine:.3f} dB, {span.model} INT8 {theirs:.3f} dB "
                    f"({mine - theirs:+.3f} dB; FP32: {getattr(tiny, fp32):.3f} vs {span_fp32:.3f} dB)",
                )
            )
    return findings


def quality_findings(results: CompareResults) -> list[Finding]:
    """aether_tiny INT8 has equal or better PSNR than SPAN-28 INT8 at equal training budget."""
    if results.zoo_quality:
        return span_quality_findings({f"×{q.scale} `{folder}`": q for folder, q in results.zoo_quality.items()})
    if results.quality is None:
        return [Finding(None, f"quality: aether_tiny and {SPAN_BASELINE} were not trained")]
    quality = results.quality
    return span_quality_findings({f"quality ×{quality.scale} after {quality.steps} steps each": quality})


def rrdb_findings(results: CompareResults, size: int) -> list[Finding]:
    """Every preset in its fastest format is >= 50x faster than RRDB in its fastest format."""
    findings = []
    square = square_label(size)
    for row in (r for r in results.speed if r.family == "AetherNet"):
        rrdb = find_row(results.speed, RRDB, row.scale)
        if rrdb is None or rrdb.fastest(square) is None or row.fastest(square) is None:
            findings.append(Finding(None, f"`{row.model}` ×{row.scale}: {RRDB} not measured"))
            continue
        (fmt, ms), (rrdb_fmt, rrdb_ms) = (
            fastest_for_comparison(results, row, size),
            fastest_for_comparison(results, rrdb, size),
        )
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


def row_times_floor(row: SpeedRow, fmt: str, input_label: str, roofline: Roofline | None) -> float | None:
    median = row.median(fmt, input_label)
    if median is None or roofline is None:
        return None
    return times_floor(row.macs_per_lr_pixel, row.lr_pixels[input_label], median, roofline.peak(fmt))


def floor_cell(row: SpeedRow, fmt: str, input_label: str, roofline: Roofline | None) -> str:
    ratio = row_times_floor(row, fmt, input_label, roofline)
    return "—" if ratio is None else f"{ratio:.2f}×"


def ratio_cell(numerator: float | None, denominator: float | None, target: float | None) -> str:
    if numerator is None or denominator is None:
        return "—"
    ratio = numerator / denominator
    return speedup_cell(ratio, target) if target is not None else f"{ratio:.2f}x"


def speed_table(results: CompareResults, size: int) -> str:
    square = square_label(size)
    header = (
        "model",
        "scale",
        "params (M)",
        "MACs/LR px (K)",
        "ORT FP32 ms",
        "ORT FP16 ms",
        "ORT INT8 ms",
        "INT8 from",
        "INT8 speed-up",
        "FP32 ÷ floor",
        "INT8 ÷ floor",
        "fastest vs RRDB",
        "CPU used by others",
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
                ratio_cell(
                    row.median(ORT_FP32, square), row.median(ORT_INT8, square), INT8_SPEEDUP_TARGET if preset else None
                ),
                floor_cell(row, ORT_FP32, square, results.roofline),
                floor_cell(row, ORT_INT8, square, results.roofline),
                ratio_cell(
                    rrdb_fastest and rrdb_fastest[1], fastest and fastest[1], RRDB_SPEEDUP_TARGET if preset else None
                ),
                f"{row.others_cpu_share:.0%}",
            )
        )
    return markdown_table(header, rows)


def head_to_head_table(results: CompareResults) -> str | None:
    if not results.head_to_head:
        return None
    scales = sorted(results.head_to_head, key=int)
    models = list(dict.fromkeys(name for scale in scales for name in results.head_to_head[scale]))
    columns = [(f"ORT INT8 ms at ×{scale}", results.head_to_head[scale]) for scale in scales]
    if results.head_to_head_hd:
        columns.append(
            (f"ORT INT8 ms at {HD_LABEL} ×{results.meta['options'].get('hd_scale')}", results.head_to_head_hd)
        )
    rows = [
        (f"`{name}`" if name in PRESET_FACTORIES else name, *(str(group.get(name, "—")) for _, group in columns))
        for name in models
    ]
    return markdown_table(("model", *(title for title, _ in columns)), rows)


def hd_table(results: CompareResults) -> str | None:
    measured = [r for r in results.speed if HD_LABEL in r.lr_pixels]
    if not measured:
        return None
    header = (
        "model",
        "scale",
        "input",
        "ORT FP32 ms",
        "ORT INT8 ms",
        "INT8 speed-up",
        "FP32 ÷ floor",
        "INT8 ÷ floor",
    )
    rows = []
    for row in measured:
        pixels = row.lr_pixels[HD_LABEL]
        tiles = pixels // HD_TILE**2 if pixels != HD_HEIGHT * HD_WIDTH else 0
        rows.append(
            (
                f"`{row.model}`" if row.family == "AetherNet" else row.model,
                f"×{row.scale}",
                f"{tiles} tiles of {square_label(HD_TILE)}" if tiles else "whole frame",
                timing_cell(row, ORT_FP32, HD_LABEL),
                timing_cell(row, ORT_INT8, HD_LABEL),
                ratio_cell(
                    row.median(ORT_FP32, HD_LABEL),
                    row.median(ORT_INT8, HD_LABEL),
                    INT8_SPEEDUP_TARGET if row.family == "AetherNet" else None,
                ),
                floor_cell(row, ORT_FP32, HD_LABEL, results.roofline),
                floor_cell(row, ORT_INT8, HD_LABEL, results.roofline),
            )
        )
    return markdown_table(header, rows)


def torch_table(results: CompareResults) -> str | None:
    label = square_label(TORCH_SIZE)
    measured = [r for r in results.speed if label in r.lr_pixels]
    if not measured:
        return None
    header = (
        "preset",
        "scale",
        "torch training form ms",
        "torch fused ms",
        "fusion speed-up",
        "torch INT8 .pth ms",
        "ORT INT8 ms",
    )
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
    """PSNR under each LR protocol (FP32 / INT8, and INT8's gain over bicubic on the same LR)."""
    sharp = quality.bicubic_psnr_sharp is not None

    def cells(fp32: float | None, int8: float | None, bicubic: float | None) -> tuple[str, ...]:
        gain = f" ({int8 - bicubic:+.2f})" if sharp and None not in (int8, bicubic) else ""
        return ("—" if fp32 is None else f"{fp32:.3f}", "—" if int8 is None else f"{int8:.3f}{gain}")

    protocols = ["aa-bicubic LR", "sharp LR"] if sharp else [""]
    header = (
        "model",
        "params (M)",
        "MACs/LR px (K)",
        "training wall time",
        *(f"{fmt} PSNR dB{', ' + p if p else ' (ORT)'}" for p in protocols for fmt in ("FP32", "INT8")),
        "INT8 from",
        f"INT8 latency ms, {square_label(quality.input_size)} ×{quality.scale}",
    )
    bicubic = [f"{quality.bicubic_psnr:.3f}", "—"] + ([f"{quality.bicubic_psnr_sharp:.3f}", "—"] if sharp else [])
    rows = [("bicubic", "—", "—", "—", *bicubic, "—", "—")]
    for row in quality.rows:
        steps = row.steps or quality.steps
        psnrs = cells(row.psnr_fp32, row.psnr_int8, quality.bicubic_psnr)
        if sharp:
            psnrs += cells(row.psnr_fp32_sharp, row.psnr_int8_sharp, quality.bicubic_psnr_sharp)
        rows.append(
            (
                f"`{row.model}`" if row.model in PRESET_FACTORIES else row.model,
                f"{row.params / 1e6:.3f}",
                f"{row.macs_per_lr_pixel / 1e3:.1f}",
                f"{row.train_s:.0f} s ({steps} steps, {row.train_s / steps:.2f} s/step)" if row.train_s else "—",
                *psnrs,
                row.int8_method,
                str(row.int8_latency),
            )
        )
    return markdown_table(header, rows)


def below_bicubic(result: QualityResult) -> list[str]:
    """A model under bicubic means its training is broken (too short, wrong settings)."""
    found = []
    for row in result.rows:
        for protocol, value, bicubic in (
            ("aa-bicubic", row.psnr_fp32, result.bicubic_psnr),
            ("sharp", row.psnr_fp32_sharp, result.bicubic_psnr_sharp),
        ):
            if value is not None and bicubic is not None and value < bicubic:
                found.append(f"{row.model} FP32 is below bicubic with {protocol} LR ({value:.3f} < {bicubic:.3f} dB)")
    return found


def quality_table_section(quality: QualityResult, plot: str) -> list[str]:
    """A quality table, its plot and the models below bicubic."""
    marks = [f"* **BELOW BICUBIC**: {b}" for b in below_bicubic(quality)]
    return [quality_table(quality), "", f"![speed vs quality]({plot})", "", *marks, *([""] if marks else [])]


def quality_folder_section(folder: str, quality: QualityResult, plot: str) -> list[str]:
    """One held-out folder's quality table, its plot and the models below bicubic."""
    return [f"### `{folder}` ({len(quality.val_images)} images)", "", *quality_table_section(quality, plot)]


def qat_findings(qat: QatResult | None) -> list[Finding]:
    """QAT-INT8 is within QAT_GAP_TARGET_DB of FP32 on the shipped sample, and better than PTQ."""
    if qat is None:
        return [Finding(None, "QAT on the shipped sample was not measured")]
    gap = qat.mean("FP32") - qat.mean("QAT-INT8")
    ptq_gap = qat.mean("FP32") - qat.mean("PTQ-INT8")
    return [
        Finding(
            gap <= QAT_GAP_TARGET_DB and gap < ptq_gap,
            f"×{qat.scale} sample: QAT-INT8 is {gap:+.3f} dB below FP32 (target ≤ {QAT_GAP_TARGET_DB} dB, aim ≤ "
            f"{QAT_GAP_AIM_DB} dB: {'reached' if gap <= QAT_GAP_AIM_DB else 'not reached'}); PTQ-INT8 is "
            f"{ptq_gap:+.3f} dB below FP32 (QAT better than PTQ: {'yes' if gap < ptq_gap else 'NO'})",
        )
    ]


def qat_sections(qat: QatResult) -> list[str]:
    rows = [[name, *(f"{qat.psnr[method][i]:.3f}" for method in qat.psnr)] for i, name in enumerate(qat.images)]
    rows.append(["**mean**", *(f"**{qat.mean(method):.3f}**" for method in qat.psnr)])
    ratio = qat.qat_step.median / qat.float_step.median
    return [
        "## QAT: INT8 quality on the shipped sample, and the cost of a QAT step",
        "",
        markdown_table(["image", *(f"{method} dB" for method in qat.psnr)], rows),
        "",
        f"`{qat.float_checkpoint}` (float) and `{qat.qat_checkpoint}` (its QAT fine-tune), ×{qat.scale}, "
        f"released as aether_release.py makes them (FP32: the fused float model; QAT-INT8: the QAT "
        f"checkpoint's own ranges; PTQ-INT8: the float model calibrated on {qat.calibration}), run in ONNX "
        f"Runtime; PSNR: RGB, 8-bit, border {qat.scale}, held-out images of `{qat.val_dir}` (LR by "
        "antialiased bicubic).",
        "",
        f"Training step ({qat.step_setup}), interleaved: float training form {qat.float_step} ms, QAT "
        f"{qat.qat_step} ms: a QAT step costs {ratio:.2f}× a float step.",
        "",
    ]


def zoo_quality_sections(zoo: dict[str, QualityResult], source: str) -> list[str]:
    sections = ["## Quality at equal wall-clock training budget", ""]
    for index, (folder, quality) in enumerate(zoo.items()):
        sections += quality_folder_section(folder, quality, speed_quality_png(index))
    report = Path(source).with_name("quality.md")
    sections += [
        f"From `{source}` (aether_bench.py quality; its report `{report}` gives the command and each "
        "checkpoint's training command). Each model trained on the same data for about the same wall-clock "
        "seconds of training steps on this machine (the training wall time column: an AetherNet model's counts "
        "every stage behind it, float and QAT); each peer in one float run (aether_bench.py train-peer) with its "
        "authors' learning rate and settings, for the steps that fill that budget at its measured step time "
        "(aether_bench.py step-budget). The training commands give each model's degradation kernels: where an "
        "AetherNet model's later stages narrowed them to the two measured here, it had that advantage. "
        "PSNR: RGB, 8-bit, border = scale, in ONNX Runtime, on held-out images never trained on, under "
        "both LR protocols (aa-bicubic: antialiased bicubic; sharp: cubic without antialiasing; LR rounded to 8 bits); "
        "(+x.xx) = INT8 − bicubic on the same LR. AetherNet's INT8 is its QAT checkpoint's Q/DQ export, "
        "a peer's ORT static PTQ. This replaces the short equal-step comparison of the runs before it.",
        "",
    ]
    return sections


def compare_markdown(results: CompareResults) -> str:
    meta = results.meta
    size = meta["options"]["size"]
    sections = [
        "# AetherNet and its peers: speed and quality on one machine",
        "",
        f"Generated by `{meta['command']}` (do not edit by hand; rerun it). Started {meta['started']}, "
        f"took {meta.get('wall_s', float('nan')) / 60:.1f} min."
        + "".join(f" Amended: {amendment}." for amendment in meta.get("amended", [])),
        "",
        f"Machine: {meta['machine']}. Versions: {meta['versions']}.",
        "",
    ]
    square = square_label(size)
    pairs = ", ".join(f"`{preset}` vs {peer}" for preset, peer in PEER_OF.items())
    checks = {
        f"INT8 ONNX is the fastest format of every preset, ≥ {INT8_SPEEDUP_TARGET:g}× faster than FP32 ONNX at "
        f"{square} and {HD_LABEL} (aim ≥ {INT8_SPEEDUP_AIM:g}×)": int8_fastest_findings(results, size),
        f"INT8 ≥ {PEER_SPEEDUP_TARGET:g}× faster than the closest peer's INT8 ({pairs}; aim {PEER_SPEEDUP_AIM:g}×)": (
            peer_findings(results, size)
        ),
        f"{' and '.join(f'`{p}`' for p in FLOOR_PRESETS)} INT8 within {FLOOR_TARGET:g}× of the INT8 roofline floor "
        f"at {square}": floor_findings(results, size),
        f"`aether_tiny` INT8 has equal or better PSNR than {SPAN_BASELINE} INT8 at equal training budget": (
            quality_findings(results)
        ),
        f"Every preset (fastest format) is ≥ {RRDB_SPEEDUP_TARGET:.0f}× faster than RRDB (fastest format) at "
        f"{square}": rrdb_findings(results, size),
        f"QAT-INT8 is within {QAT_GAP_TARGET_DB} dB of FP32 on the shipped sample, and better than PTQ-INT8": (
            qat_findings(results.qat)
        ),
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
            f'{", ".join(f"{share:.0%}" for share in roofline.others_cpu_shares)}). A row\'s "÷ floor" '
            "is its time ÷ (its MACs ÷ peak): 1.00× would be this machine's limit; FP16 rows are judged "
            "against the FP32 peak. A ratio below 1 means the peak was measured while other processes took "
            "CPU time and is too low.",
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
                f"×{meta['options']['hd_scale']}, {square_label(TORCH_SIZE)} input, torch eval mode (the "
                "training form adding up its branches: in eval it would run its fused kernels; the INT8 "
                ".pth on oneDNN's int8 kernels, see also `aether_bench.py pth-int8`), interleaved with ORT INT8 on "
                "the same input, one warm-up and at least 2 timed rounds. Fusion speed-up target: "
                f"{FUSION_SPEEDUP_TARGET:.1f}×.",
                "",
            ]
    if results.zoo_quality:
        sections += zoo_quality_sections(results.zoo_quality, meta.get("zoo_quality", "?"))
    elif results.quality is not None:
        quality = results.quality
        sections += [
            "## Quality at equal training budget",
            "",
            *quality_table_section(quality, SPEED_QUALITY_PNG),
            "Every model trained from scratch by aether_train.py's training loop (`aether_training.Trainer`) with "
            f"the same data, "
            f"degradation (aether_train.py's default recipe, ×{quality.scale}), loss, AdamW, cosine schedule and EMA, "
            f"for {quality.steps} steps each: `{quality.training}`. AetherNet presets train float for "
            f"{quality.qat_after or 'most of the'} steps, then QAT for the rest (`--qat-after`): their FP32 "
            "figure is the float EMA at the switch, their INT8 the QAT model's Q/DQ export. Peers train "
            "float for all steps; their INT8 is `quantize_static` calibrated on LR crops of the training "
            f"images. PSNR: RGB, 8-bit, border {quality.scale}, mean over the held-out images "
            f"{', '.join(quality.val_images)} (never trained on), run in ONNX Runtime. Training wall time "
            "differs per model at the same step count (it is part of the comparison). Short CPU budgets "
            "favour fast-converging models; the figures compare training recipes of equal cost, not "
            "fully trained models, and a peer below bicubic is a broken comparison (too short a budget), not a "
            "result: `aether_bench.py quality` on checkpoints trained at equal wall-clock (`--zoo-quality`) "
            "replaces this section.",
            "",
        ]
    if results.speed:
        sections += [f"![latency vs MACs]({LATENCY_MACS_PNG})", ""]
    if results.qat is not None:
        sections += qat_sections(results.qat)
    peers = meta.get("peers", {})
    if peers:
        sections += ["## Peers", "", "Built from Spandrel's architecture code with random weights:", ""]
        sections += [f"- {name}: {description}." for name, description in peers.items()]
        sections += [""]
    sections += ["## Options of this run", "", "```json", json.dumps(meta["options"], indent=1, sort_keys=True), "```"]
    return "\n".join(sections) + "\n"


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def save_results(results: CompareResults, out_dir: Path) -> None:
    """Written after every step of a run, so an interrupted run keeps what it measured."""
    with atomic_write(out_dir / RESULTS_JSON) as tmp:
        Path(tmp).write_text(results.to_json(), encoding="utf-8")


def load_results(out_dir: Path) -> CompareResults:
    return CompareResults.from_json((out_dir / RESULTS_JSON).read_text(encoding="utf-8"))


def load_zoo_quality(path: str) -> dict[str, QualityResult]:
    """aether_bench.py quality's quality_results.json: per held-out folder, its QualityResult."""
    try:
        parsed = json.loads(Path(path).read_text(encoding="utf-8"))
        zoo = _from_json(dict[str, QualityResult], parsed)
        if not zoo or not all(result.rows for result in zoo.values()):
            raise ValueError("no measured models")
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(
            f"--zoo-quality {path}: not an aether_bench.py quality quality_results.json ({exc}); rerun quality"
        ) from None
    return zoo


def write_report(results: CompareResults, out_dir: Path) -> str:
    """Write DIR/benchmarks.md; return it."""
    report = compare_markdown(results)
    with atomic_write(out_dir / REPORT_NAME) as tmp:
        Path(tmp).write_text(report, encoding="utf-8")
    return report
