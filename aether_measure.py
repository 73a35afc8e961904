"""How the benchmarks measure: latency in interleaved rounds (medians with spread), the share
of the CPU other processes took meanwhile, and a network's size (parameters, MACs per
low-resolution pixel).

MACs are counted over every convolution (output elements x in_channels/groups x kH x kW);
PixelShuffle, ReLU, additions and concatenations are counted as free.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from aether_arch import ONNX_INPUT_NAME, AetherNet
from aether_bench_report import Timing
from aether_runtime import onnx_input_dtype

WARMUP_ROUNDS = 2
# Slow models get fewer timed rounds (see time_interleaved), but never fewer than this.
MIN_ROUNDS = 3


# ---------------------------------------------------------------------------------------
# Size and compute
# ---------------------------------------------------------------------------------------


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_lr_pixel(model: nn.Module, in_channels: int = 3, size: int = 8) -> float:
    """Multiply-accumulates of every nn.Conv2d in ``model`` per input (LR) pixel, counted
    with forward hooks on one 1 x in_channels x size x size input. An AetherNet is counted in
    its deploy form: in eval mode the training form runs those same fused convs."""
    if isinstance(model, AetherNet) and not model.fused:
        model = copy.deepcopy(model).fuse()
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


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


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


def session_runner(session: ort.InferenceSession, image: np.ndarray) -> Callable[[], object]:
    """One run of ``session`` on ``image``, cast once to the session's input type (an FP16 model
    takes float16 input, as the release's model_fp16.onnx does)."""
    return functools.partial(session.run, None, {ONNX_INPUT_NAME: image.astype(onnx_input_dtype(session))})


def time_sessions(
    sessions: Mapping[str, ort.InferenceSession], image: np.ndarray, repeats: int, budget_s: float
) -> dict[str, Timing]:
    """Latency of each session on ``image``, timed interleaved (see time_interleaved)."""
    return time_interleaved(
        {name: session_runner(session, image) for name, session in sessions.items()},
        repeats,
        budget_s,
    )
