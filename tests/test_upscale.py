"""aether_upscale.py: every artifact kind upscales, tiling leaves no seams, alpha / greyscale /
16-bit survive, and bad input gets one line and exit code 2. The six release artifacts are
made once per module from the shipped QAT sample checkpoint (aether_tiny x2, receptive radius
10 px) with aether_release's own writer; images are tiny, so most tests run in-process."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import aether_release
import aether_upscale
from aether_arch import aether_tiny, save_checkpoint
from aether_data import read_raw_image, write_raw_image
from aether_upscale import open_runner, tile_spans, tile_windows, upscale_image
from conftest import UNWRITABLE_KINDS, as_pixels, photo_like, unwritable_output_dir

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "aether_tiny_x2.pth"  # a QAT training checkpoint
SAMPLE_FLOAT = REPO / "samples" / "aether_tiny_x2_float.pth"  # training form, float
ARTIFACTS = [f"model_{p}.{f}" for f in aether_release.FORMATS for p in aether_release.PRECISIONS]
SCALE = 2
HEIGHT, WIDTH = 40, 50
SMALL_TILE = 16  # e.g. 3 x 4 tiles of 13-14 x 12-13 px on 40 x 50: neither side a multiple of it
MODELS = ARTIFACTS + ["sample_qat_checkpoint", "sample_float_checkpoint"]


@pytest.fixture(scope="module")
def artifacts(sample_release) -> Path:
    """The six files aether_release.py publishes for the sample checkpoint."""
    return sample_release


@pytest.fixture(scope="module")
def runner(artifacts):
    """Opened models by name, each opened once (CPU, 2 threads)."""
    cache = {}
    paths = {MODELS[-2]: SAMPLE, MODELS[-1]: SAMPLE_FLOAT}

    def get(name: str) -> aether_upscale.Runner:
        if name not in cache:
            cache[name] = open_runner(str(paths.get(name, artifacts / name)), device="cpu", threads=2)
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, tile", [(40, 16), (50, 16), (7, 16), (512, 512), (513, 512), (9, 0)])
def test_tile_spans_cover_the_side_in_nearly_equal_pieces(length, tile):
    spans = tile_spans(length, tile)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    sizes = [end - start for start, end in spans]
    assert max(sizes) - min(sizes) <= 1 and (tile == 0 or max(sizes) <= tile)
    assert len(spans) == (1 if tile == 0 else -(-length // tile))


@pytest.mark.parametrize("length, tile, overlap", [(40, 16, 8), (50, 16, 8), (40, 16, 32), (9, 0, 4), (600, 256, 32)])
def test_tile_windows_are_one_size_and_hold_their_span_with_context(length, tile, overlap):
    windows = tile_windows(length, tile, overlap)
    assert [(start, end) for start, end, _, _ in windows] == tile_spans(length, tile)
    assert len({window_end - window_start for _, _, window_start, window_end in windows}) == 1
    for start, end, window_start, window_end in windows:
        assert 0 <= window_start <= start and end <= window_end <= length
        assert window_start == 0 or start - window_start >= overlap
        assert window_end == length or window_end - end >= overlap


def upscale_both_ways(model, image, *, overlap):
    """(untiled, tiled with SMALL_TILE) outputs as int64."""
    whole = upscale_image(image, model, tile=0).astype(np.int64)
    return whole, upscale_image(image, model, tile=SMALL_TILE, overlap=overlap).astype(np.int64)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_tiled_output_matches_untiled_within_one_level(runner, name):
    """16-bit, so that 1/255 is 257 levels and a seam shows before 8-bit rounding hides it. An
    overlap of 8 px is below the model's receptive radius (10 px), so this is the approximate
    regime (exact from 10 px on); windows are 30 x 31 px of 56 x 72."""
    image = as_pixels(photo_like(56, 72), np.uint16)
    whole, tiled = upscale_both_ways(runner(name), image, overlap=8)
    assert np.abs(tiled - whole).max() <= 65535 / 255


def test_default_overlap_covers_the_receptive_field_exactly(runner):
    """With --overlap at least the receptive radius, tiling changes nothing (INT8: integer
    arithmetic, so not even float rounding)."""
    image = as_pixels(photo_like(120, 150, seed=2), np.uint16)  # 79 x 79 px windows
    model = runner("model_int8.onnx")
    whole, tiled = upscale_both_ways(model, image, overlap=aether_upscale.DEFAULT_OVERLAP)
    assert np.array_equal(tiled, whole)


def test_without_overlap_seams_would_show(runner):
    """The tests above can fail: tiles without context differ visibly along their edges."""
    whole, seamed = upscale_both_ways(
        runner("model_fp32.pth"), as_pixels(photo_like(HEIGHT, WIDTH), np.uint16), overlap=0
    )
    assert np.abs(seamed - whole).max() > 4 * 65535 / 255


# ---------------------------------------------------------------------------------------
# Every model kind, every pixel format
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_every_model_kind_gives_scale_times_the_size(runner, name):
    model = runner(name)
    image = as_pixels(photo_like(37, 51, seed=1))  # odd sizes, not multiples of anything
    output = upscale_image(image, model, tile=SMALL_TILE)
    assert model.scale == SCALE and output.shape == (37 * SCALE, 51 * SCALE, 3) and output.dtype == np.uint8
    # it is a super-resolution of the input, not noise: close to bicubic upscaling
    bicubic = cv2.resize(image, (51 * SCALE, 37 * SCALE), interpolation=cv2.INTER_CUBIC)
    assert np.abs(output.astype(float) - bicubic).mean() < 8


def test_scale_of_an_onnx_file_without_metadata_is_measured(tmp_path, artifacts):
    proto = onnx.load(artifacts / "model_fp32.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    assert open_runner(str(tmp_path / "bare.onnx"), device="cpu").scale == SCALE


def test_alpha_is_kept_opaque_and_transparent_areas_exact(runner):
    model = runner("model_int8.onnx")
    colour = as_pixels(photo_like(HEIGHT, WIDTH))
    alpha = np.full((HEIGHT, WIDTH), 255, np.uint8)
    alpha[:, 30:] = 0  # transparent right part
    alpha[5:15, 5:15] = 128
    output = upscale_image(np.dstack([colour, alpha]), model, tile=SMALL_TILE)
    assert output.shape == (HEIGHT * SCALE, WIDTH * SCALE, 4) and output.dtype == np.uint8
    out_alpha = output[..., 3]
    assert (out_alpha[40:, :50] == 255).all()  # opaque, away from the edges with other values
    assert (out_alpha[:, 64:] == 0).all()  # transparent
    assert abs(int(out_alpha[20, 20]) - 128) <= 1  # inside the half-transparent square
    # the colour is upscaled exactly as if there were no alpha
    assert np.array_equal(output[..., :3], upscale_image(colour, model, tile=SMALL_TILE))


def test_greyscale_in_greyscale_out(runner):
    model = runner("model_fp32.onnx")
    grey = as_pixels(photo_like(HEIGHT, WIDTH)[..., 1])
    output = upscale_image(grey, model, tile=0)
    assert output.shape == (HEIGHT * SCALE, WIDTH * SCALE) and output.dtype == np.uint8
    # the model sees three equal channels and gives colour fringes; the grey written back is their mean
    seen = model(np.broadcast_to(grey / np.float32(255), (1, 3, HEIGHT, WIDTH)).astype(np.float32))[0] * 255
    assert np.abs(seen - seen.mean(axis=0)).max() > 1 and np.abs(output - seen.mean(axis=0)).max() <= 1
    # grey stored as equal RGB or RGBA channels stays grey too
    for stored in (np.dstack([grey] * 3), np.dstack([grey] * 3 + [np.full_like(grey, 200)])):
        as_stored = upscale_image(stored, model, tile=0)
        assert all(np.array_equal(as_stored[..., c], output) for c in range(3)), stored.shape


def test_sixteen_bit_in_sixteen_bit_out_without_8_bit_steps(runner):
    model = runner("model_fp32.pth")
    image = as_pixels(photo_like(HEIGHT, WIDTH), np.uint16)
    output = upscale_image(image, model, tile=SMALL_TILE)
    assert output.dtype == np.uint16 and output.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    assert len(np.unique(output)) > 256
    assert np.count_nonzero(output % 257) > output.size // 2  # not 8-bit values scaled up
    # the same as 8-bit processing, up to the 8-bit rounding
    eight_bit = upscale_image(as_pixels(photo_like(HEIGHT, WIDTH)), model, tile=SMALL_TILE)
    assert np.abs(output / 257.0 - eight_bit).max() <= 2


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def write_inputs(folder: Path) -> dict[str, np.ndarray]:
    """Four images of every kind the script handles, by file name."""
    folder.mkdir()
    colour = as_pixels(photo_like(HEIGHT, WIDTH))
    images = {
        "rgb.png": colour,
        "photo.jpg": colour,
        "grey16.png": as_pixels(photo_like(HEIGHT, WIDTH)[..., 0], np.uint16),
        "rgba.png": np.dstack([colour, np.full((HEIGHT, WIDTH), 200, np.uint8)]),
    }
    for name, pixels in images.items():
        write_raw_image(folder / name, pixels)
    (folder / "notes.txt").write_text("not an image, ignored")
    return images


def run_script(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "aether_upscale.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )


def no_temporary_files(folder: Path) -> bool:
    return not any(".tmp-" in path.name for path in folder.iterdir())


def test_command_line_upscales_a_folder(tmp_path, artifacts):
    images = write_inputs(tmp_path / "in")
    out = tmp_path / "out" / "nested"
    result = run_script(
        "--model",
        artifacts / "model_int8.onnx",
        "--input",
        tmp_path / "in",
        "--output",
        out,
        "--tile",
        SMALL_TILE,
        "--threads",
        2,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grey16.png", "photo.png", "rgb.png", "rgba.png"]
    expected = {
        "grey16.png": (np.uint16, ()),
        "photo.png": (np.uint8, (3,)),
        "rgb.png": (np.uint8, (3,)),
        "rgba.png": (np.uint8, (4,)),
    }
    for name, (dtype, channels) in expected.items():
        output = read_raw_image(out / name)
        assert output.dtype == dtype and output.shape == (HEIGHT * SCALE, WIDTH * SCALE, *channels), name
    assert (read_raw_image(out / "rgba.png")[..., 3] == 200).all()
    assert "4 of 4 image(s) written" in result.stdout and "x2 in ONNX Runtime CPU" in result.stdout
    assert "16-bit greyscale" in result.stdout and "8-bit RGBA" in result.stdout
    # no warnings, no progress bars off a TTY; one note: an INT8 model gives 16-bit files 8-bit levels
    assert result.stderr.splitlines() == [
        f"note: {artifacts / 'model_int8.onnx'} works in 8-bit levels (INT8): its 16-bit outputs hold 256 levels; "
        "model_fp32 keeps 16 bits"
    ]
    # it says what it did: the grey written is the mean of three 8-bit channels, so at most 766 levels
    assert len(np.unique(read_raw_image(out / "grey16.png"))) <= 3 * 255 + 1
    assert no_temporary_files(out)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted([*images, "notes.txt"])


def test_single_file_with_a_training_checkpoint(tmp_path, capsys):
    source = tmp_path / "photo.jpg"
    write_raw_image(source, as_pixels(photo_like(HEIGHT, WIDTH)))
    code = aether_upscale.main(
        ["--model", str(SAMPLE_FLOAT), "--input", str(source), "--output", str(tmp_path / "out"), "--device", "cpu"]
    )
    captured = capsys.readouterr()
    assert code == 0 and not captured.err, captured.err
    assert read_raw_image(tmp_path / "out" / "photo.png").shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    assert "x2 in PyTorch cpu float32" in captured.out


def test_unreadable_images_are_skipped_with_one_warning_each(tmp_path, capsys, artifacts):
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "in" / "empty.webp").write_bytes(b"")
    (tmp_path / "in" / "alloc.png").write_bytes(b"not an image either")  # a name is not a memory error
    out = tmp_path / "out"
    code = aether_upscale.main(
        [
            "--model",
            str(artifacts / "model_fp32.onnx"),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--tile",
            "0",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 3 and all(line.startswith("WARNING: skipped ") for line in warnings)
    assert "alloc.png: cannot decode image" in warnings[0]
    assert "broken.png" in warnings[1] and "empty.webp" in warnings[2]
    assert sorted(p.name for p in out.iterdir()) == ["grey16.png", "photo.png", "rgb.png", "rgba.png"]
    assert "4 of 7 image(s) written" in captured.out


def test_an_output_too_large_for_memory_is_skipped_before_it_is_allocated(tmp_path, capsys, artifacts, monkeypatch):
    write_inputs(tmp_path / "in")
    # rgba.png's x2 output is 100 x 80 x 4 bytes: 32000; the others' are smaller
    monkeypatch.setattr(aether_upscale, "available_memory", lambda: 30_000)
    argv = ["--model", str(artifacts / "model_fp32.onnx"), "--input", str(tmp_path / "in"), "--output"]
    assert aether_upscale.main([*argv, str(tmp_path / "out")]) == 1
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("WARNING: skipped rgba.png: its 100x80 output needs 31.2 KiB, more than the 29.3 KiB")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grey16.png", "photo.png", "rgb.png"]


def test_nothing_readable_is_exit_code_2(tmp_path, capsys, artifacts):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    code = aether_upscale.main(
        ["--model", str(artifacts / "model_fp32.onnx"), "--input", str(folder), "--output", str(tmp_path / "out")]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[0].startswith("WARNING: skipped ") and "broken.png" in lines[0]
    assert lines[1].startswith("aether_upscale.py: error: no image written") and len(lines) == 2
    assert not (tmp_path / "out").exists()


def expect_bad_input(capsys, model, source, out, *extra) -> str:
    """main() on bad input: exit 2, nothing on stdout, one error line on stderr (returned)."""
    code = aether_upscale.main(["--model", str(model), "--input", str(source), "--output", str(out), *map(str, extra)])
    captured = capsys.readouterr()
    assert code == 2 and not captured.out, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aether_upscale.py: error: "), captured.err
    return lines[0]


def bad_model(kind: str, folder: Path, artifacts: Path) -> Path:
    if kind == "missing":
        return folder / "missing.onnx"
    path = folder / {"unsupported_type": "model.bin", "other_onnx": "model.onnx", "corrupt_onnx": "model.onnx"}.get(
        kind, "model.pth"
    )
    if kind == "unsupported_type":
        path.write_bytes((artifacts / "model_fp32.pth").read_bytes())
    elif kind == "other_architecture":
        torch.save({"params": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, path)
    elif kind == "corrupt_pth":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated_pth":
        data = (artifacts / "model_fp32.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt_onnx":
        path.write_bytes(os.urandom(4096))
    elif kind == "other_onnx":  # a valid ONNX graph that is not an image model
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "relu",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        )
        onnx.save(onnx.helper.make_model(graph), path)
    elif kind == "one_channel":
        save_checkpoint(aether_tiny(scale=2, in_channels=1, out_channels=1, num_blocks=1), path)
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "unsupported_type",
        "other_architecture",
        "corrupt_pth",
        "truncated_pth",
        "corrupt_onnx",
        "other_onnx",
        "one_channel",
    ],
)
def test_bad_model(tmp_path, capsys, artifacts, kind):
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    error = expect_bad_input(capsys, bad_model(kind, tmp_path, artifacts), tmp_path / "in", out)
    assert "--model" in error and not out.exists()


def bad_input(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "missing"
    if kind == "unsupported_type":
        (folder / "notes.txt").write_text("hello")
        return folder / "notes.txt"
    path = folder / "images"
    path.mkdir()
    if kind == "no_images":
        (path / "notes.txt").write_text("hello")
    elif kind == "same_stem":
        write_raw_image(path / "a.png", np.zeros((8, 8, 3), np.uint8))
        write_raw_image(path / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    return path


@pytest.mark.parametrize("kind", ["missing", "unsupported_type", "empty", "no_images", "same_stem"])
def test_bad_input(tmp_path, capsys, artifacts, kind):
    out = tmp_path / "out"
    error = expect_bad_input(capsys, artifacts / "model_fp32.onnx", bad_input(kind, tmp_path), out)
    assert "--input" in error and not out.exists()


def test_output_folder_that_would_replace_the_inputs(tmp_path, capsys, artifacts):
    write_inputs(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    error = expect_bad_input(capsys, artifacts / "model_fp32.onnx", tmp_path / "in", tmp_path / "in")
    assert "--output" in error and "would replace" in error
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before


@pytest.mark.parametrize("kind", UNWRITABLE_KINDS)
def test_unwritable_output(tmp_path, capsys, monkeypatch, artifacts, kind):
    write_inputs(tmp_path / "in")
    out, blocker = unwritable_output_dir(tmp_path, kind, monkeypatch)
    assert "--output" in expect_bad_input(capsys, artifacts / "model_fp32.onnx", tmp_path / "in", out)
    assert blocker.read_text() == "x" and (not out.is_dir() or not list(out.iterdir()))


@pytest.mark.parametrize(
    "option", [["--tile", "-1"], ["--tile", "big"], ["--overlap", "-4"], ["--threads", "two"], ["--device", "tpu"]]
)
def test_bad_option(tmp_path, capsys, artifacts, option):
    write_inputs(tmp_path / "in")
    error = expect_bad_input(capsys, artifacts / "model_fp32.onnx", tmp_path / "in", tmp_path / "out", *option)
    assert option[0] in error and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["model_fp32.pth", "model_fp32.onnx"])
def test_cuda_asked_for_but_absent(tmp_path, capsys, artifacts, name):
    write_inputs(tmp_path / "in")
    error = expect_bad_input(capsys, artifacts / name, tmp_path / "in", tmp_path / "out", "--device", "cuda")
    assert "--device cuda" in error


def test_help_explains_every_option(capsys):
    code = aether_upscale.main(["--help"])
    text = capsys.readouterr().out
    assert code == 0 and "Exit codes" in text
    for option in ("--model", "--input", "--output", "--tile", "--overlap", "--device", "--threads"):
        assert option in text


def test_command_line_bad_input_has_no_traceback(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07garbage")
    write_inputs(tmp_path / "in")
    result = run_script("--model", model, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
