"""AetherNet in the real spandrel package: registration, detection against spandrel's own
architectures, loading every checkpoint form and release .pth into an ImageModelDescriptor,
spandrel's round-trip invariants, and the half / bfloat16 support the descriptor claims."""

import copy
import math
import sys

import pytest
import spandrel
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.PLKSR import PLKSR
from spandrel.architectures.SPAN import SPAN

import aether_arch
from aether_arch import (
    aether_tiny,
    calibrate_int8,
    load_model,
    prepare_qat,
    register_spandrel,
    save_checkpoint,
)
from conftest import SAMPLES, train_steps

aether_arch.register_spandrel()


def loader_load(path) -> spandrel.ImageModelDescriptor:
    return spandrel.ModelLoader().load_from_file(str(path))


def arch() -> spandrel.Architecture:
    return spandrel.MAIN_REGISTRY["AetherNet"].architecture


@pytest.fixture(scope="module")
def checkpoint_forms(tmp_path_factory):
    """Every file a user may hand to spandrel, each with the model load_model builds from it."""
    folder = tmp_path_factory.mktemp("spandrel")
    torch.manual_seed(1)
    model = aether_tiny(scale=3, num_blocks=2)
    train_steps(model)
    qat = prepare_qat(copy.deepcopy(model))
    calibrate_int8(qat, [torch.rand(1, 3, 12, 12) for _ in range(2)])
    save_checkpoint(model, folder / "neosr_net_g_1000.pth")  # {"params": ..., "metadata": ...}
    save_checkpoint(model, folder / "trainner_net_g_ema_1000.safetensors")
    save_checkpoint(qat, folder / "qat.pth", param_key="params_ema")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "data_parallel.pth")
    return {path.name: path for path in sorted(folder.iterdir())}


def test_registration_is_idempotent_and_precedes_compact():
    before = len(spandrel.MAIN_REGISTRY)
    register_spandrel()
    register_spandrel()
    assert len(spandrel.MAIN_REGISTRY) == before
    order = [support.architecture.id for support in spandrel.MAIN_REGISTRY.architectures("detection")]
    assert order.count("AetherNet") == 1 and order.index("AetherNet") < order.index("Compact")


def test_missing_spandrel_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # what an uninstalled package looks like
    with pytest.raises(ImportError, match=r"needs the spandrel package.*pip install spandrel"):
        register_spandrel()


@pytest.mark.parametrize("name", ["model_fp32.pth", "model_fp16.pth", "model_int8.pth", "sample"])
def test_loader_loads_release_files_and_the_sample(sample_release, name):
    path = SAMPLES / "aether_tiny_x2.pth" if name == "sample" else sample_release / name
    descriptor = loader_load(path)
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    assert descriptor.architecture.id == "AetherNet" and descriptor.purpose == "SR"
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (2, 3, 3)
    int8 = name in ("model_int8.pth", "sample")  # the sample is a QAT checkpoint
    assert descriptor.tags == ["aether_tiny", "48nf"] + (["int8"] if int8 else [])
    assert descriptor.size_requirements.none and descriptor.tiling == spandrel.ModelTiling.SUPPORTED
    assert descriptor.model.fused and descriptor.model.qat == int8  # release files are fused
    image = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        got, expected = descriptor(image), load_model(path)(image)
        assert descriptor(torch.rand(1, 3, 1, 1)).shape == (1, 3, 2, 2)  # no size requirements
    assert got.shape == (1, 3, 26, 22)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_loader_loads_every_training_checkpoint_form(checkpoint_forms):
    reference = load_model(checkpoint_forms["neosr_net_g_1000.pth"])
    image = torch.rand(1, 3, 9, 14)
    for name, path in checkpoint_forms.items():
        descriptor = loader_load(path)
        assert descriptor.architecture.id == "AetherNet", name
        assert descriptor.scale == 3 and descriptor.tags[0] == "custom", name
        # the form the file holds (fused for QAT), in eval mode
        assert descriptor.model.fused == ("qat" in name) and not descriptor.model.training, name
        with torch.no_grad():
            got = descriptor(image)
            expected = (load_model(path) if "qat" in name else reference)(image)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_hyperparameters_round_trip_through_load_and_safetensors(tmp_path, scale):
    model = aether_tiny(scale=scale)
    for form in (model, copy.deepcopy(model).fuse(), prepare_qat(copy.deepcopy(model))):
        assert arch().detect(form.state_dict())
        loaded = arch().load(form.state_dict())
        assert loaded.model.config == form.config and loaded.model.qat == form.qat
        assert loaded.purpose == ("Restoration" if scale == 1 else "SR") and loaded.scale == scale
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in form.state_dict().items()}, str(path))
        assert loader_load(path).model.config == form.config


def test_grey_and_rgba_models_report_their_channels():
    for in_channels, out_channels in ((1, 1), (4, 4), (3, 1)):
        model = aether_tiny(scale=2, in_channels=in_channels, out_channels=out_channels)
        descriptor = arch().load(model.state_dict())
        assert (descriptor.input_channels, descriptor.output_channels) == (in_channels, out_channels)


def _peer_state_dicts():
    return {
        "SPAN": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4).state_dict(),
        "SPAN-28": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=28, upscale=4).state_dict(),
        "Compact": Compact(num_feat=64, num_conv=16, upscale=4).state_dict(),
        "UltraCompact": Compact(num_feat=64, num_conv=8, upscale=4).state_dict(),
        "PLKSR": PLKSR(dim=64, n_blocks=12, kernel_size=13, use_ea=False, upscaling_factor=4).state_dict(),
    }


@pytest.mark.parametrize("peer", ["SPAN", "SPAN-28", "Compact", "UltraCompact", "PLKSR"])
def test_peers_are_not_claimed_by_aethernet_and_still_load_as_themselves(peer):
    state_dict = _peer_state_dicts()[peer]
    assert not arch().detect(state_dict)
    assert spandrel.MAIN_REGISTRY.load(state_dict).architecture.id == peer.split("-")[0].replace("Ultra", "")


def test_no_other_architecture_claims_aethernet_files(checkpoint_forms, sample_release):
    files = list(checkpoint_forms.values()) + [sample_release / f"model_{p}.pth" for p in ("fp32", "fp16", "int8")]
    others = [s for s in spandrel.MAIN_REGISTRY.architectures("detection") if s.architecture.id != "AetherNet"]
    for path in files:
        state_dict = spandrel.ModelLoader().load_state_dict_from_file(str(path))
        claimed = [s.architecture.id for s in others if s.detect(state_dict)]
        assert claimed == [], f"{path.name} is also claimed by {claimed}"


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.mark.parametrize("name", ["model_fp32.pth", "model_fp16.pth", "model_int8.pth", "sample_float"])
def test_half_and_bfloat16_support_is_measured(sample_release, name):
    """The descriptor's supports_half / supports_bfloat16 hold on trained weights of every
    form: reduced-precision output stays close to the float32 output of the same file."""
    path = SAMPLES / "aether_tiny_x2_float.pth" if name == "sample_float" else sample_release / name
    image = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        reference = loader_load(path)(image)
        # descriptor.to(dtype) raises spandrel's UnsupportedDtypeError unless the architecture
        # claims the dtype (SPANDREL_SUPPORTS_HALF / _BFLOAT16); the PSNR shows the claim holds
        for dtype, floor_db in ((torch.float16, 45.0), (torch.bfloat16, 40.0)):
            descriptor = loader_load(path).to(dtype)
            output = descriptor(image.to(dtype))
            assert output.dtype == dtype and torch.isfinite(output).all()
            assert _psnr(output, reference) >= floor_db, (name, dtype, _psnr(output, reference))
