"""Train AetherNet on folders of HR images: the command line of aether_training.Trainer.

    python3 aether_train.py --preset aether_tiny --scale 2 --train-dir samples/train \
        --val-dir samples/val --steps 20000 --out-dir runs/tiny_x2
    torchrun --nproc_per_node 2 aether_train.py ...            # DistributedDataParallel

The network is a preset from ``aether_arch.PRESET_FACTORIES`` in its training form (RepConv
branches with BatchNorm), or its quantization-aware form (``--qat``, ``--qat-after``),
optionally initialised from ``--pretrained``; what the training loop does with it (data,
degradation, loss, schedule, EMA, checkpoints, exact ``--resume``) is described in
aether_training.py.

Bad input (missing folders, no usable images, unreadable checkpoints, bad options) ends with a
one-line message on stderr and exit code 2; Ctrl-C with one line and exit code 130.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

import torch
import torch.distributed as dist

import aether_arch
from aether_cli import SEED, InputError, OneLineErrorParser, one_line, real_number, run_cli, thread_count, whole_number
from aether_degrade import KERNELS, RECIPES
from aether_training import (
    CHARBONNIER_EPS,
    AetherNetPolicy,
    Trainer,
    TrainingDiverged,
    TrainingOptions,
    load_pretrained,
    seed_everything,
    start_processes,
)

PROG = "aether_train.py"
DEFAULTS = TrainingOptions  # its class attributes are the defaults of its fields
AETHERNET = AetherNetPolicy()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones and those the help text already explains."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The options; their names and defaults are TrainingOptions' (--lr-patch is lr_patch)."""
    parser = OneLineErrorParser(
        prog="aether_train.py",
        description="Train AetherNet on folders of HR images (LR made on the fly by a degradation recipe).",
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--train-dir",
        nargs="+",
        required=True,
        metavar="DIR",
        help="folders of HR training images (all loaded into memory once)",
    )
    data.add_argument(
        "--val-dir", metavar="DIR", help="folder of held-out HR images; PSNR vs bicubic is logged on them"
    )
    data.add_argument(
        "--lr-patch",
        type=whole_number(1),
        default=DEFAULTS.lr_patch,
        help="LR patch size; the HR crop is lr_patch * scale pixels square",
    )
    data.add_argument(
        "--batch-size", type=whole_number(1), default=DEFAULTS.batch_size, help="patches per step, per process"
    )
    data.add_argument(
        "--min-patch-detail",
        type=real_number(0),
        default=DEFAULTS.min_patch_detail,
        help="redraw a crop (up to 4 times) whose mean absolute difference of adjacent grey pixels "
        "is below this (in [0, 1]; 0.005 is about 1.3 levels): flat crops teach nothing; 0 keeps every crop",
    )

    degrade = parser.add_argument_group(
        "degradation (how each LR patch is made; the options below override one field of the recipe)"
    )
    degrade.add_argument(
        "--degradation",
        choices=sorted(RECIPES),
        default=DEFAULTS.degradation,
        help="recipe: robust = a mix of kernels with mild blur, noise and JPEG (for models users run "
        "on real photos); bicubic = antialiased bicubic only (the SR benchmark protocol)",
    )
    degrade.add_argument(
        "--kernels",
        metavar="KERNEL:P,...",
        help=f"downscaling kernels with probabilities summing to 1, from {', '.join(KERNELS)} (default: the recipe's)",
    )
    degrade.add_argument(
        "--blur-prob", type=real_number(0, maximum=1), help="probability of a Gaussian blur before downscaling"
    )
    degrade.add_argument(
        "--blur-sigma",
        type=real_number(0, above=True),
        nargs=2,
        metavar=("LO", "HI"),
        help="blur sigma range (HR pixels)",
    )
    degrade.add_argument("--noise-prob", type=real_number(0, maximum=1), help="probability of Gaussian noise on the LR")
    degrade.add_argument(
        "--noise-sigma", type=real_number(0), nargs=2, metavar=("LO", "HI"), help="noise sigma range (8-bit levels)"
    )
    degrade.add_argument("--jpeg-prob", type=real_number(0, maximum=1), help="probability of JPEG-compressing the LR")
    degrade.add_argument(
        "--jpeg-quality",
        type=whole_number(1, 100),
        nargs=2,
        metavar=("LO", "HI"),
        help="JPEG quality range (inclusive)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset", default="aether_small", choices=sorted(aether_arch.PRESET_FACTORIES), help="network size"
    )
    model.add_argument(
        "--scale",
        type=whole_number(1, aether_arch.CHECKPOINT_LIMITS["scale"]),
        default=DEFAULTS.scale,
        help="upscaling factor",
    )
    model.add_argument(
        "--num-blocks",
        type=whole_number(1, aether_arch.CHECKPOINT_LIMITS["num_blocks"]),
        help="override the preset's number of blocks (default: the preset's)",
    )
    model.add_argument(
        "--pretrained",
        metavar="CKPT",
        help="initialise from this checkpoint (.pth/.pt/.safetensors; params_ema preferred), loaded strictly",
    )
    model.add_argument(
        "--qat",
        action="store_true",
        help="train the quantization-aware (INT8-simulating) form for the whole "
        "run; usually with --pretrained FLOAT_CKPT, --lr 1e-4 and --steps 2000. Activation "
        "ranges are set from the first training batch, then learned",
    )
    model.add_argument(
        "--qat-after",
        type=whole_number(1),
        metavar="N",
        help="train float for N steps, then switch this run to QAT (model and "
        "EMA) with a fresh AdamW and cosine schedule from --qat-lr for the "
        "remaining steps",
    )
    model.add_argument(
        "--qat-lr",
        type=real_number(0, above=True),
        help="peak learning rate of the QAT phase of --qat-after (default: --lr / 40)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=whole_number(1), required=True, help="total optimizer steps")
    optim.add_argument(
        "--loss",
        choices=("l1", "charbonnier"),
        default=DEFAULTS.loss,
        help=f"pixel loss (Charbonnier: sqrt(diff^2 + {CHARBONNIER_EPS:g}^2))",
    )
    optim.add_argument(
        "--lr",
        type=real_number(0, above=True),
        default=DEFAULTS.lr,
        help="peak learning rate (AdamW); use about 1e-4 for QAT fine-tuning",
    )
    optim.add_argument("--min-lr", type=real_number(0), default=DEFAULTS.min_lr, help="end of the cosine decay")
    optim.add_argument("--warmup", type=whole_number(0), default=DEFAULTS.warmup, help="linear warmup steps")
    optim.add_argument(
        "--weight-decay",
        type=real_number(0),
        default=DEFAULTS.weight_decay,
        help="AdamW decoupled weight decay (applies to every parameter)",
    )
    optim.add_argument(
        "--beta2", type=real_number(0, below=1), default=DEFAULTS.beta2, help="AdamW's second-moment decay"
    )
    optim.add_argument(
        "--grad-clip",
        type=real_number(0),
        default=DEFAULTS.grad_clip,
        help="clip the gradient norm to this value (0: off)",
    )
    optim.add_argument(
        "--ema-decay",
        type=real_number(0, below=1),
        default=DEFAULTS.ema_decay,
        help="EMA decay, ramped up as min(decay, (1+step)/(10+step)) so short "
        "runs are not dominated by the initial weights",
    )
    optim.add_argument(
        "--freeze-norm-frac",
        type=real_number(0),
        default=DEFAULTS.freeze_norm_frac,
        help="for this last fraction of FLOAT training, BatchNorm layers use their "
        "running statistics (eval mode). Why: in train mode BN normalises "
        "with each batch's statistics, but inference and the fused deploy "
        "model use the running ones; SR is sensitive to that mismatch "
        "(colour/brightness shifts), so the final steps train the exact "
        "function that fuse() bakes in",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out-dir", metavar="DIR", help="output folder (default with --resume: the resumed state's folder)"
    )
    run.add_argument(
        "--resume", metavar="OUT_DIR_OR_STATE_FILE", help="continue a run exactly from its training_state.pth"
    )
    run.add_argument(
        "--stop-at",
        type=whole_number(1),
        metavar="STEP",
        help="end this invocation after STEP steps (saving everything) without "
        "changing the schedule; continue later with --resume",
    )
    run.add_argument(
        "--val-every",
        type=whole_number(0),
        default=DEFAULTS.val_every,
        help="validate every N steps (and at the end; 0: end only)",
    )
    run.add_argument(
        "--save-every",
        type=whole_number(0),
        default=DEFAULTS.save_every,
        help="save every N steps (and at the end; 0: end only)",
    )
    run.add_argument(
        "--log-every", type=whole_number(1), default=DEFAULTS.log_every, help="log the mean loss every N steps"
    )
    run.add_argument("--seed", type=SEED, default=DEFAULTS.seed, help="weights init; patch sampling uses seed + rank")
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=DEFAULTS.device, help="auto: cuda if available"
    )
    run.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision on CUDA (bf16 if supported, else fp16 with loss scaling); ignored on CPU",
    )
    run.add_argument("--threads", type=thread_count(allow_default=False), help="torch.set_num_threads (CPU threads)")
    return parser


def parse_args(argv: Sequence[str]) -> TrainingOptions:
    return TrainingOptions(**vars(build_parser().parse_args(argv))).check()


def build_model(options: TrainingOptions) -> aether_arch.AetherNet:
    overrides = {} if options.num_blocks is None else {"num_blocks": options.num_blocks}
    try:
        return aether_arch.PRESET_FACTORIES[options.preset](scale=options.scale, qat=options.qat, **overrides)
    except ValueError as exc:  # bad scale / num_blocks: the message names the hyperparameter
        raise InputError(str(exc)) from None


def train(options: TrainingOptions, argv: Sequence[str]) -> int:
    if options.threads:
        torch.set_num_threads(options.threads)
    processes = start_processes(options.device)
    trainer = None
    try:
        seed_everything(options.seed)
        model = build_model(options)
        if options.pretrained and options.resume is None:  # resuming: the weights are in the state
            load_pretrained(model, options.pretrained, AETHERNET)
        trainer = Trainer(model, options, processes, command=shlex.join([PROG, *argv]), policy=AETHERNET)
        trainer.run()
        return 0
    except TrainingDiverged as exc:
        if trainer is not None:
            trainer.log(f"stopped: {exc}")
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if trainer is not None:
            trainer.close()
        if processes.distributed:
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, parse_args, lambda options: train(options, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
