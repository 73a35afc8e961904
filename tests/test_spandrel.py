"""AetherNet in the real spandrel package: registration, detection against spandrel's own
architectures, loading every checkpoint form and release .pth into an ImageModelDescriptor,
spandrel's round-trip invariants (its tests/util.py checks, rebuilt here: spandrel does not
ship its tests), an image-inference snapshot in spandrel's style, chaiNNer's PyTorch -> ONNX
conversion, the half / bfloat16 support the descriptor claims, and the upstream package in
contrib/spandrel/ dropped into a copy of the installed spandrel."""

import copy
import inspect
import io
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import safetensors.torch
import spandrel
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.PLKSR import PLKSR
from spandrel.architectures.SPAN import SPAN

import aether_arch
from aether_arch import (
    AetherNet,
    aether_large,
    aether_medium,
    aether_small,
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
    # the INT8 release file runs on oneDNN's int8 kernels in spandrel too (the QAT sample does not)
    assert descriptor.model.int8_backend == ("onednn" if name == "model_int8.pth" else "simulation")
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


# --- spandrel's tests/util.py::assert_loads_correctly, rebuilt from its source (spandrel
# b0c3eb2): the loaded model has the same type and hyperparameters, also through safetensors,
# and the state dict is detected. The real one was run once against contrib/spandrel (see
# contrib/spandrel/README.md).


def assert_loads_correctly(architecture, *models):
    for model_fn in models:
        name = inspect.getsource(model_fn).strip()
        model = model_fn()
        state_dict = model.state_dict()
        for loaded in (
            architecture.load(state_dict).model,
            architecture.load(safetensors.torch.load(safetensors.torch.save(state_dict))).model,
        ):
            assert type(loaded) is type(model), name
            assert loaded.hyperparameters == model.hyperparameters, name
        assert architecture.detect(state_dict), name


def test_every_preset_and_form_loads_correctly():
    assert_loads_correctly(
        arch(),
        lambda: aether_tiny(),
        lambda: aether_small(scale=2),
        lambda: aether_medium(scale=3),
        lambda: aether_large(scale=1),
        lambda: aether_tiny(scale=8, fused=True),
        lambda: aether_small(fused=True),
        lambda: aether_medium(scale=2, fused=True),
        lambda: aether_large(scale=4, fused=True),
        lambda: aether_tiny(scale=2, qat=True),
        lambda: aether_small(scale=3, qat=True),
        lambda: aether_medium(scale=4, qat=True),
        lambda: aether_large(scale=2, qat=True),
        lambda: aether_tiny(qat=True, int8_profile="tensorrt"),
        lambda: aether_large(scale=3, qat=True, int8_profile="tensorrt"),
        lambda: AetherNet(in_channels=1, out_channels=1, dim=16, num_blocks=1, large_kernel=3),
        lambda: AetherNet(in_channels=4, out_channels=4, dim=24, num_blocks=2, large_kernel=9),
    )


def test_hyperparameters_follow_fuse_and_prepare_qat():
    model = aether_tiny(scale=2)
    assert model.hyperparameters == {**model.config, "fused": False, "qat": False, "int8_profile": "cpu"}
    prepare_qat(model)  # fuses, then swaps in the quantizers, in place
    assert model.hyperparameters == {**model.config, "fused": True, "qat": True, "int8_profile": "cpu"}
    assert arch().load(model.state_dict()).model.hyperparameters == model.hyperparameters


# --- spandrel's image-inference snapshot style (tests/util.py::assert_image_inference): the
# shipped sample on 16, 32 and 64 px crops, every output pixel within 1 of its stored PNG.
SNAPSHOTS = Path(__file__).parent / "snapshots"
SNAPSHOT_INPUTS = {f"SR_{size}": size for size in (16, 32, 64)}


def _snapshot_input(size: int) -> np.ndarray:
    image = cv2.imread(str(SAMPLES / "val" / "astronaut.png"), cv2.IMREAD_COLOR)
    return image[96 : 96 + size, 160 : 160 + size]  # the face: edges, skin, hair


def _inference(descriptor, image: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        out = descriptor(torch.from_numpy(rgb.transpose(2, 0, 1)).unsqueeze(0))
    out = np.clip((out.squeeze(0).numpy().transpose(1, 2, 0) * 255.0).round(), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("name", ["aether_tiny_x2.pth", "aether_tiny_x2_float.pth"])
def test_sample_inference_matches_its_snapshot(name):
    """AETHER_UPDATE_SNAPSHOTS=1 rewrites the PNGs (after a deliberate change of the model)."""
    descriptor = loader_load(SAMPLES / name)
    for label, size in SNAPSHOT_INPUTS.items():
        output = _inference(descriptor, _snapshot_input(size))
        assert output.shape == (size * 2, size * 2, 3)
        path = SNAPSHOTS / Path(name).stem / f"{label}.png"
        if os.environ.get("AETHER_UPDATE_SNAPSHOTS") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), output)
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert expected is not None, f"{path} is missing: run with AETHER_UPDATE_SNAPSHOTS=1"
        error = np.abs(output.astype(np.int32) - expected.astype(np.int32))
        assert error.max() <= 1, (label, int(error.max()), float(error.mean()))


def test_snapshot_check_can_fail():
    """The neighbour test compares real pixels: a one-step brighter output fails it."""
    descriptor = loader_load(SAMPLES / "aether_tiny_x2.pth")
    output = _inference(descriptor, _snapshot_input(16))
    expected = cv2.imread(str(SNAPSHOTS / "aether_tiny_x2" / "SR_16.png"), cv2.IMREAD_COLOR)
    brighter = np.clip(expected.astype(np.int32) + 2, 0, 255)
    assert np.abs(output.astype(np.int32) - brighter).max() > 1


# --- chaiNNer's "Convert To ONNX" (backend/src/nodes/impl/pytorch/convert_to_onnx_impl.py at
# 874b878, read from its source): the descriptor wrapped in a module, opset 14, dynamic batch and
# size, constant folding, torch.onnx.export as chaiNNer's pinned torch 2.7 runs it (TorchScript).


def _chainner_convert_to_onnx(descriptor) -> bytes:
    class FakeModel(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    axes = {0: "batch_size", 2: "height", 3: "width"}
    with io.BytesIO() as f:
        torch.onnx.export(
            FakeModel(descriptor.float()),
            (torch.rand(1, descriptor.input_channels, 3, 3),),
            f,
            opset_version=14,
            verbose=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
            do_constant_folding=True,
            dynamo=False,  # torch 2.7's default
        )
        return f.getvalue()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", ["model_int8.pth", "model_fp32.pth"])
def test_chainner_converts_release_pth_to_onnx(sample_release, name):
    from aether_runtime import ort_session

    descriptor = loader_load(sample_release / name)
    for parameter in descriptor.model.parameters():  # chaiNNer's load_model_node does this
        parameter.requires_grad = False
    session = ort_session(_chainner_convert_to_onnx(descriptor))
    image = torch.rand(1, 3, 20, 17)
    with torch.no_grad():
        expected = descriptor(image).numpy()
    got = session.run(None, {"input": image.numpy()})[0]
    assert got.shape == (1, 3, 40, 34)
    assert np.abs(got - expected).max() <= (1 / 255 + 1e-6 if "int8" in name else 1e-5)


# --- contrib/spandrel: the upstream package, dropped into a copy of the installed spandrel the
# way the pull request adds it (architectures/AetherNet + one line in the main registry).
CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "spandrel"


def _spandrel_with_contrib(root: Path) -> Path:
    package = root / "spandrel"
    shutil.copytree(Path(spandrel.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CONTRIB / "AetherNet", package / "architectures" / "AetherNet", symlinks=False)
    registry = package / "__helpers" / "main_registry.py"
    text = registry.read_text()
    text = text.replace("from ..architectures import (\n", "from ..architectures import (\n    AetherNet,\n", 1)
    end = text.rindex("\n)")
    text = text[:end] + "\n    ArchSupport.from_architecture(AetherNet.AetherNetArch())," + text[end:]
    registry.write_text(text)
    return root


def test_contrib_package_loads_every_release_file_in_spandrel(tmp_path, sample_release, checkpoint_forms):
    root = _spandrel_with_contrib(tmp_path / "site")
    files = [sample_release / f"model_{p}.pth" for p in ("fp32", "fp16", "int8")]
    files += [SAMPLES / "aether_tiny_x2.pth", SAMPLES / "aether_tiny_x2_float.pth", *checkpoint_forms.values()]
    script = textwrap.dedent(
        """
        import sys, torch, spandrel, aether_arch
        from spandrel.architectures.AetherNet import AetherNet
        assert spandrel.__file__.startswith(sys.argv[1]), spandrel.__file__
        others = [s for s in spandrel.MAIN_REGISTRY.architectures("detection") if s.architecture.id != "AetherNet"]
        for path in sys.argv[2:]:
            descriptor = spandrel.ModelLoader().load_from_file(path)
            assert descriptor.architecture.id == "AetherNet" and isinstance(descriptor.model, AetherNet), path
            state_dict = spandrel.ModelLoader().load_state_dict_from_file(path)
            assert not [s.architecture.id for s in others if s.detect(state_dict)], path
            reference = aether_arch.load_model(path)
            assert descriptor.model.hyperparameters == reference.hyperparameters, path
            image = torch.rand(1, 3, 11, 14)
            with torch.no_grad():
                torch.testing.assert_close(descriptor(image), reference(image), atol=1e-5, rtol=0)
        print("loaded", len(sys.argv) - 2)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(Path(aether_arch.__file__).parent)])}
    result = subprocess.run(
        [sys.executable, "-c", script, str(root), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["loaded", str(len(files))]


def test_contrib_network_code_is_this_repository_s_arch_file():
    """One network file: the package's __arch/AetherNet.py and LICENSE are links to ours."""
    arch_dir = CONTRIB / "AetherNet" / "__arch"
    assert (arch_dir / "AetherNet.py").resolve() == Path(aether_arch.__file__).resolve()
    assert (arch_dir / "LICENSE").read_text().startswith("MIT License")
