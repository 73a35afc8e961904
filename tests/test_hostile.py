"""Hostile, broken and edge-case input, one test per class of the README's promise: a small file
never costs unbounded memory or time, an impossible configuration or a non-finite number is one
clear line (never a traceback, never silent garbage), the release never deletes its input,
signals and full disks leave nothing half-written, images come as people have them, and every
option is bounded. Each case asserts the exit code, one stderr line without "Traceback", and
what was (not) written."""

import contextlib
import errno
import functools
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import aether_release
import aether_train
import aether_upscale
from aether_arch import AetherCheckpointError, AetherNet, load_model, save_checkpoint
from aether_cli import Terminated, removed_if_left_empty, run_cli
from aether_data import ImageReadError, read_raw_image, write_image, write_raw_image
from conftest import SMALL_CONFIG, as_pixels, photo_like, train_steps, write_image_folder

REPO = Path(__file__).resolve().parents[1]
STAGING = aether_release.STAGING_PREFIX


def one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: "), err
    return lines[0]


def run_main(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def leftovers(folder: Path) -> list[str]:
    """Staging folders and temporary files anywhere below ``folder``."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(STAGING) or ".tmp-" in p.name]


@pytest.fixture(scope="module")
def small_state_dict():
    torch.manual_seed(3)
    model = AetherNet(scale=2, **SMALL_CONFIG)
    train_steps(model)
    return model.state_dict()


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_state_dict):
    root = tmp_path_factory.mktemp("hostile")
    model = AetherNet(scale=2, **SMALL_CONFIG)
    model.load_state_dict(small_state_dict)
    save_checkpoint(model, root / "good.pth")
    write_image_folder(root / "val", [(40, 48)], seed=5)
    write_image_folder(root / "train", [(48, 48), (40, 56)], seed=6)
    return root


def crafted(folder: Path, name: str, state_dict: dict) -> Path:
    path = folder / name
    torch.save(state_dict, path)
    return path


# ---------------------------------------------------------------------------------------
# A small file never costs unbounded memory or time
# ---------------------------------------------------------------------------------------


def _zip_bomb(path: Path, state_dict: dict) -> None:
    """A checkpoint whose 256 MiB weight is stored deflated: a 0.3 MB file that torch would
    inflate in full before anything could look at the weight."""
    buffer = io.BytesIO()
    torch.save({**state_dict, "blocks.0.conv1.bomb": torch.zeros(64 << 20)}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))


def _bounded_cases(folder: Path, sd: dict) -> dict[str, Path]:
    head = sd["head.weight"]
    cases = {
        # the issue's examples
        "extra block 10^8": {**sd, "blocks.100000000.x": torch.zeros(1)},
        "stride-0 head of 10^6 channels": {**sd, "head.weight": head[:1].expand(10**6, *head.shape[1:])},
        # ours: many declared blocks (over the limit), a gap in the numbering, overlapping
        # strides, a huge upsampler by broadcasting, a 1025-channel head
        "300 blocks": {**sd, **{f"blocks.{i}.conv1.weight": torch.zeros(1) for i in range(2, 300)}},
        "gap in the blocks": {**sd, "blocks.5.conv1.weight": torch.zeros(1)},
        "overlapping strides": {**sd, "head.weight": torch.zeros(4102).as_strided((4096, 3, 3, 3), (1, 1, 1, 1))},
        "broadcast upsampler": {**sd, "upsample.weight": torch.zeros(1).expand(12, 10**7, 1, 1)},
        "head of 1025 channels": {**sd, "head.weight": torch.zeros(1025, 3, 3, 3)},
    }
    paths = {name: crafted(folder, f"bounded_{i}.pth", value) for i, (name, value) in enumerate(cases.items())}
    _zip_bomb(folder / "bomb.pth", sd)
    paths["zip bomb"] = folder / "bomb.pth"
    legacy = folder / "legacy.pth"  # a 2 MB file in torch's pre-zip format
    torch.save({**sd, "pad": torch.zeros(1 << 19)}, legacy, _use_new_zipfile_serialization=False)
    paths["large legacy-format file"] = legacy
    return paths


LOAD_UNDER_LIMIT = r"""
import resource, sys, json
import aether_arch, spandrel
aether_arch.register_spandrel()
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
results = {}
for path in sys.argv[2:]:
    for loader in ("aether", "spandrel"):
        try:
            if loader == "aether":
                aether_arch.load_model(path)
            else:
                spandrel.ModelLoader().load_from_file(path)
            results[f"{loader}:{path}"] = "LOADED"
        except MemoryError:
            results[f"{loader}:{path}"] = "MemoryError"
        except Exception as exc:
            results[f"{loader}:{path}"] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
print(json.dumps(results))
"""


@functools.cache
def _virtual_memory_after_imports() -> int:
    probe = "import aether_arch, spandrel, resource; print(open('/proc/self/status').read())"
    status = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    kib = next(int(line.split()[1]) for line in status.stdout.splitlines() if line.startswith("VmPeak"))
    return kib * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the memory baseline")
def test_small_crafted_checkpoints_are_refused_within_bounded_memory_and_time(work, small_state_dict):
    paths = _bounded_cases(work, small_state_dict)
    limit = _virtual_memory_after_imports() + (256 << 20)  # every refusal fits in 256 MiB more
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", LOAD_UNDER_LIMIT, str(limit), str(work / "good.pth"), *map(str, paths.values())],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.perf_counter() - started < 60
    results = json.loads(result.stdout)
    assert results[f"aether:{work / 'good.pth'}"] == "LOADED"  # the limit leaves room for a real load
    assert results[f"spandrel:{work / 'good.pth'}"] == "LOADED"
    for name, path in paths.items():
        # spandrel reads the file with its own torch.load: only what it hands to AetherNet's
        # loader is ours to bound (a zip bomb is inflated before that)
        for loader in ("aether",) if name == "zip bomb" else ("aether", "spandrel"):
            outcome = results[f"{loader}:{path}"]
            assert outcome.startswith("AetherCheckpointError: "), (name, loader, outcome)
    # our own loader says why, in one line
    assert "blocks" in results[f"aether:{paths['extra block 10^8']}"]
    assert "overlapping storage" in results[f"aether:{paths['stride-0 head of 10^6 channels']}"]
    assert "zip bomb" in results[f"aether:{paths['zip bomb']}"]


def test_upscaler_and_release_refuse_a_crafted_checkpoint_with_exit_2(work, small_state_dict):
    path = crafted(work, "extra_block.pth", {**small_state_dict, "blocks.100000000.x": torch.zeros(1)})
    code, _, err = run_main(aether_upscale.main, ["--model", path, "--input", work / "val", "--output", work / "o1"])
    assert code == 2 and "block 2 is missing" in one_error_line(err, "aether_upscale.py")
    code, _, err = run_main(
        aether_release.main, ["--model-path", path, "--validation-dir", work / "val", "--output-dir", work / "o2"]
    )
    assert code == 2 and "block 2 is missing" in one_error_line(err, "aether_release.py")
    assert not (work / "o1").exists() and not (work / "o2").exists()


# ---------------------------------------------------------------------------------------
# Impossible configurations
# ---------------------------------------------------------------------------------------


def _impossible(sd: dict) -> dict[str, dict]:
    large, head = sd["blocks.0.conv2.branches.0.conv.weight"], sd["head.weight"]
    return {
        # the issue's examples (v2 has no partial channels: a large kernel on more channels than dim)
        "even large kernel": {**sd, "blocks.0.conv2.branches.0.conv.weight": large[..., :4, :4]},
        "large kernel wider than dim": {**sd, "blocks.0.conv2.branches.0.conv.weight": torch.zeros(20, 20, 5, 5)},
        "dim 0": {**sd, "head.weight": head[:0]},
        "no input channels": {**sd, "head.weight": head[:, :0]},
        "1-D head weight": {**sd, "head.weight": head.flatten()},
        # ours
        "non-square kernel": {**sd, "blocks.0.conv2.branches.0.conv.weight": large[..., :3]},
        "upsampler of 7 channels": {**sd, "upsample.weight": sd["upsample.weight"][:7]},
        "scale 17": {**sd, "upsample.weight": torch.zeros(3 * 17 * 17, 16, 1, 1)},
        "33x33 large kernel": {**sd, "blocks.0.conv2.branches.0.conv.weight": torch.zeros(16, 16, 33, 33)},
        "5x5 head": {**sd, "head.weight": torch.zeros(16, 3, 5, 5)},
        "shortcut for 4 input channels": {**sd, "skip.weight": torch.zeros(12, 4, 1, 1)},
    }


def test_impossible_configurations_are_one_checkpoint_error_each(small_state_dict):
    for name, state_dict in _impossible(small_state_dict).items():
        with pytest.raises(AetherCheckpointError) as caught:
            load_model(state_dict)
        message = str(caught.value)
        assert "\n" not in message and len(message) < 400, (name, message)


def test_impossible_configuration_in_the_tools(work, small_state_dict):
    path = crafted(work, "even_kernel.pth", _impossible(small_state_dict)["even large kernel"])
    code, _, err = run_main(aether_upscale.main, ["--model", path, "--input", work / "val", "--output", work / "o3"])
    assert code == 2 and "odd" in one_error_line(err, "aether_upscale.py")
    assert not (work / "o3").exists()


# ---------------------------------------------------------------------------------------
# Non-finite numbers are never passed on silently
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(work, small_state_dict, value):
    weights = dict(small_state_dict)
    weights["body_tail.branches.1.conv.weight"] = weights["body_tail.branches.1.conv.weight"].clone()
    weights["body_tail.branches.1.conv.weight"][0, 0, 0, 0] = value
    path = crafted(work, f"non_finite_{value}.pth", weights)
    code, _, err = run_main(aether_upscale.main, ["--model", path, "--input", work / "val", "--output", work / "o4"])
    assert code == 2 and "NaN or infinite" in one_error_line(err, "aether_upscale.py")
    assert not (work / "o4").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "inf"),  # the issue's examples
        ("--weight-decay", "-0.01"),
        ("--qat-lr", "0"),
        ("--lr", "nan"),  # ours
        ("--min-lr", "nan"),
        ("--grad-clip", "inf"),
        ("--ema-decay", "1"),
        ("--qat-lr", "-1e-5"),
    ],
)
def test_non_finite_or_impossible_training_numbers_are_refused_up_front(work, option, value):
    out = work / f"run_{option}_{value}"
    argv = ["--train-dir", work / "train", "--out-dir", out, "--steps", "2", option, value]
    code, _, err = run_main(aether_train.main, [*argv, "--preset", "aether_tiny", "--scale", "2"])
    assert code == 2 and option in one_error_line(err, "aether_train.py")
    assert not out.exists()


def test_a_diverging_run_stops_and_keeps_the_last_finite_checkpoint(work, monkeypatch):
    import aether_training

    real = aether_training.loss_function

    def poisoned(name):  # the loss becomes NaN from the 4th step on, as in a real divergence
        loss, calls = real(name), []

        def nan_after_three(sr, hr):
            calls.append(1)
            value = loss(sr, hr)
            return value * float("nan") if len(calls) > 3 else value

        return nan_after_three

    monkeypatch.setattr(aether_training, "loss_function", poisoned)
    out = work / "diverged"
    argv = ["--train-dir", work / "train", "--out-dir", out, "--steps", "8", "--save-every", "2", "--log-every", "1"]
    argv += ["--preset", "aether_tiny", "--num-blocks", "1", "--scale", "2", "--lr-patch", "8", "--batch-size", "2"]
    code, _, err = run_main(aether_train.main, argv)
    line = one_error_line(err, "aether_train.py")
    assert code == 1 and "diverged at step 4" in line and "net_g_2.pth" in line
    assert sorted(p.name for p in out.glob("net_g_*.pth")) == ["net_g_2.pth", "net_g_latest.pth"]
    kept = torch.load(out / "net_g_latest.pth", weights_only=True)
    assert all(torch.isfinite(t).all() for t in kept["params_ema"].values())
    assert "stopped: training diverged" in (out / "train.log").read_text()


def _with_metadata(work: Path, name: str, metadata: str) -> Path:
    weights = torch.load(work / "good.pth", weights_only=True)
    weights["metadata"] = metadata
    return crafted(work, name, weights)


def test_hostile_checkpoint_metadata_cannot_break_a_release(work):
    cases = {
        "nan.pth": '{"architecture": "AetherNet", "val_psnr": NaN}',  # the issue's examples
        "deep.pth": "[" * 100000 + "]" * 100000,
        "infinity.pth": '{"step": Infinity}',  # ours
        "not_an_object.pth": '"just a string"',
        "nested.pth": json.dumps({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}),
        os.fsdecode(b"caf\xe9.pth"): "{}",  # a name that is not UTF-8 (Linux allows it) reaches the files as text
    }
    out = work / "meta_release"
    out.mkdir()
    (out / f"{STAGING}999999999-stale").mkdir()  # a dead release's staging folder: cleaned
    for name, metadata in cases.items():
        path = _with_metadata(work, name, metadata)
        argv = ["--model-path", path, "--validation-dir", work / "val", "--output-dir", out]
        # metadata reaches every artifact's the same way: FP32 alone keeps this test short
        code, _, err = run_main(aether_release.main, [*argv, "--skip-fp16", "--skip-int8", "--skip-ncnn"])
        assert code == 0 and "Traceback" not in err, (name, err)
        report = json.loads((out / "release_report.json").read_text(encoding="utf-8"))  # strict JSON: no NaN
        assert isinstance(report, dict) and not leftovers(out)
        assert (out / "release_report.md").read_text(encoding="utf-8").count(report["source"]["path"][-12:]) >= 1


# ---------------------------------------------------------------------------------------
# The release never deletes its own input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same name", "symlink", "hard link", "failed name", "relative path"])
def test_release_refuses_to_replace_its_own_checkpoint(work, how, monkeypatch):
    out = work / f"own_input_{how.replace(' ', '_')}"
    out.mkdir()
    original = (work / "good.pth").read_bytes()
    if how == "same name":
        model = out / "model_int8.pth"
        model.write_bytes(original)
    elif how == "failed name":
        model = out / "model_fp32.pth.failed"
        model.write_bytes(original)
        model = model.rename(out / "model_fp32.pth.failed")
    elif how == "relative path":
        (out / "model_fp16.pth").write_bytes(original)
        monkeypatch.chdir(out)
        model = Path("model_fp16.pth")
    else:
        model = work / f"input_{how.replace(' ', '_')}.pth"
        model.write_bytes(original)
        link = out / "model_fp32.pth"
        link.symlink_to(model) if how == "symlink" else os.link(model, link)
    code, _, err = run_main(
        aether_release.main, ["--model-path", model, "--validation-dir", work / "val", "--output-dir", out]
    )
    assert code == 2 and "replaces" in one_error_line(err, "aether_release.py")
    assert (out / model.name if how == "relative path" else model).read_bytes() == original
    assert not leftovers(out)


# ---------------------------------------------------------------------------------------
# Signals and disks
# ---------------------------------------------------------------------------------------


def _interrupt(argv: list, ready, sig: int) -> tuple[subprocess.CompletedProcess, float]:
    """Run a script, send ``sig`` once ``ready()`` holds (the run is doing real work), and wait."""
    process = subprocess.Popen(
        [sys.executable, *map(str, argv)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        # as from a terminal: a background job (CI started with `cmd &`) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 90
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()
    process.send_signal(sig)
    sent = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr), time.monotonic() - sent


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signalled_release_prints_one_line_and_leaves_no_staging_folder(work, sig, code, word):
    out = work / f"signalled_release_{sig}"
    # Eight large images keep the release busy long after its staging folder appears; the signal
    # goes at once, so they cost nothing when it works. (One small image lasted about 5 s, two
    # large ones under 10 s on a quiet machine: a loaded CI machine sent the signal too late.)
    val = write_image_folder(work / f"signalled_release_val_{sig}", [(768, 768)] * 8, seed=9)
    argv = [REPO / "aether_release.py", "--model-path", work / "good.pth", "--validation-dir", val]
    argv += ["--output-dir", out, "--skip-int8"]  # no PTQ warning: stderr holds only what the signal prints
    result, seconds = _interrupt(argv, lambda: bool(list(out.glob(STAGING + "*"))), sig)
    assert result.returncode == code and seconds < 30
    assert one_error_line(result.stderr, "aether_release.py") == f"aether_release.py: {word}"
    assert not out.exists()  # the folder it made, empty, goes too


@pytest.mark.parametrize(
    "signal_exception, code, word", [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated")]
)
def test_a_signal_python_swallowed_in_a_finaliser_still_stops_the_run(
    capsys, monkeypatch, signal_exception, code, word
):
    # Ctrl-C as from a terminal: a background job (CI started with `cmd &`) has SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after, whatever happens

    class Collected:
        def __del__(self):
            raise signal_exception  # as a Ctrl-C or SIGTERM landing while garbage collection runs this

    def run(_):
        Collected()  # collected at once: its __del__ runs here, and Python can only print what it raises
        for _ in range(200):  # the run going on, for 2 s if nothing stops it
            time.sleep(0.01)
        return 0

    try:
        assert run_cli("x.py", lambda argv: None, run, []) == code
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == f"x.py: {word}\n"


def test_a_failed_run_removes_only_the_empty_folders_it_made(tmp_path):
    kept = tmp_path / "existed"
    kept.mkdir()
    cases = {tmp_path / "a" / "b": (False, False), kept: (False, True), tmp_path / "c": (True, True)}
    for folder, (leave_a_file, stays) in cases.items():
        with pytest.raises(KeyboardInterrupt), removed_if_left_empty(folder):
            folder.mkdir(parents=True, exist_ok=True)
            if leave_a_file:
                (folder / "model_fp32.onnx").write_bytes(b"")
            raise KeyboardInterrupt
        assert folder.exists() == stays
    assert not (tmp_path / "a").exists()  # the missing parent it made goes too


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signalled_training_run_prints_one_line(work, sig, code, word):
    out = work / f"signalled_training_{sig}"
    argv = [REPO / "aether_train.py", "--train-dir", work / "train", "--out-dir", out, "--steps", "100000"]
    argv += ["--preset", "aether_tiny", "--num-blocks", "1", "--scale", "2", "--lr-patch", "8", "--batch-size", "2"]
    argv += ["--log-every", "1"]
    log = out / "train.log"
    result, seconds = _interrupt(argv, lambda: log.exists() and "step 2/" in log.read_text(), sig)
    assert result.returncode == code and seconds < 30
    assert one_error_line(result.stderr, "aether_train.py") == f"aether_train.py: {word}"
    assert not leftovers(out)
    # the log keeps what the sitting cost, for the benchmark's training wall time
    assert re.search(r"stopped at step \d+/100000: \d+ steps in [0-9.]+ s of training steps$", log.read_text(), re.M)


def test_a_signalled_upscale_leaves_finished_images_and_no_partial_file(work, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(40):
        write_image(images / f"{i:02d}.png", photo_like(64, 64, seed=i))
    out = tmp_path / "out"
    argv = [REPO / "aether_upscale.py", "--model", work / "good.pth", "--input", images, "--output", out]
    result, _ = _interrupt(argv, lambda: len(list(out.glob("*.png"))) >= 2, signal.SIGINT)
    assert result.returncode == 130
    assert one_error_line(result.stderr, "aether_upscale.py") == "aether_upscale.py: interrupted"
    assert not leftovers(out)
    for path in out.iterdir():  # every file there is a complete image
        assert read_raw_image(path).shape[:2] == (128, 128)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_full_disk_during_the_release_is_one_line_and_leaves_nothing(work, monkeypatch, error):
    import onnx

    def full(*args, **kwargs):
        raise OSError(error, os.strerror(error), "model_fp32.onnx")

    monkeypatch.setattr(onnx, "save", full)
    out = work / f"full_disk_{error}"
    code, _, err = run_main(
        aether_release.main,
        [*["--model-path", work / "good.pth", "--validation-dir", work / "val"], "--output-dir", out, "--skip-int8"],
    )
    assert code == 1 and os.strerror(error) in one_error_line(err, "aether_release.py")
    assert not leftovers(out) and not list(out.glob("model_*"))


def test_a_file_size_limit_during_training_is_one_line(work):
    """A real write failure (RLIMIT_FSIZE makes writes past 64 KiB fail with EFBIG)."""
    out = work / "fsize"
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); import aether_train; "
        "sys.exit(aether_train.main(sys.argv[1:]))"
    )
    argv = ["--train-dir", work / "train", "--out-dir", out, "--steps", "2", "--preset", "aether_tiny"]
    argv += ["--num-blocks", "1", "--scale", "2", "--lr-patch", "8", "--batch-size", "2"]
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "File too large" in one_error_line(result.stderr, "aether_train.py")
    assert not leftovers(out)


# ---------------------------------------------------------------------------------------
# Images as people have them
# ---------------------------------------------------------------------------------------


def _exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> None:
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag (as phones write it)."""
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 100])
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = encoded.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])


@pytest.mark.parametrize(
    "orientation, turn", [(6, cv2.ROTATE_90_CLOCKWISE), (3, cv2.ROTATE_180), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)]
)
@pytest.mark.parametrize("grey", [False, True])
def test_exif_orientation_is_applied(tmp_path, orientation, turn, grey):
    pixels = as_pixels(photo_like(24, 40, seed=orientation))
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if grey else pixels
    _exif_jpeg(tmp_path / "phone.jpg", pixels, orientation)
    image = read_raw_image(tmp_path / "phone.jpg")
    turns = {
        t: cv2.rotate(pixels, t) for t in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)
    }
    assert image.shape == turns[turn].shape
    errors = {
        t: np.abs(image.astype(int) - p).mean() for t, p in {**turns, None: pixels}.items() if p.shape == image.shape
    }
    assert min(errors, key=errors.get) == turn and errors[turn] < 10, errors  # the right turn, JPEG loss only


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, colour_type: int, depth: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("depth", [8, 16])
def test_grey_with_alpha_stays_grey(work, tmp_path, depth):
    grey = as_pixels(photo_like(20, 24, seed=depth)[..., 0], np.uint16 if depth == 16 else np.uint8)
    alpha = np.full_like(grey, np.iinfo(grey.dtype).max // 2)
    interleaved = np.stack([grey, alpha], axis=2).astype(">u2" if depth == 16 else "u1")
    rows = b"".join(b"\0" + row.tobytes() for row in interleaved)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "grey_alpha.png").write_bytes(_png(24, 20, 4, depth, rows))
    code, _, err = run_main(
        aether_upscale.main, ["--model", work / "good.pth", "--input", tmp_path / "in", "--output", tmp_path / "out"]
    )
    assert code == 0, err
    out = read_raw_image(tmp_path / "out" / "grey_alpha.png")
    assert out.shape == (40, 48, 4) and out.dtype == grey.dtype
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_a_fifo_is_never_read(work, tmp_path):
    os.mkfifo(tmp_path / "x.png")  # opening it for reading would block forever
    started = time.monotonic()
    code, _, err = run_main(
        aether_upscale.main, ["--model", work / "good.pth", "--input", tmp_path / "x.png", "--output", tmp_path / "o"]
    )
    assert code == 2 and "not a regular file" in one_error_line(err, "aether_upscale.py")
    (tmp_path / "val").mkdir()  # in a folder, the FIFO is not an image of it
    os.mkfifo(tmp_path / "val" / "y.png")
    write_image(tmp_path / "val" / "z.png", photo_like(40, 40))
    code, _, err = run_main(
        aether_release.main,
        ["--model-path", work / "good.pth", "--validation-dir", tmp_path / "val", "--output-dir", tmp_path / "r"],
    )
    assert code == 0 and "Traceback" not in err
    assert time.monotonic() - started < 60


def _bomb_png(path: Path) -> None:
    """A 100-byte PNG that declares 20000 x 20000 RGB pixels (1.2 GB decoded)."""
    path.write_bytes(_png(20000, 20000, 2, 8, b"\0" * 61))


def test_decompression_bombs_are_skipped_with_one_warning(work, tmp_path):
    val = write_image_folder(tmp_path / "val", [(40, 48)], seed=8)
    _bomb_png(val / "bomb.png")
    code, _, err = run_main(
        aether_release.main,
        ["--model-path", work / "good.pth", "--validation-dir", val, "--output-dir", tmp_path / "r", "--skip-fp16"],
    )
    assert code == 0 and "Traceback" not in err
    assert len([line for line in err.splitlines() if "bomb.png" in line]) == 1
    train = write_image_folder(tmp_path / "train", [(48, 48)], seed=9)
    _bomb_png(train / "bomb.png")
    argv = ["--train-dir", train, "--out-dir", tmp_path / "t", "--steps", "1", "--preset", "aether_tiny"]
    code, _, err = run_main(aether_train.main, [*argv, "--num-blocks", "1", "--scale", "2", "--lr-patch", "8"])
    assert code == 0 and "Traceback" not in err
    assert len([line for line in err.splitlines() if "bomb.png" in line]) <= 1
    assert "bomb.png" in (tmp_path / "t" / "train.log").read_text()


@pytest.mark.parametrize("side", [1000, 12000])  # 1 Mpx, then 144 Mpx: over MAX_IMAGE_PIXELS
def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, side):
    # a valid 8-bit grey PNG of zeros: 140 KB on disk at 12000 x 12000, 144 MB decoded, which
    # OpenCV (its own limit is 2**30 pixels) would decode
    deflate = zlib.compressobj(9)
    rows = b"".join(deflate.compress(bytes(side + 1)) for _ in range(side)) + deflate.flush()
    (tmp_path / "zeros.png").write_bytes(
        _png(side, side, 0, 8, b"")[:33] + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
    )
    if side == 1000:
        assert read_raw_image(tmp_path / "zeros.png").shape == (1000, 1000)
    else:
        with pytest.raises(ImageReadError, match=r"declares more than 134 Mpx \(12000x12000\), the most that is read"):
            read_raw_image(tmp_path / "zeros.png")


@pytest.mark.parametrize("name", ["new\nline.png", "tab\tand\x1b[31mcolour.png", "bell\x07.png"])
def test_file_names_with_control_characters_give_one_line_warnings(work, tmp_path, name):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(b"not an image")
    write_image(tmp_path / "in" / f"good {name}", photo_like(16, 16))
    code, out, err = run_main(
        aether_upscale.main, ["--model", work / "good.pth", "--input", tmp_path / "in", "--output", tmp_path / "o"]
    )
    assert code == 1
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and len(err.strip().splitlines()) == 1, err
    assert len(out.strip().splitlines()) == 3, out  # the model, the good image, the count
    assert not any(c in err + out for c in "\x1b\x07\t")


# ---------------------------------------------------------------------------------------
# Options and numbers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, option, value",
    [
        (aether_upscale, "--threads", "10000"),  # the issue's examples
        (aether_upscale, "--threads", "99999999999999999999"),
        (aether_train, "--seed", "99999999999999999999"),
        (aether_release, "--threads", "-3"),  # ours
        (aether_release, "--threads", "²"),
        (aether_train, "--seed", "-1"),
        (aether_train, "--scale", "0"),
        (aether_train, "--num-blocks", "100000000"),
        (aether_upscale, "--tile", "1e9"),
    ],
)
def test_out_of_range_numbers_are_refused(work, tmp_path, script, option, value):
    argv = {
        aether_upscale: ["--model", work / "good.pth", "--input", work / "val", "--output", tmp_path / "o"],
        aether_release: [
            "--model-path",
            work / "good.pth",
            "--validation-dir",
            work / "val",
            "--output-dir",
            tmp_path / "o",
        ],
        aether_train: ["--train-dir", work / "train", "--out-dir", tmp_path / "o", "--steps", "1"],
    }[script]
    started = time.monotonic()
    code, _, err = run_main(script.main, [*argv, option, value])
    assert code == 2 and option in one_error_line(err, script.PROG)
    assert time.monotonic() - started < 10 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("declared", ["²", "٣", "-2", "99999999999999999999", ""])
def test_odd_onnx_scale_metadata_falls_back_to_measuring(sample_release, tmp_path, declared):
    import onnx

    proto = onnx.load(sample_release / "model_fp32.onnx")
    for entry in proto.metadata_props:
        if entry.key == "scale":
            entry.value = declared
    onnx.save(proto, tmp_path / "odd.onnx")
    write_image_folder(tmp_path / "in", [(16, 20)], seed=1)
    code, _, err = run_main(
        aether_upscale.main, ["--model", tmp_path / "odd.onnx", "--input", tmp_path / "in", "--output", tmp_path / "o"]
    )
    assert code == 0 and "Traceback" not in err
    assert read_raw_image(tmp_path / "o" / "image_0.png").shape[:2] == (32, 40)


def test_output_paths_that_cannot_be_folders_are_one_error_up_front(work, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    cases = [
        (aether_upscale, ["--model", work / "good.pth", "--input", work / "val", "--output", tmp_path / "dangling"]),
        (
            aether_upscale,
            ["--model", work / "good.pth", "--input", work / "val", "--output", tmp_path / "dangling" / "x"],
        ),
        (aether_train, ["--train-dir", work / "train", "--steps", "1", "--out-dir", tmp_path / "file"]),
        (aether_train, ["--train-dir", work / "train", "--steps", "1", "--out-dir", tmp_path / "file" / "run"]),
        (aether_train, ["--train-dir", work / "train", "--steps", "1", "--out-dir", tmp_path / "dangling"]),
    ]
    for script, argv in cases:
        code, _, err = run_main(script.main, argv)
        assert code == 2, (argv, err)
        one_error_line(err, script.PROG)
    assert not (tmp_path / "nowhere").exists() and (tmp_path / "file").read_text() == "x"


def _garbage_states(folder: Path, good_state: dict) -> dict[str, Path]:
    cases = {
        "random bytes": os.urandom(4096),
        "not a dict": ["format"],
        "wrong types": {**good_state, "step": "six", "config": 7},
        "config not JSON": {**good_state, "config": "{not json"},
        "weights of another network": {**good_state, "model": {"x": torch.zeros(3)}},
        "damaged optimizer": {**good_state, "optimizer": {"state": 5, "param_groups": "x"}},
    }
    paths = {}
    for i, (name, value) in enumerate(cases.items()):
        path = folder / f"state_{i}" / "training_state.pth"
        path.parent.mkdir()
        path.write_bytes(value) if isinstance(value, bytes) else torch.save(value, path)
        paths[name] = path
    return paths


def test_garbage_resume_states_are_one_error_each(work, tmp_path):
    run = tmp_path / "run"
    base = ["--train-dir", work / "train", "--steps", "2", "--preset", "aether_tiny", "--num-blocks", "1"]
    base += ["--scale", "2", "--lr-patch", "8", "--batch-size", "2"]
    code, _, err = run_main(aether_train.main, [*base, "--out-dir", run, "--stop-at", "1"])
    assert code == 0, err
    good = torch.load(run / "training_state.pth", weights_only=True)
    for name, path in _garbage_states(tmp_path, good).items():
        before = sorted(p.name for p in path.parent.iterdir())
        code, _, err = run_main(aether_train.main, [*base, "--resume", path.parent])
        assert code == 2, (name, err)
        assert "--resume" in one_error_line(err, "aether_train.py"), name
        assert sorted(p.name for p in path.parent.iterdir()) == before, name


def test_whole_image_at_once_on_a_large_image_is_one_line(work, tmp_path):
    """--tile 0 on a 4000 x 3000 image: ONNX Runtime's own log lines never reach the user."""
    (tmp_path / "in").mkdir()
    write_raw_image(tmp_path / "in" / "big.png", np.zeros((3000, 4000, 3), np.uint8))
    model = tmp_path / "m.onnx"
    import aether_arch

    aether_arch.export_onnx(load_model(work / "good.pth").fuse(), model)
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2); "
        "import aether_upscale; sys.exit(aether_upscale.main(sys.argv[2:]))"
    )
    limit = _virtual_memory_after_imports() + (1 << 30)
    argv = ["--model", model, "--input", tmp_path / "in", "--output", tmp_path / "o", "--tile", "0"]
    result = subprocess.run(
        [sys.executable, "-c", code, str(limit), *map(str, argv)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode in (0, 2), result.stderr
    assert "\x1b[" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
