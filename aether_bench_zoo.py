"""The fair peer comparison behind ``aether_bench.py step-budget``, ``train-peer`` and ``quality``.

* ``step-budget``: one training step of ``aether_tiny`` (float and QAT) and of each peer, each
  with the settings its authors recommend (PEER_TRAINING), timed interleaved on this machine;
  from them the number of steps that gives every peer the same wall-clock budget as an AetherNet
  run of ``--reference-steps`` float + ``--qat-steps`` QAT steps.
* ``train-peer NAME``: trains a peer with aether_train.py's training loop (the same data,
  degradation recipe, schedule and EMA as the zoo), resumable with ``--resume``.
* ``quality``: PSNR of trained checkpoints (zoo models and peers) in ONNX Runtime, FP32 and
  INT8, under both LR protocols on every held-out folder, each next to bicubic's on the same
  LR, with INT8 latency timed interleaved; a Markdown table and a scatter plot.

A peer below bicubic means the comparison is broken (too short, a wrong learning rate), not that
the peer is bad: ``quality`` marks it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from aether_arch import PRESET_FACTORIES, float_copy, load_model, prepare_qat, read_checkpoint
from aether_bench_quality import bicubic_upscaler, calibration_crops, onnx_upscaler, psnr_per_image
from aether_bench_report import Timing
from aether_cli import InputError, markdown_table, whole_number
from aether_data import evaluation_pair, list_images, read_image
from aether_degrade import PROTOCOLS, RECIPES
from aether_measure import macs_per_lr_pixel, parameter_count, time_interleaved, time_sessions
from aether_peers import PEERS, onnx_bytes, peer_deploy_form, static_int8_bytes
from aether_runtime import onnx_models, ort_session
from aether_training import Processes, Trainer, TrainingOptions, TrainingPolicy, loss_function

REFERENCE = "aether_tiny"


@dataclass(frozen=True)
class Recommended:
    """A network's training settings as its authors (or the framework its users train in) give them."""

    lr: float
    loss: str
    lr_patch: int
    batch_size: int
    beta2: float
    source: str


TRAINNER_TEMPLATES = "traiNNer-redux (git 6862931) options/_templates/train"
PEER_TRAINING = {
    "SPAN-28": Recommended(
        5e-4, "charbonnier", 64, 16, 0.99, f"{TRAINNER_TEMPLATES}/SPAN/SPAN_S_fidelity.yml (the paper: batch 64)"
    ),
    "UltraCompact": Recommended(
        2e-4, "charbonnier", 96, 16, 0.99, f"{TRAINNER_TEMPLATES}/Compact/UltraCompact_fidelity.yml"
    ),
}
AETHER_TRAINING = Recommended(2e-3, "l1", 48, 16, 0.999, "aether_train.py's defaults (samples/README.md)")


def training_for(name: str) -> Recommended:
    if name in PRESET_FACTORIES:
        return AETHER_TRAINING
    if name not in PEER_TRAINING:
        raise InputError(f"no recommended training settings for {name!r}; choose from {', '.join(PEER_TRAINING)}")
    return PEER_TRAINING[name]


# ---------------------------------------------------------------------------------------
# step-budget
# ---------------------------------------------------------------------------------------


def _step_runner(model: nn.Module, settings: Recommended, scale: int) -> Callable[[], None]:
    """One optimizer step of ``model`` on a random batch of its recommended size."""
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(settings.batch_size, 3, settings.lr_patch, settings.lr_patch, generator=generator)
    hr = torch.rand(settings.batch_size, 3, settings.lr_patch * scale, settings.lr_patch * scale, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, settings.beta2))
    loss_fn = loss_function(settings.loss)
    model.train()

    def step() -> None:
        loss = loss_fn(model(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run_step_budget(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tiny = PRESET_FACTORIES[REFERENCE](scale=args.scale)
    qat = prepare_qat(PRESET_FACTORIES[REFERENCE](scale=args.scale))
    qat(torch.rand(2, 3, 16, 16))  # first-batch range initialisation
    runners = {
        f"{REFERENCE} float": _step_runner(tiny, AETHER_TRAINING, args.scale),
        f"{REFERENCE} QAT": _step_runner(qat, AETHER_TRAINING, args.scale),
    }
    runners.update(
        {name: _step_runner(PEERS[name].build(args.scale), PEER_TRAINING[name], args.scale) for name in PEER_TRAINING}
    )
    timings = time_interleaved(runners, rounds=args.rounds, budget_s=args.budget_s)
    budget_s = args.reference_steps * timings[f"{REFERENCE} float"].median / 1e3
    budget_s += args.qat_steps * timings[f"{REFERENCE} QAT"].median / 1e3
    rows, steps = [], {}
    for name, timing in timings.items():
        settings = AETHER_TRAINING if name.startswith(REFERENCE) else PEER_TRAINING[name]
        if name.startswith(REFERENCE):
            count = args.reference_steps if name.endswith("float") else args.qat_steps
        else:
            count = steps[name] = max(1, round(budget_s / (timing.median / 1e3)))
        rows.append(
            [
                name,
                f"lr {settings.lr:g}, {settings.loss}, {settings.lr_patch}² LR × {settings.batch_size}, "
                f"β2 {settings.beta2}",
                f"{timing.median:.0f} ({min(timing.samples_ms):.0f}-{max(timing.samples_ms):.0f})",
                str(count),
            ]
        )
    print(f"Generated by `{args.command_line}`.\n")
    print(
        f"Equal wall-clock budget at ×{args.scale}: {REFERENCE} {args.reference_steps} float + {args.qat_steps} QAT "
        f"steps = {budget_s / 60:.1f} min of training steps on this machine ({args.threads} threads; step times "
        f"timed interleaved, median (min-max) ms).\n"
    )
    print(markdown_table(["model", "settings", "step ms", "steps in the budget"], rows))
    print("\nTrain each peer with:")
    for name, count in steps.items():
        print(
            f"  python3 aether_bench.py train-peer {name} --scale {args.scale} --steps {count} "
            f"--train-dir TRAIN --val-dir samples/val --out-dir runs/{name.lower()}_x{args.scale}"
        )
    return 0


# ---------------------------------------------------------------------------------------
# train-peer
# ---------------------------------------------------------------------------------------


def peer_options(args: argparse.Namespace) -> TrainingOptions:
    settings = training_for(args.peer)
    return TrainingOptions(
        train_dir=args.train_dir,
        val_dir=args.val_dir,
        steps=args.steps,
        scale=args.scale,
        lr=settings.lr,
        loss=settings.loss,
        lr_patch=settings.lr_patch,
        batch_size=settings.batch_size,
        beta2=settings.beta2,
        degradation=args.degradation,
        out_dir=args.out_dir,
        resume=args.resume,
        stop_at=args.stop_at,
        val_every=args.val_every,
        save_every=args.save_every,
        threads=args.threads,
        seed=args.seed,
        device="cpu",
    ).check()


def run_train_peer(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    options = peer_options(args)
    torch.manual_seed(options.seed)
    model = PEERS[args.peer].build(options.scale)
    settings = training_for(args.peer)
    command = f"{args.command_line}  # {args.peer} as recommended by {settings.source}"
    trainer = Trainer(model, options, Processes(0, 1, torch.device("cpu")), command=command, policy=TrainingPolicy())
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0


def load_peer(name: str, path: str, scale: int) -> nn.Module:
    """A peer's trained weights (``params_ema`` of a train-peer checkpoint) in its training form."""
    try:
        state_dict, _ = read_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"--model {name}={path}: {exc}") from None
    model = PEERS[name].build(scale)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------------------


def held_out(folder: str, scale: int, protocol: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for path in list_images(folder):
        hr, lr, _ = evaluation_pair(read_image(path)[0], scale, protocol)
        pairs.append((path.name, lr.numpy(), hr))
    return pairs


def exported(name: str, path: str, scale: int, calibration_dir: str) -> tuple[nn.Module, bytes, bytes, str]:
    """(deploy form, FP32 ONNX, INT8 ONNX, how INT8 was made) of a trained checkpoint."""
    if name.split("@")[0] in PEERS:
        deployed = peer_deploy_form(load_peer(name.split("@")[0], path, scale))
        fp32 = onnx_bytes(deployed)
        return deployed, fp32, static_int8_bytes(fp32, calibration_crops(calibration_dir, scale)), "ORT static PTQ"
    model = load_model(path)
    if model.scale != scale:
        raise InputError(f"--model {name}={path} is a x{model.scale} model; --scale is {scale}")
    if not model.qat:
        raise InputError(f"--model {name}={path} is not a QAT checkpoint: release INT8 comes from QAT")
    protos = onnx_models(model, model, fp16=False)
    return float_copy(model), protos["fp32"].SerializeToString(), protos["int8"].SerializeToString(), "QAT Q/DQ export"


def run_quality(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    models = dict(spec.split("=", 1) for spec in args.model)
    sets = {Path(folder).name: {p: held_out(folder, args.scale, p) for p in PROTOCOLS} for folder in args.val_dir}
    results: dict[str, Any] = {"scale": args.scale, "val_dirs": args.val_dir, "bicubic": {}, "models": {}}
    for set_name, by_protocol in sets.items():
        results["bicubic"][set_name] = {
            p: statistics.fmean(psnr_per_image(bicubic_upscaler(args.scale), pairs, args.scale))
            for p, pairs in by_protocol.items()
        }
    sessions = {}
    for name, path in models.items():
        deployed, fp32, int8, method = exported(name, path, args.scale, args.calibration_dir)
        upscalers = {"FP32": onnx_upscaler(fp32, args.threads), "INT8": onnx_upscaler(int8, args.threads)}
        psnrs = {
            fmt: {
                set_name: {
                    p: statistics.fmean(psnr_per_image(upscale, pairs, args.scale)) for p, pairs in by_protocol.items()
                }
                for set_name, by_protocol in sets.items()
            }
            for fmt, upscale in upscalers.items()
        }
        metadata = json.loads(torch.load(path, map_location="cpu", weights_only=True).get("metadata", "{}") or "{}")
        results["models"][name] = {
            "checkpoint": path,
            "params": parameter_count(deployed),
            "macs_per_lr_pixel": macs_per_lr_pixel(deployed),
            "int8": method,
            "psnr": psnrs,
            "training_command": metadata.get("training_command"),
            "steps": metadata.get("step"),
        }
        sessions[name] = ort_session(int8, threads=args.threads)
        print(f"[quality] {name}: done", file=sys.stderr, flush=True)
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    for name, timing in time_sessions(sessions, image, args.repeats, args.budget_s).items():
        results["models"][name]["int8_latency_ms"] = timing.samples_ms
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = quality_markdown(results, args.command_line, args.size)
    (out / "quality.md").write_text(report)
    quality_plot(results, out / "quality_speed.png", args.size)
    print(report)
    return 0


def quality_markdown(results: dict[str, Any], command: str, size: int) -> str:
    sets = list(results["bicubic"])
    header = ["model", "INT8 latency ms"] + [f"{s}, {p} LR: FP32 / INT8 (gain)" for s in sets for p in PROTOCOLS]
    rows = [["bicubic", "—"] + [f"{results['bicubic'][s][p]:.3f}" for s in sets for p in PROTOCOLS]]
    broken = []
    for name, model in results["models"].items():
        latency = Timing(tuple(model["int8_latency_ms"]))
        cells = [f"`{name}`", f"{latency.median:.1f} ({min(latency.samples_ms):.1f}-{max(latency.samples_ms):.1f})"]
        for s in sets:
            for p in PROTOCOLS:
                fp32, int8, bicubic = model["psnr"]["FP32"][s][p], model["psnr"]["INT8"][s][p], results["bicubic"][s][p]
                cells.append(f"{fp32:.3f} / {int8:.3f} ({int8 - bicubic:+.2f})")
                if fp32 < bicubic:
                    broken.append(f"{name} FP32 is below bicubic on {s} with {p} LR ({fp32:.3f} < {bicubic:.3f} dB)")
        rows.append(cells)
    lines = [
        f"Generated by `{command}`.",
        "",
        f"PSNR (RGB, 8-bit, border = scale) ×{results['scale']} in ONNX Runtime, mean over each held-out folder, "
        "under both LR protocols (aa-bicubic: antialiased bicubic, the SR benchmark's; sharp: cubic without "
        "antialiasing); gain = INT8 − bicubic on the same LR. INT8 latency: median (min-max) of interleaved "
        f"runs on 1×3×{size}×{size}, spinning off.",
        "",
        markdown_table(header, rows),
        "",
    ]
    lines += [f"* **BROKEN COMPARISON**: {line}" for line in broken] or ["* every model is above bicubic everywhere"]
    for name, model in results["models"].items():
        lines.append(
            f"* `{name}`: `{model['checkpoint']}`, {model['steps']} steps, INT8 by {model['int8']}; "
            f"trained by `{model['training_command']}`"
        )
    return "\n".join(lines) + "\n"


def quality_plot(results: dict[str, Any], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    first = next(iter(results["bicubic"]))
    figure, axes = pyplot.subplots(1, len(PROTOCOLS), figsize=(11, 4.5), sharey=False)
    for axis, protocol in zip(axes, PROTOCOLS, strict=True):
        for name, model in results["models"].items():
            latency = statistics.median(model["int8_latency_ms"])
            axis.scatter(latency, model["psnr"]["INT8"][first][protocol], s=50)
            axis.annotate(
                name, (latency, model["psnr"]["INT8"][first][protocol]), textcoords="offset points", xytext=(5, 4)
            )
        axis.axhline(results["bicubic"][first][protocol], color="grey", linewidth=1.5)
        axis.annotate(
            "bicubic",
            (0.01, results["bicubic"][first][protocol]),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            color="grey",
        )
        axis.set_xscale("log")
        axis.set_title(f"{first}, {protocol} LR")
        axis.set_xlabel(f"ORT INT8 latency, ms (1×3×{size}×{size})")
        axis.set_ylabel("INT8 PSNR, dB")
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


# ---------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------


def add_zoo_parsers(commands: argparse._SubParsersAction) -> None:
    budget = commands.add_parser("step-budget", help="training steps that give each peer the same wall-clock budget")
    budget.add_argument("--scale", type=whole_number(1), default=2)
    budget.add_argument("--reference-steps", type=whole_number(1), required=True, help=f"{REFERENCE}'s float steps")
    budget.add_argument("--qat-steps", type=whole_number(0), default=0, help=f"{REFERENCE}'s QAT steps (default: 0)")
    budget.add_argument("--rounds", type=whole_number(1), default=15, help="most timed rounds (default: 15)")
    budget.add_argument("--budget-s", type=float, default=90.0, help="seconds for the timing (default: 90)")
    budget.add_argument("--threads", type=whole_number(1), default=2)
    budget.set_defaults(run=run_step_budget)

    peer = commands.add_parser("train-peer", help="train a peer network as its authors recommend (resumable)")
    peer.add_argument("peer", choices=sorted(PEER_TRAINING))
    peer.add_argument("--scale", type=whole_number(1), default=2)
    peer.add_argument("--steps", type=whole_number(1), required=True, help="from step-budget")
    peer.add_argument("--train-dir", nargs="+", required=True, metavar="DIR")
    peer.add_argument("--val-dir", metavar="DIR")
    peer.add_argument("--degradation", choices=sorted(RECIPES), default="robust")
    peer.add_argument("--out-dir", metavar="DIR")
    peer.add_argument("--resume", metavar="RUN_DIR")
    peer.add_argument("--stop-at", type=whole_number(1), metavar="STEP")
    peer.add_argument("--val-every", type=whole_number(0), default=1500)
    peer.add_argument("--save-every", type=whole_number(0), default=500)
    peer.add_argument("--seed", type=whole_number(0), default=0)
    peer.add_argument("--threads", type=whole_number(1), default=2)
    peer.set_defaults(run=run_train_peer)

    quality = commands.add_parser("quality", help="PSNR of trained checkpoints on both LR protocols, with INT8 latency")
    quality.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=CKPT",
        help="a zoo checkpoint (QAT; any name) or a peer's train-peer checkpoint (NAME = the peer, "
        "optionally NAME@label); repeat",
    )
    quality.add_argument("--val-dir", action="append", required=True, metavar="DIR", help="held-out folder; repeat")
    quality.add_argument("--scale", type=whole_number(1), default=2)
    quality.add_argument("--calibration-dir", default="samples/train", help="peers' PTQ calibration images")
    quality.add_argument("--size", type=whole_number(16), default=256, help="latency input size (default: 256)")
    quality.add_argument("--repeats", type=whole_number(1), default=9)
    quality.add_argument("--budget-s", type=float, default=60.0)
    quality.add_argument("--threads", type=whole_number(1), default=2)
    quality.add_argument("--out", required=True, metavar="DIR")
    quality.set_defaults(run=run_quality)
