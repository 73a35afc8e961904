"""The benchmark's deterministic parts: MAC counting, the README preset table, and the
`compare` machinery (peer builders, export, roofline maths, the report's verdicts, plots, the
quality path at a tiny budget). Latencies are only reported by aether_bench.py; speed targets
are not tests."""

import argparse
import copy
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import aether_bench
import aether_bench_plots
import aether_bench_report
import aether_bench_zoo
import aether_release
import aether_training
from aether_arch import PRESET_FACTORIES, RepConv, aether_tiny, calibrate_int8, prepare_qat, save_checkpoint
from aether_bench_design import DESIGNS, Candidate, random_deploy_form
from aether_bench_quality import (
    calibration_crops,
    folder_lrs,
    held_out_pairs,
    measure_quality,
    release_calibration,
)
from aether_bench_report import (
    HD_LABEL,
    ORT_FP16,
    ORT_FP32,
    ORT_INT8,
    RRDB,
    CompareResults,
    QatResult,
    QualityResult,
    QualityRow,
    Roofline,
    SpeedRow,
    Timing,
    measurement,
)
from aether_cli import InputError
from aether_data import write_image
from aether_degrade import PROTOCOLS
from aether_measure import macs_per_lr_pixel, parameter_count
from aether_peers import PEERS, onnx_bytes, peer_deploy_form, static_int8_bytes
from aether_runtime import calibration_batches, ort_session
from conftest import write_image_folder

README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLES = README.parent / "samples"


def test_macs_of_a_hand_made_network():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, groups=4),  # 4x4, 2 input channels per group
        nn.PixelShuffle(2),  # free
    )
    first = (8 * 4 * 4) * 3 * 3 * 3
    second = (16 * 4 * 4) * (8 // 4) * 1 * 1
    assert macs_per_lr_pixel(net, size=8) == (first + second) / (8 * 8)


@pytest.mark.parametrize("fused", [False, True])
def test_macs_of_a_preset_match_its_conv_weights(fused):
    model = PRESET_FACTORIES["aether_tiny"](scale=3, fused=fused).eval()
    # Every conv (body, upsampler, skip) runs at LR resolution, so each weight is applied
    # once per LR pixel: the MACs per LR pixel are the number of deploy-form conv weights
    # (an eval-mode training form runs its fused convs, not its branches).
    deployed = copy.deepcopy(model).fuse()
    expected = sum(m.weight.numel() for m in deployed.modules() if isinstance(m, nn.Conv2d))
    assert macs_per_lr_pixel(model, size=5) == expected


def test_readme_holds_the_generated_preset_table():
    assert README.is_file(), f"{README} is missing"
    text = README.read_text(encoding="utf-8")
    assert aether_bench.README_TABLE_START in text and aether_bench.README_TABLE_END in text, (
        "README.md lacks the preset table markers"
    )
    assert aether_bench.readme_with_preset_table(text) == text, (
        "README.md's preset table is out of date: run python3 aether_bench.py readme-table"
    )


def test_readme_table_command_writes_checks_and_refuses(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\n{aether_bench.README_TABLE_START}\nstale\n{aether_bench.README_TABLE_END}\n\nAfter.\n",
        encoding="utf-8",
    )
    command = ["readme-table", "--readme", str(readme)]
    assert aether_bench.main([*command, "--check"]) == 1
    assert aether_bench.main(command) == 0
    text = readme.read_text(encoding="utf-8")
    assert aether_bench.preset_table_markdown() in text
    assert text.startswith("# Title\n") and text.endswith("\nAfter.\n")
    assert aether_bench.main([*command, "--check"]) == 0

    readme.write_text("# No markers\n", encoding="utf-8")
    assert aether_bench.main(command) == 2
    assert readme.read_text(encoding="utf-8") == "# No markers\n"


# ---------------------------------------------------------------------------------------
# compare: peers, roofline maths, the report's verdicts, plots, the quality path
# ---------------------------------------------------------------------------------------


def _deploy_form(name, scale):
    with torch.device("meta"):  # shapes only: instant even for RRDB's 16.7 M parameters
        return peer_deploy_form(PEERS[name].build(scale))


@pytest.mark.parametrize(
    "name, published_params_m, digits",
    [("SPAN-28", 0.151, 3), (RRDB, 16.7, 1)],  # NTIRE ESR baseline; ESRGAN's RRDBNet
)
def test_peers_have_their_published_sizes_at_x4(name, published_params_m, digits):
    assert round(parameter_count(_deploy_form(name, 4)) / 1e6, digits) == published_params_m


def test_span_baseline_macs_match_the_published_flops():
    # NTIRE ESR baseline: 9.83 G "FLOPs" (multiply-accumulates) on a 256x256 input at x4
    macs = macs_per_lr_pixel(_deploy_form("SPAN-28", 4)) * 256 * 256
    assert round(macs / 1e9, 2) == 9.83


def test_span_deploy_form_computes_what_the_eval_form_computes():
    model = PEERS["SPAN-28"].build(2)
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.normal_(conv.weight, std=0.05)
    model.eval()
    deployed = peer_deploy_form(model)
    assert not any(type(m).__name__ == "Conv3XC" for m in deployed.modules())
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)


def _span_int8_fidelity(model):
    """PSNR (dB, over the FP32 output's range) of a SPAN's static INT8 against its FP32, on LR
    crops of a real image, calibrated on the others."""
    crops = calibration_crops("samples/val", 2, 48)
    fp32 = onnx_bytes(peer_deploy_form(model.eval()))
    int8 = static_int8_bytes(fp32, crops[1:])
    x = crops[0][:, :, :40, :40]
    expected, actual = (ort_session(m, threads=1).run(None, {"input": x})[0] for m in (fp32, int8))
    return 10 * np.log10(np.ptp(expected) ** 2 / np.mean((expected - actual) ** 2))


@pytest.mark.parametrize(
    "name, pixels, error",
    [
        ("flat.png", np.full((24, 32, 3), 0.5, np.float32), r"flat\.png': bicubic reproduces it exactly"),
        ("tiny.png", np.random.default_rng(0).random((11, 32, 3), np.float32), r"tiny\.png': 32x11 is too small"),
    ],
)
def test_an_unmeasurable_held_out_image_is_an_error_for_quality_but_calibrates(tmp_path, name, pixels, error):
    """Bicubic is exact on a flat image: its PSNR, and the folder's mean, would be infinite; a
    tiny one keeps no pixel inside the border PSNR leaves out."""
    folder = write_image_folder(tmp_path / "held_out", [(24, 32)], seed=5)
    assert len(held_out_pairs(str(folder), 4, "sharp")) == 1  # the neighbour: a photo measures
    write_image(folder / name, pixels)
    for protocol in ("aa-bicubic", "sharp"):
        with pytest.raises(InputError, match=error):
            held_out_pairs(str(folder), 4, protocol)
    assert len(folder_lrs(str(folder), 4)) == 2  # INT8 calibration takes it
    write_image(folder / "speck.png", np.zeros((3, 3, 3), np.float32))  # but not one without an LR pixel
    with pytest.raises(InputError, match=r"--calibration-dir '\S+': speck\.png is 3x3, smaller than one x4 LR pixel"):
        folder_lrs(str(folder), 4)


def test_quality_refuses_a_qat_checkpoint_of_another_int8_profile(tmp_path):
    # its ranges are not the cpu INT8 graph's: a one-line error, not a traceback (the neighbour,
    # a cpu-profile QAT checkpoint, is measured in test_train_peer_resumes_and_quality_reports_both_protocols)
    calibration = write_image_folder(tmp_path / "calibration", [(32, 32)], seed=9)
    model = prepare_qat(aether_tiny(scale=2, num_blocks=1), int8_profile="tensorrt")
    calibrate_int8(model, [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))])
    save_checkpoint(model, tmp_path / "qat.pth")
    with pytest.raises(InputError, match="not a QAT checkpoint for the cpu INT8 profile"):
        aether_bench_zoo.exported("a", str(tmp_path / "qat.pth"), 2, str(calibration))


def test_the_benchmarks_ptq_is_calibrated_as_the_release_calibrates(tmp_path):
    folder = write_image_folder(tmp_path / "calibration", [(40, 48), (36, 30), (14, 40)], seed=8)
    write_image(folder / "flat.png", np.full((24, 32, 3), 0.5, np.float32))  # both leave it out
    paths = sorted(folder.iterdir())
    release = calibration_batches(image.lr for image in aether_release.load_images(paths, "x", 4, None, []))
    bench = release_calibration(str(folder), 4)
    assert len(bench) == len(release) and all(torch.equal(a, b) for a, b in zip(bench, release, strict=True))
    assert sum(b.shape[0] for b in bench) == 2 * len(PROTOCOLS)  # the 14-px image is too small for the release, too


def test_quality_folders_that_cannot_be_read_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    broken = write_image_folder(tmp_path / "broken", [(24, 32)], seed=6)
    (broken / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=r"--val-dir '\S+nope': no such folder"):
        held_out_pairs(str(tmp_path / "nope"), 2)
    with pytest.raises(InputError, match=r"--val-dir '\S+empty' contains no images"):
        held_out_pairs(str(tmp_path / "empty"), 2)
    with pytest.raises(InputError, match=r"--val-dir '\S+broken': cannot decode image '\S+broken.png'"):
        held_out_pairs(str(broken), 2)
    with pytest.raises(InputError, match=r"--train-dir '\S+broken': cannot decode image"):
        calibration_crops(str(broken), 2, option="--train-dir")
    (broken / "broken.png").unlink()  # the neighbour: the same folder without it reads
    assert len(held_out_pairs(str(broken), 2)) == len(calibration_crops(str(broken), 2)) == 1


def test_span_peer_is_built_as_trainner_redux_builds_it_and_survives_static_int8():
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    peer = PEERS["SPAN-28"].build(2)
    assert not peer.is_norm  # traiNNer-redux's span / span_s: norm=False
    assert _span_int8_fidelity(peer) > 45.0  # 49.9 dB measured
    # The neighbour can fail: Spandrel's default (x - mean) * 255 input, same weights, drops to 39.5 dB
    torch.manual_seed(0)
    assert _span_int8_fidelity(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=28, upscale=2)) < 45.0


def test_a_peer_exports_and_quantizes_through_the_shared_path():
    model = peer_deploy_form(PEERS["SuperUltraCompact"].build(2))
    fp32 = onnx_bytes(model)
    int8 = static_int8_bytes(fp32)  # Compact's graph needs the shape-inference fallback
    x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    outputs = [ort_session(m, threads=1).run(None, {"input": x})[0] for m in (fp32, int8)]
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-4)
    assert outputs[1].shape == (1, 3, 40, 48)


def test_times_floor_is_measured_time_over_ideal_time():
    # 100 K MACs per pixel x 65,536 pixels = 6.55 GMAC: 65.5 ms at 100 GMAC/s; measured twice that
    assert aether_bench_report.times_floor(1e5, 65_536, 131.072, 1e11) == pytest.approx(2.0)


def test_roofline_passes_keep_each_stacks_fastest_time():
    stacks = {f"{ORT_FP32}: a": 1e9, f"{ORT_FP32}: b": 2e9, f"{ORT_INT8}: a": 1e9}
    first = Roofline(
        stacks, {"ORT FP32: a": _timing(20.0), "ORT FP32: b": _timing(10.0), "ORT INT8: a": _timing(4.0)}, [0.5]
    )
    second = Roofline(
        stacks, {"ORT FP32: a": _timing(5.0), "ORT FP32: b": _timing(30.0), "ORT INT8: a": _timing(8.0)}, [0.0]
    )
    merged = first.merged(second)
    assert merged.peak(ORT_FP32) == pytest.approx(2e11)  # b: 2 GMAC in 10 ms beats a's 1 GMAC in 5 ms
    assert merged.peak(ORT_INT8) == pytest.approx(2.5e11) and merged.peak(ORT_FP16) == merged.peak(ORT_FP32)
    assert merged.others_cpu_shares == [0.5, 0.0]


def test_tiles_cover_the_frame_with_equal_overlapping_tiles():
    for length in (720, 1280, 256, 100):
        starts = aether_bench.tile_origins(length, 256, 16)
        assert starts[0] == 0 and starts[-1] + min(256, length) == length
        assert all(b - a <= 256 - 16 for a, b in itertools.pairwise(starts))
    assert len(aether_bench.hd_inputs(tiled=True)) == 18
    assert {x.shape for x in aether_bench.hd_inputs(tiled=True)} == {(1, 3, 256, 256)}


def _timing(ms):
    return Timing((ms * 0.98, ms, ms * 1.05))


def _row(model, family, scale, macs_k, **medians):
    row = SpeedRow(model, family, scale, int(macs_k * 1e3), macs_k * 1e3, "test")
    for fmt, ms in medians.items():
        fmt = {"fp32": ORT_FP32, "fp16": ORT_FP16, "int8": ORT_INT8}[fmt]
        row.timings[measurement(fmt, "256×256")] = _timing(ms)
    row.lr_pixels["256×256"] = 256 * 256
    row.others_cpu_share = 0.0
    return row


def _results(tiny_int8_ms, tiny_psnr_int8):
    speed = [
        _row("aether_tiny", "AetherNet", 4, 160, fp32=250.0, fp16=260.0, int8=tiny_int8_ms),
        _row("SPAN-28", "peer", 4, 150, fp32=300.0, int8=100.0),
        _row(RRDB, "peer", 4, 17900, fp32=6000.0, int8=2500.0),
    ]
    speed[0].left_out[measurement(ORT_FP32, HD_LABEL)] = "left out: predicted 99 s per run"
    speed[0].lr_pixels[HD_LABEL] = 720 * 1280
    quality_rows = [
        QualityRow(
            "aether_tiny", 150_000, 150e3, 100.0, 32.0, tiny_psnr_int8, "QAT Q/DQ export", "float", _timing(90.0)
        ),
        QualityRow("SPAN-28", 140_000, 141e3, 300.0, 31.9, 31.8, "ORT static PTQ", "EMA", _timing(100.0)),
    ]
    meta = {
        "command": "python3 aether_bench.py compare --out X",
        "started": "today",
        "wall_s": 60.0,
        "machine": "test machine",
        "versions": "test versions",
        "options": {"size": 256, "threads": 2, "hd_scale": 4, "max_run_s": 60.0},
    }
    # peaks: FP32 1 GMAC in 10 ms = 100 GMAC/s, INT8 4 GMAC in 10 ms = 400 GMAC/s
    stacks = {f"{ORT_FP32}: stack": 1e9, f"{ORT_INT8}: stack": 4e9}
    roofline = Roofline(stacks, {name: _timing(10.0) for name in stacks}, [0.0])
    quality = QualityResult(2, 800, "--steps 800", ["a.png"], 31.0, 256, quality_rows)
    # the interleaved INT8 group: the cross-model verdicts use these, not the rows' own timings
    head_to_head = {"4": {"aether_tiny": _timing(tiny_int8_ms), "SPAN-28": _timing(100.0), RRDB: _timing(2500.0)}}
    return CompareResults(meta, roofline, speed, quality, head_to_head)


def test_report_marks_every_missed_target_with_its_figures():
    report = aether_bench_report.compare_markdown(_results(tiny_int8_ms=150.0, tiny_psnr_int8=31.5))
    targets = report.split("## Targets")[1].split("## Roofline")[0]
    assert "Missed: 5 of 5 checks." in targets
    # INT8 only 1.67x faster than FP32; slower than SPAN-28 INT8; 5.7x its floor (26.2 ms at
    # 400 GMAC/s); worse PSNR; RRDB only 16.7x slower
    assert "**MISSED**: `aether_tiny` ×4 at 256×256: INT8 150.0 ms vs ORT FP32 250.0 ms" in targets
    assert (
        "**MISSED**: `aether_tiny` vs SPAN-28 ×4 at 256×256 (timed interleaved): INT8 150.0 ms vs 100.0 ms, "
        "0.67× faster" in targets
    )
    assert "**MISSED**: `aether_tiny` ×4 at 256×256: INT8 150.0 ms = 5.72× its floor" in targets
    assert "**MISSED**: quality ×2 after 800 steps each (1 image), aa-bicubic LR: aether_tiny INT8 31.500 dB" in targets
    assert "-0.300 dB" in targets
    assert "**MISSED**: `aether_tiny` ×4 at 256×256: ORT INT8 150.0 ms vs RRDB ORT INT8 2500.0 ms: 16.7×" in targets
    speed_table = report.split("## Speed at 256×256")[1]
    assert "1.67x **MISSED** (target 3.0x)" in speed_table and "16.67x **MISSED** (target 50.0x)" in speed_table
    assert "left out: predicted 99 s per run" in report  # the 1280x720 row says what was cut


def test_report_says_met_when_targets_are_met_and_round_trips_through_json():
    results = _results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0)
    report = aether_bench_report.compare_markdown(results)
    assert "Missed: 0 of 5 checks." in report and "**MISSED**" not in report.split("## Roofline")[0]
    assert "6.25x" in report  # INT8 speed-up; aim of 3.5x reached
    # time ÷ floor: 250 ms FP32 for 160 K MACs x 65,536 px, whose floor at 100 GMAC/s is 104.9 ms
    assert "2.38×" in report
    assert (
        "`aether_tiny` vs SPAN-28 ×4 at 256×256 (timed interleaved): INT8 40.0 ms vs 100.0 ms, 2.50× faster" in report
    )
    restored = CompareResults.from_json(results.to_json())
    assert aether_bench_report.compare_markdown(restored) == report
    json.loads(results.to_json())


def test_peer_verdict_covers_the_1280x720_group():
    results = _results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0)
    results.head_to_head_hd = {"aether_tiny": _timing(300.0), "SPAN-28": _timing(400.0)}
    report = aether_bench_report.compare_markdown(results)
    expected = "**MISSED**: `aether_tiny` vs SPAN-28 ×4 at 1280×720 (timed interleaved): INT8 300.0 ms vs 400.0 ms"
    assert expected in report and "Missed: 1 of 6 checks." in report
    assert "ORT INT8 ms at 1280×720 ×4" in report.split("### INT8 of every model")[1]


def _qat(qat_int8_db):
    psnr = {
        "bicubic": [30.0, 31.0],
        "FP32": [32.0, 33.0],
        "QAT-INT8": [qat_int8_db, qat_int8_db + 1],
        "PTQ-INT8": [31.7, 32.7],
    }
    setup = "aether_tiny ×2, batch 16"
    return QatResult(
        2, "float.pth", "qat.pth", "val", "train crops", ["a.png", "b.png"], psnr, setup, _timing(200.0), _timing(260.0)
    )


@pytest.mark.parametrize("qat_int8_db, verdict", [(31.96, "met"), (31.8, "**MISSED**")])
def test_qat_verdict_and_its_section_round_trip_through_json(qat_int8_db, verdict):
    """QAT-INT8 within 0.15 dB of FP32 (and better than PTQ) is met; 0.2 dB below is missed."""
    results = _results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0)
    results.qat = _qat(qat_int8_db)
    report = aether_bench_report.compare_markdown(results)
    gap = 32.5 - (qat_int8_db + 0.5)
    assert f"- {verdict}: ×2 sample: QAT-INT8 is +{gap:.3f} dB below FP32" in report.split("## Roofline")[0]
    assert "Missed: " + ("0" if verdict == "met" else "1") + " of 6 checks." in report
    assert "a QAT step costs 1.30× a float step" in report
    restored = CompareResults.from_json(results.to_json())
    assert restored.qat == results.qat and aether_bench_report.compare_markdown(restored) == report


def _zoo(tiny_sharp_int8, span_sharp_fp32=32.1):
    rows = [
        QualityRow("aether_tiny_x2", 221_000, 220e3, 0.0, 32.6, 32.6, "QAT Q/DQ export", "EMA", _timing(25.0)),
        QualityRow("SPAN-28", 140_000, 141e3, 3000.0, 32.0, 31.9, "ORT static PTQ", "EMA", _timing(45.0)),
    ]
    rows[0].psnr_fp32_sharp, rows[0].psnr_int8_sharp, rows[0].steps = 32.0, tiny_sharp_int8, 12500
    rows[1].psnr_fp32_sharp, rows[1].psnr_int8_sharp, rows[1].steps = span_sharp_fp32, 32.0, 2259
    quality = QualityResult(2, 12500, "see below", ["a.png", "b.png"], 31.3, 256, rows, bicubic_psnr_sharp=31.5)
    return {"held_out": quality}


def test_trained_checkpoints_replace_the_short_budget_quality_per_protocol():
    results = _results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0)
    results.zoo_quality, results.meta["zoo_quality"] = _zoo(tiny_sharp_int8=31.9), "q/quality_results.json"
    report = aether_bench_report.compare_markdown(results)
    targets = report.split("## Roofline")[0]
    assert (
        "- met: ×2 `held_out` (2 images), aa-bicubic LR: aether_tiny_x2 INT8 32.600 dB, SPAN-28 INT8 31.900" in targets
    )
    assert "- **MISSED**: ×2 `held_out` (2 images), sharp LR: aether_tiny_x2 INT8 31.900 dB, SPAN-28" in targets
    assert "Missed: 1 of 6 checks." in targets and "after 800 steps" not in report
    assert "| SPAN-28 " in report and "3000 s (2259 steps, 1.33 s/step)" in report and "(+0.40)" in report
    assert "`q/quality.md`" in report
    restored = CompareResults.from_json(results.to_json())
    assert restored.zoo_quality == results.zoo_quality and aether_bench_report.compare_markdown(restored) == report


def test_a_peer_below_bicubic_is_not_judged_against():
    """Beating a peer that is worse than bicubic proves nothing: that protocol's check is left unjudged."""
    results = _results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0)
    results.zoo_quality = _zoo(tiny_sharp_int8=31.9, span_sharp_fp32=31.4)
    targets = aether_bench_report.compare_markdown(results).split("## Roofline")[0]
    assert "- met: ×2 `held_out` (2 images), aa-bicubic LR: aether_tiny_x2 INT8 32.600 dB" in targets
    assert (
        "- not judged: ×2 `held_out` (2 images), sharp LR: SPAN-28 FP32 31.400 dB is below bicubic's 31.500 dB: "
        "a broken comparison (too short a budget), not a result" in targets
    )
    assert "Missed: 0 of 5 checks." in targets
    # the same rule where the benchmark trains the models itself
    results.zoo_quality, results.quality.bicubic_psnr = {}, 32.0
    report = aether_bench_report.compare_markdown(results)
    targets, quality_section = report.split("## Roofline")[0], report.split("## Quality at equal training budget")[1]
    assert "* **BELOW BICUBIC**: SPAN-28 FP32 is below bicubic with aa-bicubic LR (31.900 < 32.000" in quality_section
    assert (
        "- not judged: quality ×2 after 800 steps each (1 image), aa-bicubic LR: SPAN-28 FP32 31.900 dB is below "
        "bicubic's 32.000 dB: a broken comparison" in targets
    )


def test_plots_are_valid_pngs(tmp_path):
    written = aether_bench_plots.write_plots(_results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0), tmp_path)
    assert [p.name for p in written] == [aether_bench_report.SPEED_QUALITY_PNG, aether_bench_report.LATENCY_MACS_PNG]
    for path in written:
        image = cv2.imread(str(path))
        assert image is not None and image.shape == (640, 1000, 3)
        assert (image < 128).any() and (image == 255).any()  # something drawn on white


def test_quality_path_trains_a_peer_and_aether_tiny_with_the_shared_trainer(tmp_path):
    args = argparse.Namespace(
        quality_models=["aether_tiny", "SuperUltraCompact"],
        quality_scale=2,
        budget=2,
        lr_patch=8,
        batch_size=2,
        lr=1e-3,
        threads=1,
        size=32,
        repeats=1,
        budget_s=1.0,
        train_dir=str(write_image_folder(tmp_path / "train", [(40, 40), (48, 36)], seed=1)),
        val_dir=str(write_image_folder(tmp_path / "val", [(24, 28)], seed=2)),
    )
    quality = measure_quality(args, tmp_path)
    assert [r.model for r in quality.rows] == ["aether_tiny", "SuperUltraCompact"]
    for row in quality.rows:
        assert 5 < row.psnr_fp32 < 60 and 5 < row.psnr_int8 < 60 and row.int8_latency.samples_ms
    assert quality.rows[0].int8_method == "QAT Q/DQ export" and "step 1" in quality.rows[0].fp32_source
    log = (tmp_path / "train_logs" / "SuperUltraCompact.log").read_text()
    assert "model: SRVGGNetCompact" in log and "finished step 2/2" in log
    # both LR protocols, each with its own bicubic baseline
    assert all(r.psnr_fp32_sharp is not None and r.psnr_int8_sharp is not None for r in quality.rows)
    assert quality.bicubic_psnr_sharp is not None and quality.bicubic_psnr_sharp != quality.bicubic_psnr


def results_rows(out, val):
    return json.loads((out / "quality_results.json").read_text())[str(val)]["rows"]


def test_training_seconds_add_up_sittings_including_one_killed_without_its_summary():
    killed = [
        "2026-12-03 13:07:47  command: aether_train.py --steps 1000",
        "2026-12-03 13:09:00  step 100/1000: loss 0.03 (rank 0's batches), lr 0.002, 1.00 it/s",
        "2026-12-03 13:09:50  step 200/1000: loss 0.02 (rank 0's batches), lr 0.002, 2.00 it/s",
    ]
    resumed = [
        "2026-12-03 15:01:24  command: aether_train.py --steps 1000 --resume run",
        "2026-12-03 15:01:24  note: resumed from run/training_state.pth at step 100",
        "2026-12-03 15:05:00  step 300/1000: loss 0.02 (rank 0's batches), lr 0.001, 1.00 it/s",
        "2026-12-03 15:09:00  stopped at step 400/1000: 300 steps in 250.0 s of training steps",
    ]
    finished = [
        "2026-12-03 17:25:02  command: aether_train.py --steps 1000 --resume run",
        "2026-12-03 17:25:02  note: resumed from run/training_state.pth at step 400",
        "2026-12-03 18:45:39  finished step 1000/1000: 600 steps in 450.0 s of training steps (1.33 it/s)",
    ]
    seconds = aether_training.logged_training_seconds
    assert seconds("\n".join(killed + resumed + finished)) == pytest.approx(200 / 2.0 + 250.0 + 450.0)
    assert seconds("\n".join(resumed + finished)) == pytest.approx(700.0)
    killed_after_resume = ["2026-12-03 15:01:24  command: x", *resumed[1:3]]
    assert seconds("\n".join(killed_after_resume)) == pytest.approx((300 - 100) / 1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_peer_on_a_missing_gpu_is_a_one_line_error(tmp_path, capsys):
    train = write_image_folder(tmp_path / "train", [(64, 64)], seed=1)
    argv = ["train-peer", "SPAN-28", "--steps", "1", "--train-dir", str(train), "--out-dir", str(tmp_path / "run")]
    assert aether_bench.main([*argv, "--device", "cuda"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "--device cuda: no CUDA device" in errors[0] and not (tmp_path / "run").exists()


def _step_budget_rows(out: str) -> dict[str, tuple[float, int]]:
    """step-budget's table: model -> (median step ms, steps in the budget)."""
    cells = [line.split("|") for line in out.splitlines() if line.startswith("| ")]
    return {c[1].strip(): (float(c[3].split()[0]), int(c[4])) for c in cells[2:]}  # past the header and its rule


def _small_peer_steps(monkeypatch) -> None:
    """Small steps for every peer: step-budget's arithmetic is what is tested, not their speed."""
    for name in aether_bench_zoo.PEER_TRAINING:
        monkeypatch.setitem(
            aether_bench_zoo.PEER_TRAINING, name, aether_bench_zoo.Recommended(2e-4, "l1", 8, 2, 0.99, "test")
        )


def test_step_budget_from_a_checkpoint_gives_each_peer_its_recorded_seconds(tmp_path, monkeypatch, capsys):
    """--reference: the budget is the training time the checkpoint records (every stage), each
    peer's steps that budget over its timed step; a checkpoint without one, or of another scale,
    or with --qat-steps, is a one-line error (exit 2)."""
    _small_peer_steps(monkeypatch)
    model = PRESET_FACTORIES["aether_tiny"](scale=2)
    meta = {"step": 30, "training_seconds": 40.0, "pretrained_cost": {"seconds": 60.0, "steps": 70}}
    reference = tmp_path / "ref.pth"
    torch.save({"params_ema": model.state_dict(), "metadata": json.dumps(meta)}, reference)
    argv = ["step-budget", "--reference", str(reference), "--rounds", "3", "--budget-s", "5", "--threads", "1"]
    assert aether_bench.main(argv) == 0
    out = capsys.readouterr().out
    assert f"Equal wall-clock budget at ×2: the 100 s of training steps behind `{reference}` (100 steps" in out
    assert "aether_tiny float" not in out  # the checkpoint's own time, not tiny steps timed here
    budget_rows = _step_budget_rows(out)
    for name in aether_bench_zoo.PEER_TRAINING:
        median_ms, steps = budget_rows[name]
        # 100 s over the step's median, which is printed to 0.1 ms
        assert round(100e3 / (median_ms + 0.05)) <= steps <= round(100e3 / (median_ms - 0.05))
        assert f"train-peer {name} --scale 2 --steps {steps} " in out

    untimed = tmp_path / "untimed.pth"
    torch.save({"params_ema": model.state_dict(), "metadata": json.dumps({"step": 30})}, untimed)
    for bad, message in (
        (["--reference", str(untimed)], "records no training time: give --reference-steps instead"),
        (["--reference", str(reference), "--scale", "4"], "is a x2 model; --scale is 4"),
        (["--reference", str(reference), "--qat-steps", "500"], "--qat-steps goes with --reference-steps"),
    ):
        assert aether_bench.main(["step-budget", *bad]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and message in errors[0], errors


def test_step_budget_from_step_counts_times_tiny_float_and_qat_steps_beside_the_peers(monkeypatch, capsys):
    """--reference-steps N --qat-steps M: the budget is N float and M QAT steps of aether_tiny,
    timed beside the peers; each peer's steps are that budget over its timed step."""
    _small_peer_steps(monkeypatch)
    monkeypatch.setattr(aether_bench_zoo, "AETHER_TRAINING", aether_bench_zoo.Recommended(1e-3, "l1", 8, 2, 0.99, "t"))
    argv = ["step-budget", "--reference-steps", "50", "--qat-steps", "10", "--rounds", "3", "--budget-s", "5"]
    assert aether_bench.main([*argv, "--threads", "1"]) == 0
    budget_rows = _step_budget_rows(capsys.readouterr().out)
    (float_ms, float_steps), (qat_ms, qat_steps) = budget_rows["aether_tiny float"], budget_rows["aether_tiny QAT"]
    assert float_steps == 50 and qat_steps == 10
    budget_ms = 50 * float_ms + 10 * qat_ms  # medians printed to 0.1 ms
    for name in aether_bench_zoo.PEER_TRAINING:
        median_ms, steps = budget_rows[name]
        low, high = (budget_ms - 3) / (median_ms + 0.05), (budget_ms + 3) / (median_ms - 0.05)
        assert round(low) <= steps <= round(high), (name, budget_rows[name])


def test_train_peer_resumes_and_quality_reports_both_protocols(tmp_path, monkeypatch, capsys):
    train = write_image_folder(tmp_path / "train", [(200, 200), (220, 210)], seed=1)
    val = write_image_folder(tmp_path / "val", [(48, 40), (40, 44)], seed=2)
    monkeypatch.setitem(
        aether_bench_zoo.PEER_TRAINING,
        "UltraCompact",
        aether_bench_zoo.Recommended(2e-4, "charbonnier", 8, 2, 0.99, "test"),
    )
    common = [
        "train-peer",
        "UltraCompact",
        "--steps",
        "3",
        "--train-dir",
        str(train),
        "--val-dir",
        str(val),
        "--threads",
        "1",
    ]
    assert aether_bench.main([*common, "--out-dir", str(tmp_path / "run"), "--stop-at", "2"]) == 0
    assert aether_bench.main([*common, "--resume", str(tmp_path / "run")]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resumed from" in log and "finished step 3/3" in log and "sharp LR" in log
    state = torch.load(tmp_path / "run" / "training_state.pth", weights_only=True)
    config = json.loads(state["config"])
    assert (config["lr"], config["loss"], config["beta2"], config["degradation"]) == (
        2e-4,
        "charbonnier",
        0.99,
        "robust",
    )
    # a second stage from the first's EMA, with its own kernels and learning rate
    stage1 = tmp_path / "run" / "net_g_latest.pth"
    stage2 = [*common[:3], "1", *common[4:], "--out-dir", str(tmp_path / "run2"), "--pretrained", str(stage1)]
    assert (
        aether_bench.main([*stage2, "--kernels", "cubic:1", "--lr", "1e-6", "--seed", "1"]) == 0
    )  # not stage 1's init
    config = json.loads(torch.load(tmp_path / "run2" / "training_state.pth", weights_only=True)["config"])
    assert (config["lr"], config["kernels"], config["pretrained"]) == (1e-6, "cubic:1", str(stage1))
    first, second = (
        torch.load(p / "net_g_latest.pth", weights_only=True) for p in (tmp_path / "run", tmp_path / "run2")
    )
    assert json.loads(second["metadata"])["pretrained"] == str(stage1.resolve())
    for key, value in first["params_ema"].items():  # from stage 1's EMA: a 1e-6 step moves a weight ~1e-6
        torch.testing.assert_close(second["params"][key], value, atol=1e-5, rtol=0)
    capsys.readouterr()
    out = tmp_path / "quality"
    argv = [
        "quality",
        "--model",
        f"aether_tiny={SAMPLES / 'aether_tiny_x2.pth'}",
        "--model",
        f"UltraCompact={tmp_path / 'run2' / 'net_g_latest.pth'}",
    ]
    argv += [
        "--val-dir",
        str(val),
        "--out",
        str(out),
        "--size",
        "32",
        "--repeats",
        "1",
        "--budget-s",
        "1",
        "--threads",
        "1",
        "--calibration-dir",
        str(train),
    ]
    assert aether_bench.main(argv) == 0
    report = (out / "quality.md").read_text()
    assert "FP32 PSNR dB, aa-bicubic LR" in report and "INT8 PSNR dB, sharp LR" in report
    # a barely trained peer is below bicubic: the comparison is marked broken, not published as a loss
    assert "**BELOW BICUBIC**: UltraCompact FP32 is below bicubic with aa-bicubic LR" in report
    # FP32 is the float model, INT8 its quantized export: they differ
    tiny = next(r for r in results_rows(out, val) if r["model"] == "aether_tiny")
    assert tiny["psnr_fp32"] != tiny["psnr_int8"]
    rows = results_rows(out, val)
    # each its own steps; a later stage adds the one it started from (the sample: 500 QAT steps
    # from samples/aether_tiny_x2_float.pth, step 2000)
    assert [(r["model"], r["steps"]) for r in rows] == [("aether_tiny", 2500), ("UltraCompact", 4)]
    assert (out / "quality_speed_0.png").stat().st_size > 10_000
    # compare's report takes these trained checkpoints as its equal-budget comparison
    bench = tmp_path / "bench"
    bench.mkdir()
    aether_bench_report.save_results(_results(tiny_int8_ms=40.0, tiny_psnr_int8=32.0), bench)
    zoo = ["compare", "--out", str(bench), "--render-only", "--zoo-quality", str(out / "quality_results.json")]
    assert aether_bench.main(zoo) == 0
    report = (bench / aether_bench_report.REPORT_NAME).read_text()
    assert f"### `{val}` (2 images)" in report and "UltraCompact" in report and "after 800 steps" not in report
    assert (bench / aether_bench_report.SPEED_QUALITY_PNG).stat().st_size > 10_000
    assert "**BELOW BICUBIC**: UltraCompact FP32 is below bicubic with aa-bicubic LR" in report  # marked here too
    assert aether_bench_report.load_results(bench).zoo_quality == aether_bench_report.load_zoo_quality(
        str(out / "quality_results.json")
    )


@pytest.mark.parametrize("option, section", [("--quality-from", "quality"), ("--qat-from", "QAT")])
def test_render_only_takes_a_rerun_section_and_says_so(tmp_path, option, section):
    full, rerun = tmp_path / "full", tmp_path / "rerun"
    for folder, psnr in ((full, 31.5), (rerun, 31.7)):
        folder.mkdir()
        results = _results(tiny_int8_ms=40.0, tiny_psnr_int8=psnr)
        results.qat = _qat(psnr + 0.01)
        results.meta["command"] += f" ({folder.name})"
        aether_bench_report.save_results(results, folder)
    argv = ["compare", "--out", str(full), "--render-only", option, str(rerun)]
    assert aether_bench.main(argv) == 0
    merged = aether_bench_report.load_results(full)
    assert merged.meta["command"].endswith("(full)")
    # the section named comes from the rerun, the other stays the full run's
    assert (merged.quality.rows[0].psnr_int8 == 31.7) == (section == "quality")
    assert (merged.qat.psnr["QAT-INT8"][0] == 31.71) == (section == "QAT")
    report = (full / aether_bench_report.REPORT_NAME).read_text()
    assert "compare --out X (full)` (do not edit" in report
    assert f"Amended: {section} section from `python3 aether_bench.py compare --out X (rerun)`" in report


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget", "1"], "--budget: expected a whole number >= 2, got 1"),
        (["--scales", "0"], "--scales: expected a whole number >= 1, got 0"),
        (["--train-dir", "no/such/folder"], "no such folder"),
        (["--peers", "ESRGAN-XL"], "invalid choice"),
        (["--zoo-quality", "no/such.json"], "--zoo-quality no/such.json: not an aether_bench.py quality"),
        (["--quality-from", "x"], "--quality-from only goes with --render-only"),
        (["--qat-from", "x"], "--qat-from only goes with --render-only"),
        (
            ["--float-checkpoint", "models/aether_tiny_x2_float.pth", "--qat-checkpoint", "models/aether_tiny_x4.pth"],
            "--float-checkpoint is a x2 model, --qat-checkpoint a x4 one",
        ),
    ],
)
def test_compare_rejects_bad_input_with_one_line_and_exit_2(tmp_path, capsys, extra, message):
    assert aether_bench.main(["compare", "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_rejects_a_flat_held_out_image_before_it_starts(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "val", [(24, 32)], seed=7)
    write_image(folder / "flat.png", np.full((24, 32, 3), 0.5, np.float32))
    assert aether_bench.main(["compare", "--out", str(tmp_path / "out"), "--val-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "flat.png': bicubic reproduces it exactly" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["c32 4 x 5x5, 3x3 out", "c48 L,S,L k5, 1x1 out"])
def test_design_candidates_start_as_nearest_upsampling_and_deploy_fused(name):
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        out = Candidate(DESIGNS[name], scale=2).eval()(x)
        torch.testing.assert_close(out, x.repeat_interleave(2, 2).repeat_interleave(2, 3), rtol=0, atol=1e-6)
        deployed = random_deploy_form(DESIGNS[name], scale=2)
        assert not any(isinstance(m, RepConv) for m in deployed.modules())
        assert deployed(x).shape == (1, 3, 12, 10)
