"""Checkpoint I/O: config detection, loading every trainer format, refusing everything else."""

import json
import os
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from aether_arch import (
    PRESET_FACTORIES,
    AetherCheckpointError,
    AetherNet,
    aether_tiny,
    calibrate_int8,
    detect_config,
    int8_state_dict,
    load_model,
    prepare_qat,
    read_checkpoint,
    save_checkpoint,
)
from conftest import train_steps


@pytest.mark.parametrize(
    "name, scale", [*((name, 4) for name in PRESET_FACTORIES), *(("aether_tiny", s) for s in (1, 2, 3))]
)
@pytest.mark.parametrize("fused", (False, True))
def test_detect_config_round_trip(name, scale, fused):
    model = PRESET_FACTORIES[name](scale=scale)
    if fused:
        model.fuse()
    state_dict = model.state_dict()
    config = detect_config(state_dict)
    assert config == {**model.config, "fused": fused, "qat": False, "int8_profile": "cpu"}
    rebuilt = AetherNet(**config)
    rebuilt.load_state_dict(state_dict, strict=True)


def test_detect_config_custom_hyperparameters():
    model = AetherNet(scale=3, dim=24, num_blocks=3, large_kernel=7)
    assert detect_config(model.state_dict()) == {**model.config, "fused": False, "qat": False, "int8_profile": "cpu"}


def _outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    """Same weights and same output (fresh models all output nearest-neighbour upsampling,
    so outputs alone would not tell them apart)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        return False
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("suffix", (".pth", ".pt", ".safetensors"))
@pytest.mark.parametrize("fused", (False, True))
def test_save_and_load_round_trip(tmp_path, suffix, fused):
    model = aether_tiny(scale=2).eval()
    if fused:
        model.fuse()
    path = tmp_path / f"model{suffix}"
    save_checkpoint(model, path, metadata={"note": "hello"})
    loaded = load_model(path)
    assert not loaded.training and loaded.fused == fused
    assert _outputs_equal(model, loaded)
    state_dict, metadata = read_checkpoint(path)
    assert metadata["architecture"] == "AetherNet" and metadata["note"] == "hello"
    assert metadata["config"] == model.config and metadata["preset"] == "aether_tiny"
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_saved_pth_holds_only_plain_tensors_and_json(tmp_path):
    path = tmp_path / "model.pth"
    save_checkpoint(aether_tiny(scale=2), path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"params", "metadata"}
    assert type(raw["params"]) in (dict, OrderedDict)
    assert all(type(v) is torch.Tensor for v in raw["params"].values())
    json.loads(raw["metadata"])


@pytest.mark.parametrize("wrapper", ("params", "state_dict", "model", "net", None))
def test_trainer_wrappers_and_module_prefix(tmp_path, wrapper):
    model = aether_tiny(scale=4).eval()
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
    obj = state_dict if wrapper is None else {wrapper: state_dict, "iter": 5}
    path = tmp_path / "net_g_1000.pth"
    torch.save(obj, path)
    assert _outputs_equal(model, load_model(path))


def test_params_ema_is_preferred():
    ema = aether_tiny(scale=2)
    train_steps(ema)  # fresh models all start as nearest-neighbour upsampling
    raw = aether_tiny(scale=2).eval()
    loaded = load_model({"params": raw.state_dict(), "params_ema": ema.state_dict()})
    assert _outputs_equal(ema, loaded) and not _outputs_equal(raw, loaded)


def _span_like_state_dict():
    return {
        "conv_1.sk.weight": torch.zeros(48, 3, 1, 1),
        "block_1.c1_r.sk.weight": torch.zeros(48, 48, 1, 1),
        "conv_cat.weight": torch.zeros(48, 192, 1, 1),
        "upsampler.0.weight": torch.zeros(48, 48, 3, 3),
    }


def _compact_state_dict():
    body = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.PReLU(64), nn.Conv2d(64, 48, 3, padding=1))
    return {f"body.{k}": v for k, v in body.state_dict().items()}


@pytest.mark.parametrize(
    "obj, message",
    [
        (_span_like_state_dict(), "not an AetherNet checkpoint: found 4 keys ('block_1"),
        (_compact_state_dict(), "not an AetherNet checkpoint: found 5 keys ('body.0.bias'"),
        ({}, "found an empty dict"),
        ({"params": {}}, "with no tensors"),
        ([torch.zeros(1)], "found a list"),
    ],
)
def test_foreign_state_dicts_are_refused(tmp_path, obj, message):
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    with pytest.raises(AetherCheckpointError) as info:
        load_model(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_files_are_refused(tmp_path):
    random_bytes = tmp_path / "random.pth"
    random_bytes.write_bytes(os.urandom(4096))
    good = tmp_path / "good.pth"
    save_checkpoint(aether_tiny(scale=2), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for path in (random_bytes, truncated):
        with pytest.raises(AetherCheckpointError, match="not a readable PyTorch checkpoint"):
            load_model(path)
    with pytest.raises(AetherCheckpointError, match="not a readable safetensors file"):
        load_model(bad_safetensors)


def test_missing_file_and_wrong_extension(tmp_path):
    with pytest.raises(AetherCheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pth")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(AetherCheckpointError, match="unsupported checkpoint type '.onnx'"):
        load_model(other)


class _Payload:
    """Pickles to a call that would create a marker file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_needing_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": _Payload(marker)}, f)
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"params": _Payload(marker)}, zipped)
    for p in (path, zipped):
        with pytest.raises(AetherCheckpointError, match="need code to load; refused"):
            load_model(p)
    assert not marker.exists()


def test_v1_checkpoints_are_refused_with_the_reason():
    v1 = {  # AetherNet v1's keys: mean subtraction, 1x1 mixing convs, 3x3 output convs
        "mean": torch.zeros(1, 3, 1, 1),
        "head.weight": torch.zeros(32, 3, 3, 3),
        "blocks.0.mix.weight": torch.zeros(32, 32, 1, 1),
        "upsample.weight": torch.zeros(12, 32, 3, 3),
        "skip.weight": torch.zeros(12, 3, 3, 3),
    }
    with pytest.raises(AetherCheckpointError, match="an AetherNet v1 checkpoint .* retrain the model with v2"):
        detect_config(v1)


def test_mismatched_shapes_are_explained():
    state_dict = aether_tiny(scale=2).state_dict()
    state_dict["blocks.1.conv1.branches.0.conv.weight"] = torch.zeros(48, 48, 5, 5)
    with pytest.raises(AetherCheckpointError, match="does not match the architecture"):
        load_model(state_dict)


def _int8_file(scale=2):
    """An INT8 release state dict (int8 conv weights beside their scales) of a small calibrated model."""
    model = prepare_qat(AetherNet(scale=scale, dim=16, num_blocks=2))
    calibrate_int8(model, [torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))])
    return int8_state_dict(model)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda sd: sd.update({7: torch.zeros(1)}), None),  # a key that is no name is dropped, as non-tensors are
        (lambda sd: sd.update({"body_tail.weight": sd["body_tail.weight"].reshape(16, -1)}), "does not match"),
        (lambda sd: sd.update({"head.weight": sd["head.weight"].to(torch.uint8)}), "as torch.uint8, where AetherNet"),
        (lambda sd: sd.update({"head.bias": sd["head.bias"].to(torch.complex64)}), "as torch.complex64, where"),
        (lambda sd: sd.update({"blocks.0.conv1.weight_scale": torch.full((16,), 1e37)}), "overflow to infinity"),
    ],
)
def test_a_damaged_int8_file_is_refused_in_one_line(damage, message):
    state_dict = _int8_file()
    damage(state_dict)
    if message is None:
        assert load_model(state_dict).qat
    else:
        with pytest.raises(AetherCheckpointError, match=message):
            load_model(state_dict)
