"""The quality half of ``aether_bench.py compare``: PSNR at equal training budget (AetherNet
and its peers trained by aether_train.py's training loop with the same data, degradation, loss,
schedule and number of steps, then run in ONNX Runtime in FP32 and INT8), and QAT on the
shipped sample (FP32 vs QAT-INT8 vs PTQ-INT8, made as aether_release.py makes them, and the
cost of a QAT training step).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from aether_arch import PRESET_FACTORIES, float_copy, load_model, onnx_model_proto, prepare_qat
from aether_bench_report import AETHER_INT8, PEER_INT8, QatResult, QualityResult, QualityRow, Timing
from aether_cli import InputError
from aether_data import (
    ImageReadError,
    UnmeasurableImageError,
    bicubic_upscale,
    evaluation_lr,
    evaluation_pairs,
    image_files,
    psnr,
    read_image,
    release_pairs,
    to_image,
)
from aether_measure import macs_per_lr_pixel, parameter_count, time_interleaved, time_sessions
from aether_peers import CALIBRATION_INPUTS, PEERS, onnx_bytes, peer_deploy_form, static_int8_bytes
from aether_runtime import (
    CPU_PROVIDER,
    Upscaler,
    calibration_batches,
    int8_model,
    onnx_models,
    onnx_runtime,
    ort_session,
)
from aether_training import AetherNetPolicy, Processes, Trainer, TrainingOptions, TrainingPolicy, seed_everything

QAT_SHARE = 0.2  # aether_tiny's last fifth of the training budget is QAT


# ---------------------------------------------------------------------------------------
# Held-out images
# ---------------------------------------------------------------------------------------


def read_folder(folder: str, option: str, limit: int | None = None) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, image) of the first ``limit`` images of ``folder``, given as command-line
    ``option``: a missing or empty folder, or an unreadable image, is a one-line error."""
    for path in image_files(folder, option)[:limit]:
        try:
            yield path, read_image(path)[0]
        except ImageReadError as exc:
            raise InputError(f"{option} {folder!r}: {exc}") from None


def held_out_pairs(folder: str, scale: int, protocol: str = "aa-bicubic") -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR batch, HR image) for every image of ``--val-dir`` ``folder``: HR cropped to a
    multiple of scale, LR under the LR ``protocol`` (aether_degrade.PROTOCOLS; by default the SR
    benchmark's). An image no PSNR can be measured on is a one-line error: a mean over the folder
    would be meaningless."""
    pairs = []
    for path, image in read_folder(folder, "--val-dir"):
        try:
            hr, lr, _ = evaluation_pairs(image, scale, (protocol,))[protocol]
        except UnmeasurableImageError as exc:
            raise InputError(f"held-out image {str(path)!r}: {exc}; leave it out of the folder") from None
        pairs.append((path.name, lr.numpy(), hr))
    return pairs


def folder_lrs(
    folder: str, scale: int, limit: int | None = None, option: str = "--calibration-dir"
) -> list[torch.Tensor]:
    """LR images (the project's bicubic degradation) of the first ``limit`` images of ``folder``
    (command-line ``option``): INT8 calibration data, where no PSNR is taken, so flat images are
    welcome; one smaller than the scale has no LR, a one-line error."""
    lrs = []
    for path, image in read_folder(folder, option, limit):
        if min(image.shape[:2]) < scale:
            raise InputError(
                f"{option} {folder!r}: {path.name} is {image.shape[1]}x{image.shape[0]}, smaller than "
                f"one x{scale} LR pixel; leave it out of the folder"
            )
        lrs.append(evaluation_lr(image, scale)[1])
    return lrs


def release_calibration(folder: str, scale: int) -> list[torch.Tensor]:
    """The INT8 calibration batches aether_release.py makes of ``--calibration-dir`` ``folder``:
    every image's LR under every LR protocol, images PSNR cannot be taken on (flat, tiny) left
    out as the release leaves them out."""
    lrs = []
    for _, image in read_folder(folder, "--calibration-dir"):
        with contextlib.suppress(UnmeasurableImageError):
            lrs += [lr for _, lr, _ in release_pairs(image, scale).values()]
    if not lrs:
        raise InputError(f"--calibration-dir {folder!r}: no image to calibrate INT8 on (all flat or too small)")
    return calibration_batches(lrs)


def psnr_per_image(upscale: Upscaler, pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], scale: int) -> list[float]:
    """PSNR (RGB, 8-bit, border = scale) of ``upscale`` on every (name, LR, HR) pair."""
    return [psnr(to_image(upscale(lr)), hr, border=scale) for _, lr, hr in pairs]


def bicubic_upscaler(scale: int) -> Upscaler:
    return lambda lr: bicubic_upscale(torch.from_numpy(lr), scale).numpy()


def onnx_upscaler(model: bytes, threads: int) -> Upscaler:
    return onnx_runtime(model, CPU_PROVIDER, threads).open()


def calibration_crops(
    folder: str, scale: int, lr_size: int = 96, option: str = "--calibration-dir"
) -> list[np.ndarray]:
    """LR centre crops of the first training images (the project's bicubic degradation): the
    real-image calibration set of the peers' static INT8."""
    lrs = folder_lrs(folder, scale, CALIBRATION_INPUTS, option)
    return [crop.numpy() for crop in calibration_batches(lrs, lr_size)]


def qat_switch_step(steps: int) -> int:
    return min(steps - 1, max(1, round(steps * (1 - QAT_SHARE))))


def training_options(name: str, args: argparse.Namespace, out_dir: Path) -> TrainingOptions:
    """The same training options for every model; AetherNet presets switch to QAT for the last
    QAT_SHARE of the same number of steps."""
    aether = name in PRESET_FACTORIES
    return TrainingOptions(
        train_dir=[args.train_dir],
        steps=args.budget,
        scale=args.quality_scale,
        lr_patch=args.lr_patch,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        seed=0,
        val_every=0,
        save_every=0,
        log_every=max(1, args.budget // 10),
        out_dir=str(out_dir),
        preset=name if aether else None,
        qat_after=qat_switch_step(args.budget) if aether else None,
    ).check()


def run_trainer(name: str, options: TrainingOptions) -> Trainer:
    """Train ``name`` (a preset or a peer) with aether_train.py's training loop."""
    seed_everything(options.seed)
    if name in PRESET_FACTORIES:
        model, policy = PRESET_FACTORIES[name](scale=options.scale), AetherNetPolicy()
        command = shlex.join(["aether_train.py", *options.flags()])
    else:
        model, policy = PEERS[name].build(options.scale), TrainingPolicy()
        command = f"aether_bench.py compare, {name} with the aether_train.py options: {shlex.join(options.flags())}"
    trainer = Trainer(model, options, Processes(0, 1, torch.device("cpu")), command=command, policy=policy)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def train_and_export(name: str, args: argparse.Namespace, run_dir: Path) -> tuple[nn.Module, bytes, bytes, str, float]:
    """Train ``name``; (deploy-form model, FP32 ONNX, INT8 ONNX, which weights the FP32 figure
    is of, training wall seconds)."""
    options = training_options(name, args, run_dir)
    start = time.perf_counter()
    if name in PRESET_FACTORIES:
        switch = options.qat_after
        float_model = float_copy(run_trainer(name, dataclasses.replace(options, stop_at=switch)).ema.module)
        qat_model = run_trainer(name, dataclasses.replace(options, resume=str(run_dir))).ema.module
        seconds = time.perf_counter() - start
        protos = onnx_models(float_model, qat_model, fp16=False)
        source = f"float EMA at the QAT switch (step {switch})"
        return float_model, protos["fp32"].SerializeToString(), protos["int8"].SerializeToString(), source, seconds
    trained = run_trainer(name, options).ema.module
    seconds = time.perf_counter() - start
    deployed = peer_deploy_form(trained)
    fp32_model = onnx_bytes(deployed)
    int8 = static_int8_bytes(fp32_model, calibration_crops(args.train_dir, args.quality_scale, option="--train-dir"))
    return deployed, fp32_model, int8, f"EMA after {args.budget} steps", seconds


def measure_quality(args: argparse.Namespace, out_dir: Path) -> QualityResult:
    scale = args.quality_scale
    pairs, sharp = held_out_pairs(args.val_dir, scale), held_out_pairs(args.val_dir, scale, "sharp")
    bicubic = statistics.fmean(psnr_per_image(bicubic_upscaler(scale), pairs, scale))
    rows, int8_sessions = [], {}
    logs = out_dir / "train_logs"
    logs.mkdir(exist_ok=True)
    for name in args.quality_models:
        with tempfile.TemporaryDirectory(prefix="aether_bench_train_") as run_dir:
            model, fp32_model, int8, source, seconds = train_and_export(name, args, Path(run_dir))
            (logs / f"{name}.log").write_bytes((Path(run_dir) / "train.log").read_bytes())
        print(f"[compare] trained {name} in {seconds:.0f} s", file=sys.stderr, flush=True)
        int8_sessions[name] = ort_session(int8, threads=args.threads)
        rows.append(
            quality_row(
                name,
                model,
                scale,
                seconds,
                onnx_upscaler(fp32_model, args.threads),
                onnx_upscaler(int8, args.threads),
                {"aa-bicubic": pairs, "sharp": sharp},
                AETHER_INT8 if name in PRESET_FACTORIES else PEER_INT8,
                source,
            )
        )
    image = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
    latencies = time_sessions(int8_sessions, image, args.repeats, args.budget_s)
    for row in rows:
        row.int8_latency = latencies[row.model]
    shared = training_options("peer", args, Path("RUN_DIR"))
    training = shlex.join(dataclasses.replace(shared, out_dir=None).flags())
    return QualityResult(
        scale,
        args.budget,
        training,
        [name for name, _, _ in pairs],
        bicubic,
        args.size,
        rows,
        qat_switch_step(args.budget),
        statistics.fmean(psnr_per_image(bicubic_upscaler(scale), sharp, scale)),
    )


def quality_row(
    name: str,
    model: nn.Module,
    scale: int,
    train_s: float,
    fp32: Upscaler,
    int8: Upscaler,
    pairs: dict[str, Sequence[tuple[str, np.ndarray, np.ndarray]]],
    int8_method: str,
    fp32_source: str,
    steps: int | None = None,
) -> QualityRow:
    """One model's row: PSNR of its FP32 and INT8 forms under both LR protocols (``pairs``:
    protocol -> held-out pairs); the INT8 latency is filled in later, timed with the others."""

    def mean(upscale: Upscaler, protocol: str) -> float:
        return statistics.fmean(psnr_per_image(upscale, pairs[protocol], scale))

    return QualityRow(
        model=name,
        params=parameter_count(model),
        macs_per_lr_pixel=macs_per_lr_pixel(model),
        train_s=train_s,
        psnr_fp32=mean(fp32, "aa-bicubic"),
        psnr_int8=mean(int8, "aa-bicubic"),
        int8_method=int8_method,
        fp32_source=fp32_source,
        int8_latency=Timing(()),
        psnr_fp32_sharp=mean(fp32, "sharp"),
        psnr_int8_sharp=mean(int8, "sharp"),
        steps=steps,
    )


# QAT: the shipped sample's INT8 quality, and the cost of a QAT step -------------------------


def qat_step_timings(args: argparse.Namespace) -> tuple[str, Timing, Timing]:
    """(setup, float step, QAT step): training steps of aether_tiny x2 in its training form and
    in its QAT form on the same batch, interleaved."""
    torch.manual_seed(0)
    float_model = PRESET_FACTORIES["aether_tiny"](scale=2).train()
    qat_model = prepare_qat(copy.deepcopy(float_model)).train()
    lr_batch, hr_batch = torch.rand(16, 3, 48, 48), torch.rand(16, 3, 96, 96)
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
    timings = time_interleaved(runners, rounds=args.repeats, budget_s=2 * args.budget_s)
    setup = f"aether_tiny ×2, batch 16 × 48×48 LR patches, {torch.get_num_threads()} CPU threads"
    return setup, timings["float"], timings["qat"]


def measure_qat(args: argparse.Namespace) -> QatResult:
    """FP32, QAT-INT8 and PTQ-INT8 of the sample checkpoints, made as aether_release.py makes
    them and run in ONNX Runtime; then the QAT step cost."""
    float_model, qat_model = load_model(args.float_checkpoint), load_model(args.qat_checkpoint)
    scale = float_model.scale
    pairs = held_out_pairs(args.val_dir, scale)
    calibration = release_calibration(args.calibration_dir, scale)
    fp32 = float_copy(float_model)
    ptq, _ = int8_model(float_model, fp32, profile="cpu", calibration=calibration)
    qat, _ = int8_model(qat_model, float_copy(qat_model), profile="cpu", calibration=[])
    protos = {
        "FP32": onnx_models(fp32, fp16=False)["fp32"],
        "QAT-INT8": onnx_model_proto(qat),
        "PTQ-INT8": onnx_model_proto(ptq),
    }
    upscalers = {"bicubic": bicubic_upscaler(scale)}
    upscalers.update({name: onnx_upscaler(proto.SerializeToString(), args.threads) for name, proto in protos.items()})
    setup, float_step, qat_step = qat_step_timings(args)
    return QatResult(
        scale=scale,
        float_checkpoint=args.float_checkpoint,
        qat_checkpoint=args.qat_checkpoint,
        val_dir=args.val_dir,
        calibration=f"the LR of the images of `{args.calibration_dir}` under both LR protocols, as the release does",
        images=[name for name, _, _ in pairs],
        psnr={name: psnr_per_image(upscale, pairs, scale) for name, upscale in upscalers.items()},
        step_setup=setup,
        float_step=float_step,
        qat_step=qat_step,
    )
