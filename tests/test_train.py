"""aether_train.py: short end-to-end runs on tiny settings, the checkpoint formats, exact resume,
QAT (from a float checkpoint and switched mid-run), bad input, and DDP with 2 CPU processes."""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aether_train
from aether_arch import detect_config, is_calibrated, load_model, read_checkpoint
from aether_data import bicubic_downscale, list_images, mod_crop, psnr, read_image, to_image, to_tensor, write_image
from aether_training import PatchSampler, TrainingOptions, current_phase, detail, make_optimizer, training_cost
from conftest import write_image_folder

REPO = Path(__file__).resolve().parents[1]
# A 1-block aether_tiny on 16x16 HR crops: each step takes milliseconds.
TINY = ["--preset", "aether_tiny", "--num-blocks", "1", "--scale", "2", "--lr-patch", "8", "--batch-size", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_image_folder(root / "train", [(40, 48), (56, 40), (64, 64)], seed=1),
        "val": write_image_folder(root / "val", [(26, 30), (24, 24)], seed=2),
        "root": root,
    }


def _train(data, out_dir, *extra):
    argv = [*TINY, "--train-dir", str(data["train"]), "--val-dir", str(data["val"]), "--out-dir", str(out_dir), *extra]
    assert aether_train.main(argv) == 0
    return out_dir


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def float_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("float_run")
    return _train(data, out, "--steps", "6", "--val-every", "3", "--save-every", "3", "--log-every", "2")


def test_run_writes_loadable_checkpoints(float_run):
    assert {p.name for p in float_run.iterdir()} == {
        "net_g_3.pth",
        "net_g_6.pth",
        "net_g_latest.pth",
        "training_state.pth",
        "train.log",
    }
    checkpoint = _weights(float_run / "net_g_latest.pth")
    assert set(checkpoint) == {"params", "params_ema", "metadata"}
    metadata = json.loads(checkpoint["metadata"])
    assert metadata["step"] == 6 and metadata["architecture"] == "AetherNet"
    assert metadata["training_command"].startswith("aether_train.py --preset aether_tiny")
    assert "val_psnr" in metadata and "val_bicubic_psnr" in metadata
    assert set(metadata["validation"]) == {"aa-bicubic", "sharp"}
    assert metadata["validation"]["aa-bicubic"]["psnr"] == metadata["val_psnr"]
    assert metadata["degradation"]["recipe"] == "robust" and len(metadata["degradation"]["kernels"]) == 7
    for state_dict in (checkpoint["params"], checkpoint["params_ema"]):
        assert all(t.is_contiguous() and t.device.type == "cpu" for t in state_dict.values())
        assert not any(k.startswith("module.") for k in state_dict)

    # load_model prefers the EMA weights, which differ from the raw ones after training
    loaded = load_model(float_run / "net_g_latest.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint["params_ema"].items())
    assert not all(torch.equal(checkpoint["params"][k], v) for k, v in checkpoint["params_ema"].items())
    assert _weights(float_run / "net_g_3.pth").keys() == checkpoint.keys()


def test_training_state_loads_weights_only(float_run):
    state = torch.load(float_run / "training_state.pth", map_location="cpu", weights_only=True)
    assert state["step"] == 6 and state["qat"] is False
    for key in ("model", "ema", "optimizer", "scheduler", "grad_scaler", "rng", "config"):
        assert key in state
    rng = state["rng"]
    assert isinstance(rng["torch_cpu"], torch.Tensor) and len(rng["patch_sampler"]) == 1
    assert isinstance(rng["python"][1], list) and all(isinstance(v, int) for v in rng["python"][1][:5])


def test_a_training_state_as_a_checkpoint_gives_its_ema_weights(float_run):
    # --pretrained, aether_upscale.py and aether_release.py read it as they read params_ema
    state = torch.load(float_run / "training_state.pth", map_location="cpu", weights_only=True)
    weights, _ = read_checkpoint(str(float_run / "training_state.pth"))
    assert weights.keys() == state["ema"].keys()
    assert all(torch.equal(weights[k], state["ema"][k]) for k in weights)
    assert not all(torch.equal(weights[k], state["model"][k]) for k in weights)


def test_log_has_config_loss_validation_and_wall_time(float_run):
    log = (float_run / "train.log").read_text()
    assert "config: {" in log and "loss " in log and "wall time" in log
    validations = [line for line in log.splitlines() if "validation PSNR" in line]
    assert len(validations) == 4  # at steps 3 and 6, under both LR protocols
    assert "aa-bicubic LR" in validations[-2] and "sharp LR" in validations[-1]
    assert all("bicubic" in line and "gain" in line for line in validations)
    assert "degradation: robust recipe" in log


def test_resume_is_bit_exact_across_the_qat_switch(data, tmp_path):
    # float steps 1-5 (BatchNorm frozen from step 3), QAT steps 6-8; the split run stops at 3.
    # The robust recipe with every random step likely: the degradation's draws resume too.
    common = ["--steps", "8", "--qat-after", "5", "--freeze-norm-frac", "0.4", "--val-every", "2", "--log-every", "2"]
    common += ["--jpeg-prob", "0.5", "--noise-prob", "0.5", "--blur-prob", "0.5"]
    whole = _train(data, tmp_path / "whole", *common, "--save-every", "4")
    split = _train(data, tmp_path / "split", *common, "--stop-at", "3")
    assert _weights(split / "training_state.pth")["step"] == 3
    assert (
        aether_train.main(
            [*TINY, "--train-dir", str(data["train"]), "--val-dir", str(data["val"]), *common, "--resume", str(split)]
        )
        == 0
    )

    expected, actual = _weights(whole / "net_g_latest.pth"), _weights(split / "net_g_latest.pth")
    for key in ("params", "params_ema"):
        assert expected[key].keys() == actual[key].keys()
        for name, tensor in expected[key].items():
            assert torch.equal(tensor, actual[key][name]), f"{key}.{name} differs after resume"

    # the switch: float before step 5, QAT after, and the QAT EMA model is calibrated
    assert detect_config(_weights(whole / "net_g_4.pth")["params_ema"])["qat"] is False
    assert detect_config(expected["params_ema"])["qat"] is True
    assert json.loads(expected["metadata"])["qat"] is True
    assert is_calibrated(load_model(whole / "net_g_latest.pth"))
    assert "after step 5: switched to QAT" in (whole / "train.log").read_text()
    # the cost of the steps behind a checkpoint is in it, the resumed run's summed over sittings
    first_sitting = json.loads(_weights(split / "net_g_3.pth")["metadata"])["training_seconds"]
    both = json.loads(actual["metadata"])["training_seconds"]
    logged = re.findall(r"steps in ([0-9.]+) s of training steps", (split / "train.log").read_text())
    assert 0 < first_sitting < both and both == pytest.approx(sum(map(float, logged)), abs=0.15)


def test_qat_fine_tuning_from_a_float_checkpoint(data, float_run, tmp_path):
    out = _train(
        data,
        tmp_path / "qat",
        "--qat",
        "--pretrained",
        str(float_run / "net_g_latest.pth"),
        "--lr",
        "2e-4",
        "--steps",
        "3",
    )
    checkpoint = _weights(out / "net_g_latest.pth")
    assert detect_config(checkpoint["params"])["qat"] is True
    assert detect_config(checkpoint["params_ema"])["qat"] is True
    model = load_model(out / "net_g_latest.pth")
    assert model.qat and is_calibrated(model)
    # The EMA adopted the activation ranges set on the first batch (averaging them with the
    # unset scale 1.0 would leave them far too coarse) ...
    ema, raw = checkpoint["params_ema"], checkpoint["params"]
    scales = [k for k in ema if k.endswith("_q.scale")]
    # (averaged with 1.0 they would be many times the learned ones; LSQ moves a few by ~30 % in
    # 3 steps of this barely trained net)
    assert scales and all(0.5 < float(ema[k] / raw[k]) < 2 for k in scales)
    # ... and validation ran the EMA model as saved, quantizers active
    assert json.loads(checkpoint["metadata"])["val_psnr"] == pytest.approx(_mean_psnr(model, data["val"]), abs=1e-3)
    # what the float run cost travels with the QAT checkpoint (its run folder may be gone)
    cost = json.loads(checkpoint["metadata"])["pretrained_cost"]
    float_metadata = json.loads(_weights(float_run / "net_g_latest.pth")["metadata"])
    assert cost == {"seconds": float_metadata["training_seconds"], "steps": float_metadata["step"]}
    seconds, steps = training_cost(str(out / "net_g_latest.pth"), json.loads(checkpoint["metadata"]))
    assert steps == 3 + float_metadata["step"] and seconds > cost["seconds"] > 0


def test_a_pretrained_file_with_a_trained_shortcut_keeps_it_and_gets_a_note(data, float_run, tmp_path):
    """Files from before the shortcut was fixed; a file with the exact one is the neighbour."""
    checkpoint = _weights(float_run / "net_g_latest.pth")
    for key in ("params", "params_ema"):
        checkpoint[key]["skip.weight"] = checkpoint[key]["skip.weight"] * 0.99
    torch.save(checkpoint, tmp_path / "old.pth")
    notes = []
    for name, path in (("old", tmp_path / "old.pth"), ("new", float_run / "net_g_latest.pth")):
        out = _train(data, tmp_path / name, "--pretrained", str(path), "--steps", "1")
        notes.append("note: --pretrained has a trained shortcut" in (out / "train.log").read_text())
    assert notes == [True, False]
    trained = _weights(tmp_path / "old" / "net_g_latest.pth")["params"]["skip.weight"]
    assert torch.equal(trained, checkpoint["params_ema"]["skip.weight"])


def _mean_psnr(model, folder, scale=2):
    values = []
    for path in list_images(folder):
        hr = mod_crop(read_image(path)[0], scale)
        with torch.no_grad():
            sr = model(bicubic_downscale(to_tensor(hr), scale))
        values.append(psnr(to_image(sr), hr, border=scale))
    return sum(values) / len(values)


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("aether_train.py: error: ")
    return err


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_folder", "no such folder"),
        ("empty_folder", "contains no images"),
        ("images_too_small", "at least 16x16 pixels"),
        ("unreadable_checkpoint", "--pretrained"),
        ("checkpoint_for_another_scale", "does not fit"),
        ("bad_preset", "invalid choice: 'aether_huge'"),
        ("bad_scale", "--scale: expected a whole number in 1..16, got 0"),
        ("negative_warmup", "--warmup: expected a whole number >= 0, got -5"),
        ("missing_resume_state", "--resume"),
        ("resume_with_another_scale", "the saved run used --scale 2, this one 3"),
        ("kernel_probabilities", "--degradation robust with the options given: kernel probabilities sum to 0.9, not 1"),
        ("unknown_kernel", "unknown kernel 'bilinear'"),
        ("jpeg_quality", "--jpeg-quality: expected a whole number in 1..100, got 101"),
        ("flat_validation_image", "flat.png': bicubic reproduces it exactly (a flat image)"),
        ("tiny_validation_image", "tiny.png': 5x9 is too small for x2 (PSNR leaves out a border of 2 pixels)"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(case, expected, data, float_run, tmp_path, capsys):
    train = str(data["train"])
    extra = []
    if case == "missing_folder":
        train = str(tmp_path / "nope")
    elif case == "empty_folder":
        train = str(tmp_path)
    elif case == "images_too_small":
        train = str(write_image_folder(tmp_path / "small", [(12, 20), (15, 15)], seed=3))
    elif case == "unreadable_checkpoint":
        (tmp_path / "garbage.pth").write_bytes(os.urandom(256))
        extra = ["--pretrained", str(tmp_path / "garbage.pth")]
    elif case == "checkpoint_for_another_scale":
        extra = ["--scale", "3", "--pretrained", str(float_run / "net_g_latest.pth")]
    elif case == "bad_preset":
        extra = ["--preset", "aether_huge"]
    elif case == "bad_scale":
        extra = ["--scale", "0"]
    elif case == "negative_warmup":
        extra = ["--warmup", "-5"]
    elif case == "missing_resume_state":
        extra = ["--resume", str(tmp_path / "no_run")]
    elif case == "resume_with_another_scale":
        extra = ["--scale", "3", "--resume", str(float_run), "--steps", "10"]
    elif case == "kernel_probabilities":
        extra = ["--kernels", "cubic:0.5,area:0.4"]
    elif case == "unknown_kernel":
        extra = ["--degradation", "bicubic", "--kernels", "bilinear:1"]
    elif case == "jpeg_quality":
        extra = ["--jpeg-quality", "80", "101"]
    elif case == "flat_validation_image":
        (tmp_path / "val").mkdir()
        write_image(tmp_path / "val" / "flat.png", np.full((24, 24, 3), 0.25, np.float32))
        extra = ["--val-dir", str(tmp_path / "val")]
    elif case == "tiny_validation_image":
        (tmp_path / "val").mkdir()
        write_image(tmp_path / "val" / "tiny.png", np.random.default_rng(0).random((9, 5, 3), np.float32))
        extra = ["--val-dir", str(tmp_path / "val")]
    argv = [*TINY, "--train-dir", train, "--out-dir", str(tmp_path / "out"), "--steps", "2", *extra]
    assert aether_train.main(argv) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "out").exists()  # rejected before anything is written


def test_bad_input_exit_code_from_the_command_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "aether_train.py",
            "--train-dir",
            str(tmp_path / "nope"),
            "--steps",
            "1",
            "--out-dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"aether_train.py: error: --train-dir {str(tmp_path / 'nope')!r}: no such folder"
    ]
    assert not (tmp_path / "out").exists()


# Runs each rank's training through aether_train.main and then saves that rank's own weights, so
# the test can check that DDP kept the ranks identical (only rank 0 writes checkpoints).
_PER_RANK_WRAPPER = """
import sys, torch
sys.path.insert(0, {repo!r})
import aether_train, aether_training
close = aether_training.Trainer.close
def save_rank_weights(self):
    torch.save(aether_training.plain_state_dict(self.model), {out!r} + f"/rank{{self.processes.rank}}.pth")
    close(self)
aether_training.Trainer.close = save_rank_weights
sys.exit(aether_train.main())
"""


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)
def test_ddp_two_cpu_processes_with_torchrun(data, tmp_path):
    """DDP (slow-ish: starts 2 processes through torchrun, about 10 s): gloo on CPU, per-rank
    patches, identical weights on both ranks through the --qat-after switch, and rank 0 alone
    writing checkpoints without the 'module.' prefix."""
    out = tmp_path / "ddp"
    wrapper = tmp_path / "per_rank_train.py"
    wrapper.write_text(_PER_RANK_WRAPPER.format(repo=str(REPO), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(wrapper),
            *TINY,
            "--train-dir",
            str(data["train"]),
            "--val-dir",
            str(data["val"]),
            "--steps",
            "4",
            "--qat-after",
            "2",
            "--out-dir",
            str(out),
            "--device",
            "cpu",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in (0, 1))
    assert all(torch.equal(tensor, rank1[name]) for name, tensor in rank0.items())

    checkpoint = _weights(out / "net_g_latest.pth")
    assert all(torch.equal(tensor, checkpoint["params"][name]) for name, tensor in rank0.items())
    assert json.loads(checkpoint["metadata"])["world_size"] == 2
    assert load_model(out / "net_g_latest.pth").qat
    state = torch.load(out / "training_state.pth", weights_only=True)
    first, second = state["rng"]["patch_sampler"]
    assert not torch.equal(first, second)  # each rank draws its own patches
    log = (out / "train.log").read_text()
    assert log.count("command: ") == 1 and "x 2 process(es)" in log and "validation PSNR" in log


@pytest.mark.parametrize("qat_lr", [1e-4, 5e-7])  # above, then below --min-lr 1e-6
def test_the_qat_phase_lr_decays_and_never_rises(qat_lr):
    options = TrainingOptions(train_dir="x", steps=100, qat_after=50, lr=2e-3, qat_lr=qat_lr, out_dir="x").check()
    optimizer, schedule = make_optimizer(torch.nn.Linear(1, 1), current_phase(options, qat=True), options)
    lrs = []
    for _ in range(50):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(qat_lr) and all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(lrs))
    assert (lrs[-1] < lrs[0]) == (qat_lr > options.min_lr)


def test_the_sampler_redraws_flat_crops():
    # one flat image and one textured image: without the filter about half the crops are flat
    flat = torch.full((3, 64, 64), 0.5)
    textured = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = [(flat * 255).round().to(torch.uint8), (textured * 255).round().to(torch.uint8)]
    kept = PatchSampler(images, 16, seed=0).sample(64)
    filtered = PatchSampler(images, 16, seed=0, min_detail=0.005).sample(64)
    assert kept.dtype == filtered.dtype == torch.float32 and kept.shape == filtered.shape == (64, 3, 16, 16)
    flat_kept = sum(detail(p) < 0.005 for p in kept)
    flat_filtered = sum(detail(p) < 0.005 for p in filtered)
    assert 16 < flat_kept < 48 and flat_filtered <= 64 * 0.5**PatchSampler.DETAIL_TRIES + 2
    # reproducible under a seed
    assert torch.equal(filtered, PatchSampler(images, 16, seed=0, min_detail=0.005).sample(64))


def test_a_state_from_before_the_recipes_resumes_as_bicubic_with_every_crop_kept(data, tmp_path):
    run = _train(
        data, tmp_path / "old", "--steps", "4", "--stop-at", "2", "--degradation", "bicubic", "--min-patch-detail", "0"
    )
    state = _weights(run / "training_state.pth")
    config = json.loads(state["config"])
    del config["degradation"], config["min_patch_detail"], config["beta2"]  # as saved before these options
    state["config"] = json.dumps(config)
    del state["training_seconds"]  # nor did states keep what their steps cost: the log has it
    torch.save(state, run / "training_state.pth")
    argv = [*TINY, "--train-dir", str(data["train"]), "--steps", "4", "--degradation", "bicubic"]
    assert aether_train.main([*argv, "--min-patch-detail", "0", "--resume", str(run)]) == 0
    assert "changed options" not in (run / "train.log").read_text()
    logged = re.findall(r"steps in ([0-9.]+) s of training steps", (run / "train.log").read_text())
    seconds = json.loads(_weights(run / "net_g_4.pth")["metadata"])["training_seconds"]
    assert len(logged) == 2 and seconds == pytest.approx(sum(map(float, logged)), abs=0.15)
    # today's defaults on the same old state are a change, and are said to be one
    assert aether_train.main([*TINY, "--train-dir", str(data["train"]), "--steps", "6", "--resume", str(run)]) == 0
    changed = [line for line in (run / "train.log").read_text().splitlines() if "changed options" in line]
    assert (
        len(changed) == 1
        and "degradation 'bicubic' -> 'robust'" in changed[0]
        and "min_patch_detail 0.0 -> 0.005" in changed[0]
    )


# Three training steps of a small conv net on 8 x 32 x 128² activations (4 MB each), after one
# warm-up step: the page faults they take.
_REFAULTS = """
import resource, sys, torch
from torch import nn
import aether_training
torch.set_num_threads(1)
print(aether_training.keep_freed_memory() if sys.argv[1] == "keep" else "default")
net = nn.Sequential(*[m for _ in range(2) for m in (nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())])
# 42 MB activations, above glibc's largest dynamic mmap threshold (32 MB): by default each is
# unmapped when freed and faulted back in by the next step, every time (a smaller one may move
# into the heap, which makes the default count vary from run to run)
x = torch.rand(10, 16, 256, 256)
def step():
    net.zero_grad()
    net(x).square().mean().backward()
for _ in range(2):  # the kept run's heap reaches its peak here, not in the measured steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_keeps_freed_memory_instead_of_faulting_it_back_in_every_step():
    """With the setting the steps reuse their memory; without it (the neighbour run) each step
    faults its activations back in from the system (here 30-60x the page faults)."""
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.split()
        for mode in ("keep", "default")
    }
    assert runs["keep"][0] == "True" and runs["default"][0] == "default"
    kept, default = int(runs["keep"][1]), int(runs["default"][1])
    assert kept * 4 < default, (kept, default)
