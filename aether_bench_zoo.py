"""The fair peer comparison behind ``aether_bench.py step-budget``, ``train-peer`` and ``quality``.

* ``step-budget``: one training step of each peer with the settings its authors recommend
  (PEER_TRAINING), timed interleaved on this machine; from them the number of steps that gives
  every peer the same wall-clock budget as an AetherNet checkpoint's recorded training time
  (``--reference CKPT``: every stage, as it ran), or as ``aether_tiny`` steps timed beside them
  (``--reference-steps`` float + ``--qat-steps`` QAT).
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
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from aether_arch import (
    PRESET_FACTORIES,
    AetherCheckpointError,
    atomic_write,
    build_from_state_dict,
    detect_config,
    error_summary,
    float_copy,
    prepare_qat,
    read_checkpoint,
)
from aether_bench_plots import save_plot, speed_quality_plot
from aether_bench_quality import (
    bicubic_upscaler,
    calibration_crops,
    held_out_pairs,
    onnx_upscaler,
    psnr_per_image,
    quality_row,
)
from aether_bench_report import AETHER_INT8, PEER_INT8, QualityResult, QualityRow, quality_folder_section
from aether_cli import InputError, markdown_table, real_number, whole_number
from aether_degrade import PROTOCOLS, RECIPES
from aether_measure import time_interleaved, time_sessions
from aether_peers import PEERS, onnx_bytes, peer_deploy_form, static_int8_bytes
from aether_runtime import has_qat_ranges_for, int8_model, onnx_models, ort_session
from aether_training import (
    Trainer,
    TrainingOptions,
    TrainingPolicy,
    keep_freed_memory,
    load_pretrained,
    loss_function,
    start_processes,
    training_cost,
)

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
DEFAULTS = TrainingOptions  # its class attributes are the defaults of its fields
AETHER_TRAINING = Recommended(
    DEFAULTS.lr, DEFAULTS.loss, DEFAULTS.lr_patch, DEFAULTS.batch_size, DEFAULTS.beta2, "aether_train.py's defaults"
)


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


def reference_cost(path: str, scale: int | None) -> tuple[float, int, int]:
    """(seconds, steps, scale) of training behind an AetherNet checkpoint, every stage counted, as
    the trainer recorded them; InputError when it cannot be read or records none."""
    try:
        state_dict, metadata = read_checkpoint(path)
        reference_scale = detect_config(state_dict)["scale"]
    except (AetherCheckpointError, OSError) as exc:
        raise InputError(f"--reference {path!r}: {error_summary(exc)}") from None
    seconds, steps = training_cost(path, metadata)
    if not seconds or not steps:
        raise InputError(f"--reference {path!r} records no training time: give --reference-steps instead")
    if scale is not None and scale != reference_scale:
        raise InputError(f"--reference {path!r} is a x{reference_scale} model; --scale is {scale}")
    return seconds, steps, reference_scale


def run_step_budget(args: argparse.Namespace) -> int:
    if args.reference and args.qat_steps is not None:  # the checkpoint's recorded time already counts them
        raise InputError("--qat-steps goes with --reference-steps; --reference counts the checkpoint's own")
    qat_steps = args.qat_steps or 0
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the training loop does: otherwise big-patch steps time page faults
    torch.manual_seed(0)
    runners = {}
    if args.reference:
        budget_s, reference_steps, scale = reference_cost(args.reference, args.scale)
    else:
        scale = args.scale or 2
        tiny = PRESET_FACTORIES[REFERENCE](scale=scale)
        qat = prepare_qat(PRESET_FACTORIES[REFERENCE](scale=scale))
        qat(torch.rand(2, 3, 16, 16))  # first-batch range initialisation
        runners[f"{REFERENCE} float"] = _step_runner(tiny, AETHER_TRAINING, scale)
        runners[f"{REFERENCE} QAT"] = _step_runner(qat, AETHER_TRAINING, scale)
    runners.update({name: _step_runner(PEERS[name].build(scale), PEER_TRAINING[name], scale) for name in PEER_TRAINING})
    timings = time_interleaved(runners, rounds=args.rounds, budget_s=args.budget_s)
    if args.reference:
        what = (
            f"the {budget_s:.0f} s of training steps behind `{args.reference}` ({reference_steps} steps, every "
            "stage, as the trainer recorded them)"
        )
    else:
        budget_s = args.reference_steps * timings[f"{REFERENCE} float"].median / 1e3
        budget_s += qat_steps * timings[f"{REFERENCE} QAT"].median / 1e3
        what = (
            f"{REFERENCE} {args.reference_steps} float + {qat_steps} QAT steps = {budget_s / 60:.1f} min of "
            "training steps"
        )
    rows, steps = [], {}
    for name, timing in timings.items():
        settings = AETHER_TRAINING if name.startswith(REFERENCE) else PEER_TRAINING[name]
        if name.startswith(REFERENCE):
            count = args.reference_steps if name.endswith("float") else qat_steps
        else:
            count = steps[name] = max(1, round(budget_s / (timing.median / 1e3)))
        rows.append(
            [
                name,
                f"lr {settings.lr:g}, {settings.loss}, {settings.lr_patch}² LR × {settings.batch_size}, "
                f"β2 {settings.beta2}",
                str(timing),
                str(count),
            ]
        )
    print(f"Generated by `{args.command_line}`.\n")
    print(
        f"Equal wall-clock budget at ×{scale}: {what} on this machine ({args.threads} "
        f"thread{'s' if args.threads > 1 else ''}; step times, with the training loop's memory setting, timed "
        "interleaved, median (min-max) ms).\n"
    )
    print(markdown_table(["model", "settings", "step ms", "steps in the budget"], rows))
    print("\nTrain each peer with:")
    for name, count in steps.items():
        print(
            f"  python3 aether_bench.py train-peer {name} --scale {scale} --steps {count} "
            f"--train-dir TRAIN --val-dir samples/val --out-dir runs/{name.lower()}_x{scale}"
        )
    return 0


# ---------------------------------------------------------------------------------------
# train-peer
# ---------------------------------------------------------------------------------------


def peer_options(args: argparse.Namespace) -> TrainingOptions:
    settings = PEER_TRAINING[args.peer]
    return TrainingOptions(
        train_dir=args.train_dir,
        val_dir=args.val_dir,
        steps=args.steps,
        scale=args.scale,
        lr=args.lr or settings.lr,
        loss=settings.loss,
        lr_patch=settings.lr_patch,
        batch_size=settings.batch_size,
        beta2=settings.beta2,
        degradation=args.degradation,
        kernels=args.kernels,
        pretrained=args.pretrained,
        out_dir=args.out_dir,
        resume=args.resume,
        stop_at=args.stop_at,
        val_every=args.val_every,
        save_every=args.save_every,
        log_every=args.log_every,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    ).check()


def run_train_peer(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    options = peer_options(args)
    processes = start_processes(options.device)
    torch.manual_seed(options.seed)
    model = PEERS[args.peer].build(options.scale)
    policy = TrainingPolicy()
    if options.pretrained and options.resume is None:  # resuming: the weights are in the state
        load_pretrained(model, options.pretrained, policy)
    command = f"{args.command_line}  # {args.peer} as recommended by {PEER_TRAINING[args.peer].source}"
    trainer = Trainer(model, options, processes, command=command, policy=policy)
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0


# ---------------------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------------------


@dataclass
class Exported:
    """A trained checkpoint as ``quality`` measures it."""

    deployed: nn.Module
    fp32: bytes  # ONNX
    int8: bytes  # ONNX
    int8_method: str
    metadata: dict[str, Any]


def exported(name: str, path: str, scale: int, calibration_dir: str) -> Exported:
    """The deploy form and FP32 / INT8 ONNX of a trained checkpoint (a peer's when ``name`` is
    a peer, optionally ``PEER@label``; else an AetherNet QAT checkpoint), read once."""
    try:
        state_dict, metadata = read_checkpoint(path)
        peer = name.split("@")[0]
        if peer in PEERS:
            trained = PEERS[peer].build(scale)
            trained.load_state_dict(state_dict, strict=True)
            deployed = peer_deploy_form(trained.eval())
            fp32 = onnx_bytes(deployed)
            int8 = static_int8_bytes(fp32, calibration_crops(calibration_dir, scale))
            return Exported(deployed, fp32, int8, PEER_INT8, metadata)
        model = build_from_state_dict(state_dict)
    except (AetherCheckpointError, RuntimeError) as exc:  # unreadable, or not this network's weights
        raise InputError(f"--model {name}={path}: {error_summary(exc)}") from None
    if model.scale != scale:
        raise InputError(f"--model {name}={path} is a x{model.scale} model; --scale is {scale}")
    if not has_qat_ranges_for(model, "cpu"):
        raise InputError(
            f"--model {name}={path} is not a QAT checkpoint for the cpu INT8 profile: release INT8 comes from QAT"
        )
    fp32 = float_copy(model)  # as aether_release.py makes model_fp32 and model_int8 of a QAT checkpoint
    int8, _ = int8_model(model, fp32, profile="cpu", calibration=[])
    protos = onnx_models(fp32, int8, fp16=False)
    return Exported(fp32, protos["fp32"].SerializeToString(), protos["int8"].SerializeToString(), AETHER_INT8, metadata)


def run_quality(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise InputError(f"--model {spec!r}: expected NAME=CHECKPOINT with an existing file")
        models[name] = path
    sets = {folder: {p: held_out_pairs(folder, args.scale, p) for p in PROTOCOLS} for folder in args.val_dir}
    rows: dict[str, list[QualityRow]] = {folder: [] for folder in sets}
    sessions, commands = {}, {}
    for name, path in models.items():
        model = exported(name, path, args.scale, args.calibration_dir)
        commands[name] = (path, model.metadata.get("training_command"))
        seconds, steps = training_cost(path, model.metadata)
        fp32_run, int8_run = onnx_upscaler(model.fp32, args.threads), onnx_upscaler(model.int8, args.threads)
        for folder, pairs in sets.items():
            rows[folder].append(
                quality_row(
                    name,
                    model.deployed,
                    args.scale,
                    seconds,
                    fp32_run,
                    int8_run,
                    pairs,
                    model.int8_method,
                    "the checkpoint's EMA weights",
                    steps=steps,
                )
            )
        sessions[name] = ort_session(model.int8, threads=args.threads)
        print(f"[quality] {name}: done", file=sys.stderr, flush=True)
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    latencies = time_sessions(sessions, image, args.repeats, args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"Generated by `{args.command_line}`.", ""]
    results = {}
    for index, (folder, folder_rows) in enumerate(rows.items()):
        for row in folder_rows:
            row.int8_latency = latencies[row.model]
        bicubic = {
            p: statistics.fmean(psnr_per_image(bicubic_upscaler(args.scale), sets[folder][p], args.scale))
            for p in PROTOCOLS
        }
        result = QualityResult(
            args.scale,
            max(row.steps or 0 for row in folder_rows),
            "see each model's command below",
            [name for name, _, _ in sets[folder]["aa-bicubic"]],
            bicubic["aa-bicubic"],
            args.size,
            folder_rows,
            bicubic_psnr_sharp=bicubic["sharp"],
        )
        results[folder] = result
        plot = f"quality_speed_{index}.png"
        save_plot(speed_quality_plot(result, folder), out / plot)
        lines += quality_folder_section(folder, result, plot)
    lines += [
        "PSNR: RGB, 8-bit, border = scale, in ONNX Runtime, mean over each held-out folder, under both LR "
        "protocols (aa-bicubic: antialiased bicubic, the SR benchmark's; sharp: cubic without antialiasing; LR "
        "rounded to 8 bits); (+x.xx) = INT8 − bicubic on the same LR. FP32 = the release's model_fp32.onnx of "
        "the checkpoint. "
        f"INT8 latency: median (min-max) ms of interleaved runs on 1×3×{args.size}×{args.size}, spinning off. "
        "Training wall time: the seconds of training steps behind the checkpoint, earlier stages included "
        "(recorded in it, or read from the train.log beside it; — when neither). **BELOW BICUBIC** marks a "
        "model worse than bicubic: for a peer, a broken comparison "
        "(too short a budget or wrong settings), not a result; for an AetherNet model, a missed target.",
        "",
    ]
    lines += [f"* `{name}`: `{path}`, trained by `{command}`" for name, (path, command) in commands.items()]
    report = "\n".join(lines) + "\n"
    with atomic_write(out / "quality.md") as tmp:
        Path(tmp).write_text(report, encoding="utf-8")
    with atomic_write(out / "quality_results.json") as tmp:
        Path(tmp).write_text(json.dumps({f: dataclasses.asdict(r) for f, r in results.items()}, indent=1) + "\n")
    print(report)
    return 0


# ---------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------


def add_zoo_parsers(commands: argparse._SubParsersAction) -> None:
    budget = commands.add_parser("step-budget", help="training steps that give each peer the same wall-clock budget")
    budget.add_argument("--scale", type=whole_number(1), help="default: the reference checkpoint's, else 2")
    reference = budget.add_mutually_exclusive_group(required=True)
    reference.add_argument(
        "--reference",
        metavar="CKPT",
        help="an AetherNet checkpoint: the budget is the training time it records (every stage, as it ran)",
    )
    reference.add_argument(
        "--reference-steps", type=whole_number(1), help=f"{REFERENCE}'s float steps, timed here (no checkpoint)"
    )
    budget.add_argument(
        "--qat-steps", type=whole_number(0), help=f"with --reference-steps: {REFERENCE}'s QAT steps (default: 0)"
    )
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
    peer.add_argument("--kernels", metavar="KERNEL:P,...", help="as aether_train.py --kernels (default: the recipe's)")
    peer.add_argument("--pretrained", metavar="CKPT", help="start from this train-peer checkpoint (a second stage)")
    peer.add_argument("--lr", type=real_number(0, above=True), help="peak learning rate (default: the authors')")
    peer.add_argument("--out-dir", metavar="DIR")
    peer.add_argument("--resume", metavar="RUN_DIR")
    peer.add_argument("--stop-at", type=whole_number(1), metavar="STEP")
    peer.add_argument("--val-every", type=whole_number(0), default=1500)
    peer.add_argument("--save-every", type=whole_number(0), default=500)
    peer.add_argument("--log-every", type=whole_number(1), default=DEFAULTS.log_every)
    peer.add_argument("--seed", type=whole_number(0), default=0)
    peer.add_argument("--threads", type=whole_number(1), default=2)
    peer.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="(default: cpu)")
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
