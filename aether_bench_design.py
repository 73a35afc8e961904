"""The design study behind AetherNet v2's blocks (``aether_bench.py design``): candidate bodies
of the same family (a head conv, residual blocks of a 3x3 conv -> ReLU -> k x k conv, a tail
conv, sub-pixel output convs plus an input shortcut), each measured for

* speed: its fused graph with random weights, FP32 and ONNX Runtime static INT8 (QDQ, the peers'
  path), 256x256 at x2, timed interleaved with SPAN-28 INT8, and its INT8 time ÷ roofline floor;
* quality: its training form (RepConv branches with BatchNorm) trained by aether_train.py's loop
  with the benchmark's equal-budget recipe, FP32 PSNR on held-out images.

The chosen v2 tiny is the candidate ``c48 L,S,L k5, 1x1 out``; the README's architecture
section quotes a committed run of this study.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from aether_arch import RepConv, fuse_children
from aether_bench_quality import bicubic_upscaler, held_out_pairs, psnr_per_image
from aether_bench_report import SPAN_BASELINE, Timing, times_floor
from aether_cli import markdown_table
from aether_measure import macs_per_lr_pixel, session_runner, time_interleaved
from aether_peers import PEERS, onnx_bytes, peer_deploy_form, static_int8_bytes
from aether_runtime import ort_session
from aether_training import Processes, Trainer, TrainingOptions, TrainingPolicy, seed_everything


@dataclass(frozen=True)
class Design:
    dim: int
    kernels: tuple[int, ...]  # each block's second conv
    output_kernel: int = 1  # the sub-pixel conv's and the shortcut's


# name -> design; "L,S,L k5": blocks alternate a 5x5 and a 3x3 second conv
DESIGNS = {
    "c32 8 x 3x3, 3x3 out": Design(32, (3,) * 8, 3),
    "c32 4 x 5x5, 3x3 out": Design(32, (5,) * 4, 3),
    "c48 4 x 3x3, 3x3 out": Design(48, (3,) * 4, 3),
    "c48 4 x 3x3, 1x1 out": Design(48, (3,) * 4),
    "c32 4 x 5x5, 1x1 out": Design(32, (5,) * 4),
    "c64 2 x 3x3, 1x1 out": Design(64, (3,) * 2),
    "c48 3 x 5x5, 1x1 out": Design(48, (5,) * 3),
    "c48 L,S,L k5, 3x3 out": Design(48, (5, 3, 5), 3),
    "c48 L,S,L k5, 1x1 out": Design(48, (5, 3, 5)),
}


class Candidate(nn.Module):
    """A candidate body in its training form; ``fuse_children`` makes its deploy form."""

    def __init__(self, design: Design, scale: int) -> None:
        super().__init__()
        c, k = design.dim, design.output_kernel
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([RepConv(c, c, (3, 1)), RepConv(c, c, (kernel, 3) if kernel > 3 else (3, 1))])
            for kernel in design.kernels
        )
        self.tail = RepConv(c, c, (3, 1))
        self.upsample = nn.Conv2d(c, 3 * scale * scale, k, padding=k // 2)
        self.skip = nn.Conv2d(3, 3 * scale * scale, k, padding=k // 2)
        self.shuffle = nn.PixelShuffle(scale)
        with torch.no_grad():  # as AetherNet: start as nearest-neighbour upsampling
            for module in [self.upsample.weight, self.upsample.bias, self.skip.weight, self.skip.bias]:
                module.zero_()
            for _, second in self.blocks:
                for module in second.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        nn.init.zeros_(module.weight)
            for channel in range(3):
                self.skip.weight[channel * scale * scale : (channel + 1) * scale * scale, channel, k // 2, k // 2] = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        y = feat
        for first, second in self.blocks:
            y = y + second(torch.relu(first(y)))
        out = self.shuffle(self.upsample(feat + self.tail(y)) + self.skip(x))
        return out if self.training else out.clamp(0, 1)


def random_deploy_form(design: Design, scale: int) -> nn.Module:
    """Fused, with random weights of a realistic spread (speed does not depend on them)."""
    model = Candidate(design, scale).eval()
    fuse_children(model)
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        nn.init.normal_(conv.weight, std=0.5 / (conv.in_channels * conv.kernel_size[0] ** 2) ** 0.5)
        nn.init.normal_(conv.bias, std=0.01)
    return model


def measure_speed(args: argparse.Namespace) -> dict[str, tuple[float, Timing, Timing]]:
    """name -> (MACs per LR pixel, FP32 timing, INT8 timing), SPAN-28 included."""
    models = {SPAN_BASELINE: peer_deploy_form(PEERS[SPAN_BASELINE].build(args.scale))}
    models.update({name: random_deploy_form(design, args.scale) for name, design in DESIGNS.items()})
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    fp32 = {name: onnx_bytes(model) for name, model in models.items()}
    sessions = {name: ort_session(static_int8_bytes(graph), threads=args.threads) for name, graph in fp32.items()}
    int8 = time_interleaved({n: session_runner(s, image) for n, s in sessions.items()}, args.repeats, args.budget_s)
    sessions = {name: ort_session(graph, threads=args.threads) for name, graph in fp32.items()}
    fp32_timings = time_interleaved({n: session_runner(s, image) for n, s in sessions.items()}, 5, args.budget_s)
    return {name: (macs_per_lr_pixel(model), fp32_timings[name], int8[name]) for name, model in models.items()}


def measure_quality(args: argparse.Namespace, design: Design) -> float:
    """FP32 PSNR of the EMA after ``args.budget`` steps of the equal-budget recipe."""
    with tempfile.TemporaryDirectory(prefix="aether_design_") as out_dir:
        options = TrainingOptions(
            train_dir=[args.train_dir], steps=args.budget, scale=args.scale, lr_patch=32, batch_size=16, lr=1e-3,
            threads=args.threads, seed=0, val_every=0, save_every=0, log_every=args.budget, out_dir=out_dir,
        ).check()  # fmt: skip
        seed_everything(options.seed)
        trainer = Trainer(Candidate(design, args.scale), options, Processes(0, 1, torch.device("cpu")),
                          command="aether_bench.py design", policy=TrainingPolicy())  # fmt: skip
        try:
            trainer.run()
        finally:
            trainer.close()
    pairs = held_out_pairs(args.val_dir, args.scale)
    model = trainer.ema.module.eval()
    with torch.no_grad():
        return statistics.fmean(psnr_per_image(lambda lr: model(torch.from_numpy(lr)).numpy(), pairs, args.scale))


def design_report(args: argparse.Namespace, peak_int8: float, progress: Callable[[str], None]) -> str:
    speed = measure_speed(args)
    progress("speed measured")
    span_ms = speed[SPAN_BASELINE][2].median
    pairs = held_out_pairs(args.val_dir, args.scale)
    bicubic = statistics.fmean(psnr_per_image(bicubic_upscaler(args.scale), pairs, args.scale))
    rows = []
    for name, (macs, fp32, int8) in speed.items():
        quality = "—" if name == SPAN_BASELINE or args.skip_quality else f"{measure_quality(args, DESIGNS[name]):.3f}"
        floor = times_floor(macs, args.size**2, int8.median, peak_int8)
        rows.append([name, f"{macs / 1e3:.1f}", str(fp32), str(int8), f"{fp32.median / int8.median:.2f}×",
                     f"{span_ms / int8.median:.2f}×", f"{floor:.2f}×", quality])  # fmt: skip
        progress(f"{name} done")
    header = ["design", "MACs/LR px (K)", "FP32 ms", "INT8 ms", "INT8 speed-up", "vs SPAN-28 INT8", "INT8 ÷ floor",
              f"FP32 PSNR dB after {args.budget} steps"]  # fmt: skip
    return "\n".join([
        f"## Design study: candidate v2 bodies (×{args.scale}, {args.size}×{args.size}, {args.threads} threads)",
        "",
        markdown_table(header, rows),
        "",
        f"Speed: fused graphs with random weights, ONNX Runtime static INT8 (QDQ, per-channel weights, uint8 "
        f"activations), all INT8 sessions timed interleaved, then all FP32 ones; floor at {peak_int8 / 1e9:.0f} "
        f"GMAC/s. Quality: training form trained from scratch with `--steps {args.budget} --lr-patch 32 "
        f"--batch-size 16 --lr 1e-3 --seed 0` on `{args.train_dir}`, FP32 EMA, PSNR (RGB, 8-bit, border "
        f"{args.scale}) on `{args.val_dir}`; bicubic {bicubic:.3f} dB. L,S,L: the blocks' second convs alternate "
        "large (k×k) and 3×3. \"1×1 out\": 1×1 sub-pixel conv and shortcut instead of 3×3.",
        "",
    ])  # fmt: skip
