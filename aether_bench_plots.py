"""The two plots of ``aether_bench.py compare``'s report, drawn from its results: quality at
equal training budget against INT8 latency, and every model's latency against its MACs with
the roofline's FP32 and INT8 floors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from aether_arch import PRESET_FACTORIES, atomic_write
from aether_bench_report import (
    LATENCY_MACS_PNG,
    ORT_FP32,
    ORT_INT8,
    RRDB,
    SPEED_QUALITY_PNG,
    CompareResults,
    QualityResult,
    speed_quality_png,
    square_label,
)

AETHER_COLOR, PEER_COLOR, RRDB_COLOR = "tab:blue", "tab:orange", "tab:red"


def family_color(model: str) -> str:
    return AETHER_COLOR if model in PRESET_FACTORIES else RRDB_COLOR if model == RRDB else PEER_COLOR


def _plain_log_ticks(*axes_list: Any) -> None:
    """Log axes labelled 20, 50, 100 rather than 2×10^1; the 2 and 5 between the decades only
    where the axis spans fewer than three decades (else they crowd)."""

    def minor(axis: Any) -> FuncFormatter:
        def label(value: float, _: int) -> str:
            low, high = axis.get_view_interval()
            mantissa = round(value / 10 ** math.floor(math.log10(value)))
            return f"{value:g}" if mantissa in (2, 5) and high / low < 1000 else ""

        return FuncFormatter(label)

    for axis in axes_list:
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(minor(axis))


def save_plot(figure: Figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png")


def speed_quality_plot(quality: QualityResult, where: str = "") -> Figure:
    figure = Figure(figsize=(10, 6.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    # filled: the benchmark protocol (antialiased bicubic LR); hollow: sharp LR, when measured
    protocols = [("", "psnr_int8", quality.bicubic_psnr, True)]
    if quality.bicubic_psnr_sharp is not None:
        protocols = [("aa-bicubic", "psnr_int8", quality.bicubic_psnr, True)]
        protocols.append(("sharp", "psnr_int8_sharp", quality.bicubic_psnr_sharp, False))
    for label, field, bicubic, filled in protocols:
        for row in quality.rows:
            value, color = getattr(row, field), family_color(row.model)
            if value is None:
                continue
            axes.scatter(row.int8_latency.median, value, s=50, color=color if filled else "none", edgecolors=color)
            axes.annotate(
                f"{row.model} INT8{', ' + label if label else ''}",
                (row.int8_latency.median, value),
                textcoords="offset points",
                xytext=(7, 5),
                color=color,
            )
        axes.axhline(bicubic, color="grey", linewidth=1.5, linestyle="-" if filled else ":")
        axes.annotate(
            f"bicubic{', ' + label if label else ''}",
            (1, bicubic),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(-90, 5),
            color="grey",
        )
    axes.set_xscale("log")
    axes.margins(x=0.15)
    _plain_log_ticks(axes.xaxis)
    if any(row.steps for row in quality.rows):  # trained checkpoints, each with its own run
        on = f", {where}" if where else ""
        axes.set_title(f"Quality of trained checkpoints vs INT8 speed (×{quality.scale}{on}; filled: aa-bicubic LR)")
    else:
        axes.set_title(f"Quality at equal training budget ({quality.steps} steps, ×{quality.scale}) vs INT8 speed")
    axes.set_xlabel(f"ORT INT8 latency, ms (1×3×{quality.input_size}×{quality.input_size}, log scale)")
    axes.set_ylabel("PSNR on held-out images, dB")
    axes.grid(True, which="both", color="0.9")
    return figure


def latency_macs_plot(results: CompareResults, scale: int) -> Figure:
    """Every model's FP32 (hollow) and INT8 (filled) latency against its MACs, with the
    roofline's FP32 and INT8 floors."""
    size = results.meta["options"]["size"]
    square = square_label(size)
    figure = Figure(figsize=(10, 6.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    macs = [row.macs_per_lr_pixel / 1e3 for row in results.speed if row.scale == scale]
    for row in (r for r in results.speed if r.scale == scale):
        color, x = family_color(row.model), row.macs_per_lr_pixel / 1e3
        for fmt, filled in ((ORT_FP32, False), (ORT_INT8, True)):
            median = row.median(fmt, square)
            if median is not None:
                axes.scatter(x, median, s=50, color=color if filled else "none", edgecolors=color)
                if filled:
                    axes.annotate(row.model, (x, median), textcoords="offset points", xytext=(7, 5), color=color)
    if results.roofline is not None:
        span = [min(macs) / 2, max(macs) * 2]
        for fmt, style in ((ORT_FP32, "--"), (ORT_INT8, ":")):
            peak = results.roofline.peak(fmt)
            floor_ms = [k * 1e3 * size**2 / peak * 1e3 for k in span]
            axes.plot(span, floor_ms, style, color="grey", label=f"{fmt.split()[-1]} floor ({peak / 1e9:.0f} GMAC/s)")
        axes.legend(loc="upper left")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.margins(x=0.12)
    _plain_log_ticks(axes.xaxis, axes.yaxis)
    axes.set_title(f"Latency vs compute at {square}, ×{scale} (filled: INT8, hollow: FP32; lines: roofline floors)")
    axes.set_xlabel("MACs per LR pixel, K (log scale)")
    axes.set_ylabel("ORT latency, ms (log scale)")
    axes.grid(True, which="both", color="0.9")
    return figure


def write_plots(results: CompareResults, out_dir: Path) -> list[Path]:
    written = []
    for index, (folder, quality) in enumerate(results.zoo_quality.items()):
        save_plot(speed_quality_plot(quality, folder), out_dir / speed_quality_png(index))
        written.append(out_dir / speed_quality_png(index))
    if not results.zoo_quality and results.quality is not None and results.quality.rows:
        save_plot(speed_quality_plot(results.quality), out_dir / SPEED_QUALITY_PNG)
        written.append(out_dir / SPEED_QUALITY_PNG)
    if results.speed:
        save_plot(latency_macs_plot(results, max(row.scale for row in results.speed)), out_dir / LATENCY_MACS_PNG)
        written.append(out_dir / LATENCY_MACS_PNG)
    return written
