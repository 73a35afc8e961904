"""aether_release.py end to end on a one-block aether_tiny x2 and 24x32 images: the six
artifacts and the NCNN one, the ONNX contract, PTQ vs QAT, atomic re-runs, failed artifacts and
bad input. Each release is built once per module; bad-input cases stop before any heavy work."""

import argparse
import contextlib
import copy
import hashlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import aether_ncnn
import aether_release
from aether_arch import aether_tiny, calibrate_int8, detect_config, load_model, prepare_qat, save_checkpoint
from aether_bench_quality import bicubic_upscaler, held_out_pairs, psnr_per_image
from aether_data import psnr, read_image, to_image, to_tensor, write_image
from conftest import (
    SAMPLES,
    UNWRITABLE_KINDS,
    OnnxModelInfo,
    as_pixels,
    chainner_onnx_info,
    on_the_old_grid,
    photo_like,
    train_steps,
    unwritable_output_dir,
)

ARTIFACTS = [f"model_{p}.{f}" for p in ("fp32", "fp16", "int8") for f in ("pth", "onnx")]
ONNX_FILES = [name for name in ARTIFACTS if name.endswith(".onnx")]
NCNN_FILES = [f"model_{p}.ncnn.{suffix}" for p in ("fp32", "fp16") for suffix in ("param", "bin")]
# What pnnx leaves next to its input unless it runs in a folder of its own.
PNNX_SIDE_FILES = ("*.pnnx.param", "*.pnnx.bin", "model*_pnnx.py", "*.pnnx.onnx", "*.pnnxsim.onnx", "model*_ncnn.py")
PNNX_SIDE_FILES += (".pnnx-*", "model.ncnn.*")  # our own temporary folder, pnnx's default output names
REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def release(model, validation_dir, output_dir, *extra) -> tuple[int, str, str]:
    """main() with stdout/stderr captured (module fixtures cannot use capsys)."""
    argv = ["--model-path", model, "--validation-dir", validation_dir, "--output-dir", output_dir, *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = aether_release.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("release")


@pytest.fixture(scope="module")
def val_dir(workdir):
    """Three usable 24x32 images (RGB, 16-bit greyscale, RGBA) plus files to skip (unreadable,
    too small, flat)."""
    folder = workdir / "val"
    folder.mkdir()
    write_image(folder / "rgb.png", photo_like(24, 32, seed=1))
    cv2.imwrite(str(folder / "grey16.png"), as_pixels(photo_like(24, 32, seed=2)[..., 0], np.uint16))
    bgra = np.dstack([as_pixels(photo_like(24, 32, seed=3)), np.full((24, 32), 128, np.uint8)])
    cv2.imwrite(str(folder / "rgba.png"), bgra)
    (folder / "broken.png").write_bytes(b"not an image")
    write_image(folder / "tiny.png", photo_like(6, 6, seed=4))
    write_image(folder / "flat.png", np.full((24, 32, 3), 0.5, np.float32))  # bicubic is exact: PSNR inf
    (folder / "readme.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def float_model():
    torch.manual_seed(1)
    model = aether_tiny(scale=2, num_blocks=1)
    train_steps(model)
    return model


@pytest.fixture(scope="module")
def float_checkpoint(workdir, float_model):
    path = workdir / "float.pth"
    save_checkpoint(float_model, path)
    return path


@pytest.fixture(scope="module")
def qat_checkpoint(workdir, float_model):
    """A QAT checkpoint for the cpu profile whose activation ranges are set (as after QAT)."""
    model = prepare_qat(copy.deepcopy(float_model), int8_profile="cpu")
    batches = [to_tensor(photo_like(12, 16, seed=seed)) for seed in range(3)]
    calibrate_int8(model, batches)
    path = workdir / "qat.pth"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def float_release(workdir, float_checkpoint, val_dir):
    out = workdir / "out_float"
    code, stdout, stderr = release(float_checkpoint, val_dir, out)
    assert code == 0, stderr
    return out, stdout, stderr


def onnx_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def no_leftovers(folder: Path) -> bool:
    """No staging folder and no temporary file left behind."""
    return not [p for p in folder.iterdir() if p.name.startswith(aether_release.STAGING_PREFIX) or ".tmp-" in p.name]


def pnnx_side_files(folder: Path, *, recursive: bool = True) -> list[str]:
    return [p.name for pattern in PNNX_SIDE_FILES for p in (folder.rglob if recursive else folder.glob)(pattern)]


# ---------------------------------------------------------------------------------------
# A full release of a float checkpoint
# ---------------------------------------------------------------------------------------


def test_release_writes_every_artifact_reports_and_comparison(float_release):
    out, stdout, stderr = float_release
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ARTIFACTS + NCNN_FILES + ["comparison.png", "release_report.json", "release_report.md"]
    )
    report = json.loads((out / "release_report.json").read_text())
    assert report["status"] == "passed" and report["fp16_onnx_io_dtype"] == "float16"
    assert [a["artifact"] for a in report["artifacts"]] == [
        *(f"model_{p}.{f}" for f in ("pth", "onnx") for p in ("fp32", "fp16", "int8")),
        "model_fp32.ncnn",
        "model_fp16.ncnn",
    ]
    assert [f["file"] for a in report["artifacts"] for f in a["files"]] == [
        *(f"model_{p}.{f}" for f in ("pth", "onnx") for p in ("fp32", "fp16", "int8")),
        *NCNN_FILES,
    ]
    for artifact in report["artifacts"]:
        assert artifact["file"] == artifact["files"][0]["file"]
        for file in artifact["files"]:
            data = (out / file["file"]).read_bytes()
            assert file["size_bytes"] == len(data) and file["sha256"] == hashlib.sha256(data).hexdigest()
        assert artifact["size_bytes"] == artifact["files"][0]["size_bytes"]
        (run,) = artifact["runs"]  # CPU only here: one runtime per artifact
        assert run["passed"] and run["latency_ms"] > 0 and len(run["images"]) == 6  # 3 images x 2 protocols
        for image in run["images"]:
            assert image["output_shape"] == [1, 3, 24, 32]
            assert image["fidelity_db"] == "inf" or image["fidelity_db"] >= artifact["fidelity_floor_db"]
            # INT8 files are also held to the quantized model's own arithmetic, and only they
            int8_floor = artifact["int8_reference_floor_db"]
            assert (int8_floor is not None) == (artifact["precision"] == "int8")
            assert int8_floor is None or image["int8_reference_db"] == "inf" or image["int8_reference_db"] >= int8_floor
        # the quality under each protocol is the mean of its own images, next to bicubic's on the same LR
        for protocol in ("aa-bicubic", "sharp"):
            mine = [i for i in run["images"] if i["protocol"] == protocol]
            assert len(mine) == 3
            assert run["mean_quality_db_by_protocol"][protocol] == pytest.approx(
                statistics.fmean(i["quality_db"] for i in mine), abs=2e-3
            )
            assert run["mean_bicubic_db_by_protocol"][protocol] == pytest.approx(
                statistics.fmean(i["bicubic_db"] for i in mine), abs=2e-3
            )
        assert run["mean_quality_db"] == run["mean_quality_db_by_protocol"]["aa-bicubic"]
        by_protocol = run["mean_bicubic_db_by_protocol"]
        assert by_protocol["aa-bicubic"] != by_protocol["sharp"]  # the two protocols' LR differ
    assert [(i["name"], i["protocol"]) for i in report["images"]] == [
        (name, protocol) for name in ("grey16.png", "rgb.png", "rgba.png") for protocol in ("aa-bicubic", "sharp")
    ]
    assert "total" in report["timings_s"]
    markdown = (out / "release_report.md").read_text()
    assert all(name in markdown for name in ARTIFACTS + NCNN_FILES) and "## Timings" in markdown
    assert "PSNR dB, aa-bicubic LR (bicubic)" in markdown and "PSNR dB, sharp LR (bicubic)" in markdown
    assert "input blob `data`, output blob `output`" in markdown
    comparison, _ = read_image(out / "comparison.png")
    assert comparison.shape[1] > 3 * comparison.shape[0]  # bicubic | FP32 | INT8 | original
    assert all(name in stdout for name in ARTIFACTS + ["model_fp32.ncnn", "model_fp16.ncnn"])
    assert "8 artifact(s)" in stdout and "all passed" in stdout
    # skipped and converted images are reported, files without an image suffix ignored
    assert "skipped broken.png" in stderr and "skipped tiny.png" in stderr and "readme" not in stderr
    assert "skipped flat.png: bicubic reproduces it exactly (a flat image)" in stderr
    assert "16-bit, greyscale expanded to RGB" in stderr and "alpha channel dropped" in stderr
    assert no_leftovers(out) and not pnnx_side_files(out) and not pnnx_side_files(Path.cwd(), recursive=False)


def test_float_checkpoint_gets_the_ptq_warning(float_release):
    out, _, stderr = float_release
    assert "POST-TRAINING CALIBRATION (PTQ)" in stderr and "aether_train.py --qat --pretrained" in stderr
    assert onnx_metadata(out / "model_int8.onnx")["quantization"] == "ptq"
    assert any("PTQ" in w for w in json.loads((out / "release_report.json").read_text())["warnings"])


def test_pth_files_load_safely(float_release):
    out, _, _ = float_release
    for name in ("model_fp32.pth", "model_fp16.pth", "model_int8.pth"):
        checkpoint = torch.load(out / name, weights_only=True)
        metadata = json.loads(checkpoint["metadata"])
        assert metadata["precision"] == name[6:10] and metadata["architecture"] == "AetherNet"
        model = load_model(out / name)
        assert model.scale == 2 and model.fused and not model.training
        assert model.qat == (name == "model_int8.pth")
    fp16 = torch.load(out / "model_fp16.pth", weights_only=True)["params"]
    assert {v.dtype for v in fp16.values() if v.is_floating_point()} == {torch.float16}
    int8 = torch.load(out / "model_int8.pth", weights_only=True)["params"]
    conv_weights = [k for k in int8 if k.endswith(".weight") and int8[k].dim() == 4]
    assert conv_weights and all(int8[k].dtype == torch.int8 for k in conv_weights)
    assert detect_config(int8)["int8_profile"] == "cpu"


@pytest.mark.parametrize("name", ONNX_FILES)
def test_onnx_contract_and_metadata(float_release, name):
    out, _, _ = float_release
    proto = onnx.load(out / name)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(d.dim_param for d in (dims[0], dims[2], dims[3]))
    precision = name[6:10]
    meta = onnx_metadata(out / name)
    expected = {
        "architecture": "AetherNet",
        "scale": "2",
        "precision": precision,
        "input_channels": "3",
        "output_channels": "3",
        "value_range": "0-1",
        "color_order": "RGB",
        "layout": "NCHW",
        "io_dtype": "float16" if precision == "fp16" else "float32",
        "int8_profile": "cpu" if precision == "int8" else "none",
        "quantization": "ptq" if precision == "int8" else "none",
        "version": aether_release.aether_arch.__version__,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert json.loads(meta["config"])["num_blocks"] == 1 and meta["preset"] == "custom"
    assert meta["fused"] == "true" and proto.opset_import[0].version == 17
    assert proto.ir_version == 8  # stock chaiNNer's onnxruntime 1.17.1 reads IR <= 9


OLD_ORT_PYTHON = os.environ.get("AETHER_OLD_ORT_PYTHON")  # .ci/run: a venv with onnxruntime==1.17.1
RUN_IN_OLD_ORT = """
import sys, numpy as np, onnxruntime
lr = np.load(sys.argv[1])
for path in sys.argv[2:]:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    fp16 = session.get_inputs()[0].type == "tensor(float16)"
    out = session.run(None, {"input": lr.astype(np.float16) if fp16 else lr})[0]
    np.save(path + ".old.npy", out.astype(np.float32))
print(onnxruntime.__version__)
"""


def test_worse_than_bicubic_on_sharp_input_is_a_warning_and_the_zoo_model_is_not(sample_release, tmp_path):
    # the first sample learned antialiased bicubic LR only: on sharp (plain cubic) LR it loses to bicubic
    log = (sample_release.parent / "release.log").read_text()
    warnings = [line for line in log.splitlines() if "worse than bicubic" in line]
    assert len(warnings) == 1 and "with sharp LR" in warnings[0] and "over-sharpens aliased input" in warnings[0]
    report = json.loads((sample_release / "release_report.json").read_text())
    quality = report["artifacts"][0]["runs"][0]
    assert quality["mean_quality_db_by_protocol"]["sharp"] < quality["mean_bicubic_db_by_protocol"]["sharp"]
    # the zoo's model, trained on the robust recipe, beats bicubic on both on the same crop
    code, _, stderr = release(
        MODELS / "aether_tiny_x2.pth", sample_release.parent / "val", tmp_path / "zoo", "--skip-ncnn"
    )
    assert code == 0 and "worse than bicubic" not in stderr, stderr
    run = json.loads((tmp_path / "zoo" / "release_report.json").read_text())["artifacts"][0]["runs"][0]
    for protocol in ("aa-bicubic", "sharp"):
        assert run["mean_quality_db_by_protocol"][protocol] > run["mean_bicubic_db_by_protocol"][protocol]


# Every QAT model of the zoo (not the float checkpoints its QAT started from)
ZOO = sorted(p.name for p in MODELS.glob("aether_*_x[0-9].pth"))


@pytest.mark.parametrize("name", [*ZOO, "first sample"])
def test_zoo_models_ship_the_exact_nearest_neighbour_shortcut(name):
    """On the INT8 grid, without bias; the first sample predates the fixed shortcut and is the
    neighbour that keeps the one it learned."""
    model = load_model(SAMPLES / "aether_tiny_x2.pth" if name == "first sample" else MODELS / name)
    assert model.has_exact_shortcut() == (name != "first sample")


@pytest.mark.parametrize("name", [*ZOO, "first sample"])
def test_every_zoo_model_beats_bicubic_on_both_protocols_in_int8(name):
    """The INT8 model (its QAT simulation, which the INT8 files match) on samples/val; the first
    sample, trained on antialiased bicubic LR only, is the neighbour that loses on sharp LR."""
    path = SAMPLES / "aether_tiny_x2.pth" if name == "first sample" else MODELS / name
    model = load_model(path)
    assert model.qat
    scale = model.scale

    def upscale(lr):
        with torch.no_grad():
            return model(torch.from_numpy(lr)).numpy()

    gains = {}
    for protocol in ("aa-bicubic", "sharp"):
        pairs = held_out_pairs(str(SAMPLES / "val"), scale, protocol)
        ours, bicubic = (np.mean(psnr_per_image(f, pairs, scale)) for f in (upscale, bicubic_upscaler(scale)))
        gains[protocol] = ours - bicubic
    if name == "first sample":
        assert gains["aa-bicubic"] > 1.0 and gains["sharp"] < -1.0, gains
    else:
        assert min(gains.values()) > 0.3, gains


@pytest.mark.skipif(not OLD_ORT_PYTHON, reason="set AETHER_OLD_ORT_PYTHON to a Python with onnxruntime==1.17.1")
def test_artifacts_run_in_stock_chainners_onnxruntime(tmp_path, sample_release):
    """chaiNNer pins onnxruntime 1.17.1: every ONNX file loads there and gives what the current
    ONNX Runtime gives (FP32 and INT8 to float rounding, FP16 within 1/255)."""
    lr = np.ascontiguousarray(read_image(REPO / "samples" / "val" / "coffee.png")[0][:48, :64].transpose(2, 0, 1)[None])
    np.save(tmp_path / "lr.npy", lr)
    paths = [tmp_path / name for name in ONNX_FILES]
    for path in paths:
        shutil.copy(sample_release / path.name, path)
    result = subprocess.run(
        [OLD_ORT_PYTHON, "-c", RUN_IN_OLD_ORT, tmp_path / "lr.npy", *paths], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "1.17.1", result.stderr[-2000:]
    for path in paths:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        fp16 = session.get_inputs()[0].type == "tensor(float16)"
        current = session.run(None, {"input": lr.astype(np.float16) if fp16 else lr})[0].astype(np.float32)
        old = np.load(str(path) + ".old.npy")
        assert old.shape == current.shape == (1, 3, 96, 128)
        assert np.abs(old - current).max() <= (1 / 255 if fp16 else 1e-5), path.name


@pytest.mark.parametrize("name", ONNX_FILES)
def test_chainner_reads_channels_scale_and_precision_from_the_graph(float_release, name):
    info = chainner_onnx_info(onnx.load(float_release[0] / name))
    assert info == OnnxModelInfo(channels=3, scale=2, fp16=name == "model_fp16.onnx")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_artifacts_run_one_pixel_high_inputs_and_batches_of_four(float_release, precision):
    out, _, _ = float_release
    session = ort.InferenceSession(str(out / f"model_{precision}.onnx"), providers=["CPUExecutionProvider"])
    reference = load_model(out / f"model_{'int8' if precision == 'int8' else 'fp32'}.pth")
    io_dtype = np.float16 if precision == "fp16" else np.float32
    tolerance = {"fp32": 1e-5, "fp16": 4e-3, "int8": 2 / 255}[precision]
    rng = np.random.default_rng(3)
    for shape in ((1, 3, 1, 9), (1, 3, 1, 1), (4, 3, 7, 5)):
        x = rng.random(shape, dtype=np.float32)
        (got,) = session.run(None, {"input": x.astype(io_dtype)})
        assert got.dtype == io_dtype and got.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got.astype(np.float32), expected, atol=tolerance, rtol=0)
        for i in range(shape[0]):  # batched items equal the same images run one by one
            (single,) = session.run(None, {"input": x[i : i + 1].astype(io_dtype)})
            np.testing.assert_allclose(got[i : i + 1].astype(np.float32), single, atol=1e-6, rtol=0)


def test_fp16_onnx_has_float16_weights_and_io_and_runs(float_release):
    out, _, _ = float_release
    proto = onnx.load(out / "model_fp16.onnx")
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    weight_types = {init.data_type for init in proto.graph.initializer} & float_types
    assert weight_types == {onnx.TensorProto.FLOAT16}
    for value in (proto.graph.input[0], proto.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = ort.InferenceSession(str(out / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": np.random.rand(1, 3, 5, 7).astype(np.float16)})
    assert output.dtype == np.float16 and output.shape == (1, 3, 10, 14)


# ---------------------------------------------------------------------------------------
# NCNN
# ---------------------------------------------------------------------------------------

# What upscayl and realesrgan-ncnn-vulkan need: plain layers, no Slice (a stepped slice is how a
# careless export writes a pixel shuffle) and no layer that bakes in a shape.
NCNN_LAYER_TYPES = {"Input", "Split", "Convolution", "ReLU", "BinaryOp", "PixelShuffle", "Clip"}


def run_ncnn(param: Path, lr: np.ndarray) -> np.ndarray:
    """(1, 3, h, w) -> (1, 3, H, W) through the ncnn Python API as an app calls it."""
    import ncnn

    with ncnn.Net() as net:
        net.opt.use_vulkan_compute = False
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
        assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
        assert (net.input_names(), net.output_names()) == (["data"], ["output"])
        pixels = np.ascontiguousarray(lr[0])  # the Mat points into it
        with net.create_extractor() as extractor:
            extractor.input("data", ncnn.Mat(pixels))
            code, output = extractor.extract("output")
            assert code == 0
            return np.array(output)[None]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ncnn_files_run_any_input_size_in_ncnn(float_release, precision):
    """Two input sizes (a fixed-shape .param would fail the second) against the fused FP32
    PyTorch model, at the artifact's fidelity floor."""
    out, _, _ = float_release
    param = out / f"model_{precision}.ncnn.param"
    lines = param.read_text().splitlines()
    assert lines[0] == "7767517" and {line.split()[0] for line in lines[2:]} <= NCNN_LAYER_TYPES
    reference = load_model(out / "model_fp32.pth")
    for height, width in ((12, 16), (21, 9)):
        lr = to_tensor(photo_like(height, width, seed=height))
        output = run_ncnn(param, lr.numpy())
        assert output.shape == (1, 3, 2 * height, 2 * width)
        with torch.no_grad():
            expected = reference(lr).numpy()
        assert psnr(to_image(output), to_image(expected)) >= aether_release.FIDELITY_FLOOR_DB[precision]


def test_ncnn_blob_renaming_refuses_graphs_it_cannot_name():
    two_outputs = "7767517\n3 3\nInput in0 0 1 in0\nSplit s 1 2 in0 a b\nReLU r 1 1 a c\n"
    with pytest.raises(aether_ncnn.NcnnConversionError, match="1 input.* 2 output"):
        aether_ncnn.rename_io_blobs(two_outputs)
    taken = "7767517\n3 3\nInput in0 0 1 in0\nReLU r 1 1 in0 data\nReLU r2 1 1 data out0\n"
    with pytest.raises(aether_ncnn.NcnnConversionError, match="already has a blob named 'data'"):
        aether_ncnn.rename_io_blobs(taken)
    with pytest.raises(aether_ncnn.NcnnConversionError, match="line 4 is not a layer"):
        aether_ncnn.rename_io_blobs("7767517\n2 2\nInput in0 0 1 in0\ngarbage\n")


# ---------------------------------------------------------------------------------------
# QAT checkpoints, re-runs, skips and failures
# ---------------------------------------------------------------------------------------


def test_qat_checkpoint_then_rerun_for_another_profile(workdir, qat_checkpoint, val_dir):
    out = workdir / "out_qat"
    common = [qat_checkpoint, val_dir, out, "--skip-fp16"]
    code, _, stderr = release(*common)
    assert code == 0, stderr
    assert "PTQ" not in stderr and "fine-tuned with QAT" not in stderr
    meta = onnx_metadata(out / "model_int8.onnx")
    assert meta["quantization"] == "qat" and meta["int8_profile"] == "cpu"

    # Re-run into the same folder, for the profile the checkpoint was not trained for.
    code, _, stderr = release(*common, "--int8-profile", "tensorrt")
    assert code == 0, stderr
    assert "fine-tuned with QAT for the 'cpu' INT8 profile" in stderr and "tensorrt" in stderr
    meta = onnx_metadata(out / "model_int8.onnx")
    assert meta["quantization"] == "ptq" and meta["int8_profile"] == "tensorrt"
    int8 = torch.load(out / "model_int8.pth", weights_only=True)["params"]
    assert detect_config(int8)["int8_profile"] == "tensorrt"
    assert json.loads((out / "release_report.json").read_text())["int8"]["profile"] == "tensorrt"
    assert no_leftovers(out)


def test_skip_flags_leave_out_and_remove_those_artifacts(tmp_path, float_release, float_checkpoint, val_dir):
    out = tmp_path / "out"
    shutil.copytree(float_release[0], out)  # an earlier full release in the same folder
    code, _, stderr = release(
        float_checkpoint,
        val_dir,
        out,
        "--skip-fp16",
        "--skip-int8",
        "--skip-ncnn",
        "--max-images",
        "1",
    )
    assert code == 0, stderr
    assert sorted(p.name for p in out.glob("model_*")) == ["model_fp32.onnx", "model_fp32.pth"]
    assert "removed model_int8.pth" in stderr and "PTQ" not in stderr
    assert "removed model_fp32.ncnn.param, model_fp32.ncnn.bin" in stderr
    report = json.loads((out / "release_report.json").read_text())
    assert len(report["artifacts"]) == 2 and [i["name"] for i in report["images"]] == ["grey16.png"] * 2  # 2 protocols
    assert report["ncnn"]["skipped"] == "NCNN artifact skipped: --skip-ncnn"


@pytest.mark.parametrize("package", ["pnnx", "ncnn"])
def test_a_missing_pnnx_or_ncnn_is_named_with_the_install_command(monkeypatch, package):
    assert aether_ncnn.unavailable() is None
    monkeypatch.setitem(sys.modules, package, None)  # `import pnnx` raises ModuleNotFoundError
    assert aether_ncnn.unavailable() == f"{package} is not installed (pip install pnnx ncnn)"


def test_without_pnnx_the_release_has_six_artifacts_and_one_note(
    tmp_path, monkeypatch, float_release, float_checkpoint, val_dir
):
    monkeypatch.setitem(sys.modules, "pnnx", None)  # as on a machine without it: the import fails
    out = tmp_path / "out"
    shutil.copytree(float_release[0], out)  # an earlier release's NCNN files must not stay
    code, stdout, stderr = release(float_checkpoint, val_dir, out, "--max-images", "1")
    assert code == 0, stderr
    line = "NCNN artifact skipped: pnnx is not installed (pip install pnnx ncnn)"
    assert [entry for entry in stderr.splitlines() if "NCNN artifact" in entry] == [f"note: {line}"]
    assert sorted(p.name for p in out.glob("model_*")) == sorted(ARTIFACTS) and "6 artifact(s)" in stdout
    report = json.loads((out / "release_report.json").read_text())
    assert len(report["artifacts"]) == 6 and report["ncnn"]["skipped"] == line
    assert report["status"] == "passed"
    markdown = (out / "release_report.md").read_text()
    assert [entry for entry in markdown.splitlines() if "NCNN" in entry] == [f"* {line}"]


def test_a_failed_ncnn_conversion_or_validation_fails_that_artifact_only(
    tmp_path, monkeypatch, float_checkpoint, val_dir
):
    """pnnx fails for real on the FP16 one (it is handed the .pth instead of the ONNX file);
    the FP32 one converts, but its weights are then zeroed, so ncnn's output is far off. Neither
    leaves a pnnx side file in the output folder or the working directory."""
    real_convert = aether_release.convert_onnx

    def convert(source: Path, param: Path, weights: Path, *, fp16: bool, threads: int) -> None:
        real_convert(source.with_name("model_fp32.pth") if fp16 else source, param, weights, fp16=fp16, threads=threads)
        if not fp16:
            weights.write_bytes(bytes(weights.stat().st_size))

    monkeypatch.setattr(aether_release, "convert_onnx", convert)
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    out.mkdir()
    monkeypatch.chdir(cwd)
    (out / "model_fp16.ncnn.bin").write_bytes(b"from an earlier release")
    code, _, stderr = release(float_checkpoint, val_dir, out, "--skip-int8", "--max-images", "1")
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("aether_release.py: error:")]
    assert len(errors) == 2 and "Traceback" not in stderr
    assert errors[0].startswith("aether_release.py: error: model_fp32.ncnn failed validation (ncnn CPU: ")
    assert "below the 60 dB floor" in errors[0]
    assert errors[0].endswith("moved to model_fp32.ncnn.param.failed + model_fp32.ncnn.bin.failed")
    assert "model_fp16.ncnn failed validation (pnnx: does not convert: pnnx exited with code" in errors[1]
    assert errors[1].endswith("; no file was made")
    names = {p.name for p in out.iterdir()}
    assert {"model_fp32.ncnn.param.failed", "model_fp32.ncnn.bin.failed", "model_fp16.onnx"} <= names
    assert not {"model_fp32.ncnn.param", "model_fp16.ncnn.param", "model_fp16.ncnn.bin"} & names
    report = json.loads((out / "release_report.json").read_text())
    by_name = {artifact["artifact"]: artifact for artifact in report["artifacts"]}
    assert report["status"] == "failed" and by_name["model_fp16.ncnn"]["files"] == []
    assert [a["passed"] for a in report["artifacts"]] == [True] * 4 + [False] * 2
    assert no_leftovers(out) and not pnnx_side_files(out) and not list(cwd.iterdir())


def _int8_edge_case(kind: str, float_model) -> torch.nn.Module:
    """Valid checkpoints whose INT8 has channels with zero weights: a fresh model (its upsampler
    and every block's second conv are all zero), trained weights with dead channels whose
    biases are kept, scale 1."""
    if kind == "fresh":
        return aether_tiny(scale=2, num_blocks=1)
    if kind == "scale_1":
        return aether_tiny(scale=1, num_blocks=1)
    model = copy.deepcopy(float_model).fuse()
    with torch.no_grad():
        for conv in (model.blocks[0].conv1, model.blocks[0].conv2, model.upsample):
            conv.weight[::3] = 0  # every third output channel dead, its bias kept
    return model


@pytest.mark.parametrize("kind", ["fresh", "dead_channels", "scale_1"])
def test_int8_is_right_for_channels_with_zero_weights(tmp_path, float_model, val_dir, kind):
    """Such a channel must not get a weight scale so small that its int32 bias saturates: the
    release passes, and model_int8.pth reproduces model_int8.onnx within 1/255."""
    path = tmp_path / "model.pth"
    save_checkpoint(_int8_edge_case(kind, float_model), path)
    out = tmp_path / "out"
    code, _, stderr = release(path, val_dir, out, "--skip-fp16", "--skip-ncnn")  # NCNN has no INT8 artifact
    assert code == 0, stderr
    session = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    x = to_tensor(photo_like(20, 28, seed=5))
    with torch.no_grad():
        from_pth = load_model(out / "model_int8.pth")(x).numpy()
    from_onnx = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(from_pth - from_onnx).max() <= 1 / 255


def _kernels_off_by(runtime_for, step: float):
    """onnx_runtime, but the INT8 file's outputs are ``step`` off in a checkerboard: what int16
    pair sums that saturate (old full int8 grid, x86 CPU without VNNI) did to ONNX Runtime's
    integer kernels, close enough to FP32 to pass its 30 dB floor."""

    def runtime(model, provider, threads):
        inner = runtime_for(model, provider, threads)
        if "int8" not in Path(model).name:
            return inner

        def open_model():
            upscale = inner.open()

            def off(lr):
                out = upscale(lr)
                return np.clip(out + step * (-1.0) ** np.indices(out.shape).sum(0), 0, 1).astype(np.float32)

            return off

        return aether_release.Runtime(inner.label, open_model)

    return runtime


def _qat_release_with_kernels_off(tmp_path, monkeypatch, float_model, val_dir, *, old_grid: bool):
    """(exit code, stderr, report's artifacts by name) of a QAT checkpoint's release whose INT8
    ONNX outputs are 1/255 off (see _kernels_off_by)."""
    model = prepare_qat(copy.deepcopy(float_model), int8_profile="cpu")
    calibrate_int8(model, [to_tensor(photo_like(12, 16, seed=seed)) for seed in range(3)])
    path = tmp_path / "qat.pth"
    save_checkpoint(on_the_old_grid(model) if old_grid else model, path)
    monkeypatch.setattr(aether_release, "onnx_runtime", _kernels_off_by(aether_release.onnx_runtime, 1 / 255))
    out = tmp_path / "out"
    code, _, stderr = release(path, val_dir, out, "--skip-fp16", "--skip-ncnn")
    assert (out / "model_int8.onnx.failed").is_file() and (out / "model_int8.pth").is_file()
    artifacts = json.loads((out / "release_report.json").read_text())["artifacts"]
    return code, stderr, {a["artifact"]: a for a in artifacts}


def test_int8_kernels_off_the_quantized_arithmetic_fail_though_near_fp32(tmp_path, monkeypatch, float_model, val_dir):
    """The INT8 reference check catches what the FP32 floor lets through (the neighbours'
    releases pass it); a 7-bit file gets no advice to re-train."""
    code, stderr, artifacts = _qat_release_with_kernels_off(tmp_path, monkeypatch, float_model, val_dir, old_grid=False)
    assert code == 1 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("aether_release.py: error:")]
    assert len(errors) == 1 and "model_int8.onnx failed validation" in errors[0]
    assert "PSNR vs the INT8 reference (the quantized model simulated in PyTorch)" in errors[0]
    assert "below the 60 dB floor" in errors[0] and "FP32 PyTorch output" not in errors[0]
    (run,) = artifacts["model_int8.onnx"]["runs"]
    assert run["worst_fidelity_db"] >= artifacts["model_int8.onnx"]["fidelity_floor_db"]  # the old check passes it
    assert run["worst_int8_reference_db"] < artifacts["model_int8.onnx"]["int8_reference_floor_db"] == 60.0
    (pth,) = artifacts["model_int8.pth"]["runs"]  # oneDNN's kernels on the same grids pass
    assert pth["passed"] and float(pth["worst_int8_reference_db"]) >= 60.0  # "inf" when no rounding flips
    assert "QAT-trained on the full [-127, 127] weight grid" not in stderr


def test_an_old_grid_file_that_misses_the_int8_reference_is_told_to_re_train(
    tmp_path, monkeypatch, float_model, val_dir
):
    code, stderr, artifacts = _qat_release_with_kernels_off(tmp_path, monkeypatch, float_model, val_dir, old_grid=True)
    assert code == 1 and "Traceback" not in stderr
    (run,) = artifacts["model_int8.onnx"]["runs"]
    assert run["worst_int8_reference_db"] < 60.0
    (pth,) = artifacts["model_int8.pth"]["runs"]  # an old-grid model_int8.pth runs the simulation itself
    assert pth["passed"] and pth["worst_int8_reference_db"] == "inf"
    assert "model_int8.onnx in ONNX Runtime CPU missed the INT8 reference" in stderr
    assert (
        "QAT-trained on the full [-127, 127] weight grid" in stderr and "aether_train.py --qat --pretrained" in stderr
    )


def test_failed_artifact_is_named_and_not_left_under_its_name(tmp_path, monkeypatch, float_checkpoint, val_dir):
    monkeypatch.setitem(aether_release.FIDELITY_FLOOR_DB, "int8", 1000.0)
    out, calibration = tmp_path / "out", tmp_path / "calibration"
    out.mkdir()
    (out / "model_int8.onnx").write_bytes(b"from an earlier release")
    calibration.mkdir()
    shutil.copy(val_dir / "rgb.png", calibration)
    code, _, stderr = release(
        float_checkpoint,
        val_dir,
        out,
        "--skip-fp16",
        "--calibration-dir",
        calibration,
    )
    assert code == 1
    assert f"PTQ) on 1 image(s) from {calibration}" in stderr and "calibrated on the validation" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("aether_release.py: error:")]
    assert len(errors) == 2 and "model_int8.pth failed validation" in errors[0]
    assert "model_int8.onnx failed validation" in errors[1] and "below the 1000 dB floor" in errors[1]
    assert "Traceback" not in stderr
    names = {p.name for p in out.iterdir()}
    assert {"model_fp32.pth", "model_fp32.onnx", "model_int8.pth.failed", "model_int8.onnx.failed"} <= names
    assert not {"model_int8.pth", "model_int8.onnx"} & names
    report = json.loads((out / "release_report.json").read_text())
    assert report["status"] == "failed" and no_leftovers(out)


# ---------------------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, nothing written
# ---------------------------------------------------------------------------------------


def expect_bad_input(capsys, model, validation, out, *extra) -> str:
    """main() on bad input: exit 2, nothing on stdout, one error line on stderr (returned)."""
    argv = ["--model-path", model, "--validation-dir", validation, "--output-dir", out, *extra]
    code = aether_release.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2 and not captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aether_release.py: error: "), captured.err
    return lines[0]


def _bad_checkpoint(kind: str, folder: Path, float_checkpoint: Path) -> Path:
    path = folder / "model.pth"
    if kind == "missing":
        return folder / "missing.pth"
    if kind == "other_architecture":
        torch.save({"params": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, path)
    elif kind == "corrupt":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        data = float_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "needs_code":
        torch.save({"params": argparse.Namespace(weight=torch.zeros(1))}, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "other_architecture", "corrupt", "truncated", "needs_code"])
def test_bad_checkpoint(tmp_path, capsys, kind, float_checkpoint, val_dir):
    out = tmp_path / "out"
    error = expect_bad_input(capsys, _bad_checkpoint(kind, tmp_path, float_checkpoint), val_dir, out)
    assert error.startswith("aether_release.py: error: --model-path") and not out.exists()


def _bad_validation_dir(kind: str, folder: Path) -> Path:
    path = folder / "val"
    if kind != "missing":
        path.mkdir()
    if kind == "no_images":
        (path / "notes.txt").write_text("hello")
    elif kind == "only_unusable":
        (path / "broken.png").write_bytes(b"\x89PNG broken")
        write_image(path / "tiny.png", np.zeros((5, 5, 3), np.float32))
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "no_images", "only_unusable"])
def test_bad_validation_dir(tmp_path, capsys, kind, float_checkpoint):
    out = tmp_path / "out"
    error = expect_bad_input(capsys, float_checkpoint, _bad_validation_dir(kind, tmp_path), out)
    assert "--validation-dir" in error and not out.exists()


@pytest.mark.parametrize("kind", UNWRITABLE_KINDS)
def test_bad_output_dir(tmp_path, capsys, monkeypatch, kind, float_checkpoint, val_dir):
    out, blocker = unwritable_output_dir(tmp_path, kind, monkeypatch)
    assert "--output-dir" in expect_bad_input(capsys, float_checkpoint, val_dir, out)
    assert blocker.read_text() == "x" and (not out.is_dir() or not list(out.iterdir()))


@pytest.mark.parametrize("option", [["--opset", "12"], ["--max-images", "0"], ["--device", "tpu"]])
def test_bad_option(capsys, option, tmp_path):
    assert option[0] in expect_bad_input(capsys, "m.pth", "v", tmp_path / "o", *option)


def test_help_explains_every_option(capsys):
    assert aether_release.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--model-path",
        "--output-dir",
        "--validation-dir",
        "--calibration-dir",
        "--opset",
        "--int8-profile",
        "--skip-fp16",
        "--skip-int8",
        "--skip-ncnn",
        "--max-images",
        "--threads",
        "--device",
    ):
        assert option in text


def test_command_line_reports_bad_input_without_traceback(tmp_path, val_dir):
    model = tmp_path / "model.pth"
    model.write_bytes(b"\x80\x02garbage")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "aether_release.py"),
            "--model-path",
            str(model),
            "--validation-dir",
            str(val_dir),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def _artifact(name, quality_by_protocol, bicubic=31.0):
    records = [{"quality_db": q, "bicubic_db": bicubic, "protocol": p} for p, q in quality_by_protocol.items()]
    records.append({"quality_db": None, "bicubic_db": 99.0, "protocol": "sharp"})  # unmeasured: out of both means
    return aether_release.ArtifactResult(name, "x", "x", [], [aether_release.RunResult("cpu", per_image=records)])


def test_an_int8_artifact_worse_than_bicubic_where_fp32_is_better_is_a_warning():
    fp32 = _artifact("model_fp32.onnx", {"aa-bicubic": 32.0, "sharp": 31.5})
    int8 = _artifact("model_int8.onnx", {"aa-bicubic": 30.0, "sharp": 31.2})  # the shortcut clipped: e076efa
    (message,) = aether_release.worse_than_bicubic([fp32, _artifact("model_fp16.onnx", {"aa-bicubic": 32.0}), int8])
    assert message.startswith("model_int8.onnx (30.00 dB) is worse than bicubic (31.00 dB)")
    assert "with aa-bicubic LR, where FP32 is not" in message and "--calibration-dir" in message
    # where FP32 itself is worse, that is the one warning for the protocol
    messages = aether_release.worse_than_bicubic([_artifact("model_fp32.onnx", {"aa-bicubic": 30.5}), int8])
    assert len(messages) == 1 and messages[0].startswith("the FP32 model (30.50 dB)")
    # at x1 bicubic is exact (infinite PSNR): no model is "worse than bicubic" there
    assert not aether_release.worse_than_bicubic([_artifact("model_fp32.onnx", {"aa-bicubic": 50.0}, math.inf)])


def test_file_names_that_are_not_utf8_reach_the_metadata_and_reports_as_valid_text():
    # Linux allows any bytes in a name: Python holds a Latin-1 "café.png" as a lone surrogate
    name = os.fsdecode(b"caf\xe9.png")
    proto = onnx.ModelProto()
    aether_release.set_onnx_metadata(proto, {"source_checkpoint": name})
    assert onnx.load_from_string(proto.SerializeToString()).metadata_props[0].value == "caf\\xe9.png"
    report = aether_release.valid_text({"images": [{"image": name}], name: 1.5})
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text.encode("utf-8")) == {"images": [{"image": "caf\\xe9.png"}], "caf\\xe9.png": 1.5}
    with pytest.raises(UnicodeEncodeError):  # the neighbour: what writing the name itself does
        name.encode("utf-8")
