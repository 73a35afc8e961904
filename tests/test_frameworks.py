"""Dropping aether_arch.py into neosr/archs/ or traiNNer/archs/ registers the presets.

The frameworks themselves are not installed here; these tests rebuild the pieces the arch file
touches — each framework's Registry (copied behaviour: neosr keeps names as written,
traiNNer-redux lower-cases them; both assert on duplicates), neosr's net_opt() and both
build_network() call patterns — as stand-in packages, then import the copied arch file
the way the framework's auto-import does."""

import copy
import importlib
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import aether_arch

REGISTRY_SOURCE = """
class Registry:
    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, suffix=None):
        if isinstance(suffix, str):
            name = name + "_" + suffix
        assert name not in self._obj_map, f"An object named '{name}' was already registered"
        self._obj_map[name] = obj

    def register(self, obj=None, suffix=None):
        if obj is None:
            def deco(func_or_class):
                self._do_register(NAME(func_or_class.__name__), func_or_class, suffix)
                return func_or_class
            return deco
        self._do_register(NAME(obj.__name__), obj, suffix)

    def get(self, name, suffix="x"):
        ret = self._obj_map.get(NAME(name))
        if ret is None:
            raise KeyError(f"No object named '{name}' found in '{self._name}' registry!")
        return ret

    def __contains__(self, name):
        return NAME(name) in self._obj_map

ARCH_REGISTRY = Registry("arch")
"""

BUILD_NETWORK_SOURCE = """
import importlib
from copy import deepcopy
from pathlib import Path
from {package}.utils.registry import ARCH_REGISTRY

def build_network(opt):
    for path in Path(__file__).parent.glob("*_arch.py"):
        importlib.import_module(f"{package}.archs.{{path.stem}}")
    opt = deepcopy(opt)
    network_type = opt.pop("type")
    return ARCH_REGISTRY.get(network_type)(**opt)
"""


def _make_framework(root: Path, package: str, name_rule: str, extra_files: dict[str, str]) -> None:
    files = {
        "__init__.py": "",
        "utils/__init__.py": "",
        "utils/registry.py": f"NAME = {name_rule}\n" + REGISTRY_SOURCE,
        "archs/__init__.py": BUILD_NETWORK_SOURCE.format(package=package),
        **extra_files,
    }
    for rel, text in files.items():
        path = root / package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    shutil.copy(aether_arch.__file__, root / package / "archs" / "aether_arch.py")


@pytest.fixture
def framework_root(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.split(".")[0] in ("neosr", "traiNNer"):
            del sys.modules[name]


def test_neosr_registration_uses_scale_from_options(framework_root):
    # neosr's net_opt() parses the run's options file; the stand-in returns scale 3.
    _make_framework(
        framework_root,
        "neosr",
        "lambda name: name",
        {"archs/arch_util.py": "def net_opt():\n    return 3, True\n"},
    )
    archs = importlib.import_module("neosr.archs")
    registry = importlib.import_module("neosr.utils.registry").ARCH_REGISTRY
    # neosr's build_network: ARCH_REGISTRY.get(type)(**opt) with no scale
    net = archs.build_network({"type": "aether_tiny"})
    assert isinstance(net, torch.nn.Module) and net.scale == 3
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 48, 48)
    assert archs.build_network({"type": "aether_small", "scale": 2, "num_blocks": 2}).scale == 2
    for name in aether_arch.PRESET_FACTORIES:
        assert name in registry
    # a second import of the same file (e.g. re-scan) must not hit the duplicate assert
    importlib.reload(importlib.import_module("neosr.archs.aether_arch"))


def test_traiNNer_registration_takes_scale_keyword(framework_root):
    _make_framework(framework_root, "traiNNer", "lambda name: name.lower()", {})
    archs = importlib.import_module("traiNNer.archs")
    for scale in (1, 2, 3, 4):
        # traiNNer-redux: build_network({**opt.network_g, "scale": opt.scale})
        net = archs.build_network({"type": "aether_medium", "scale": scale, "num_blocks": 1})
        assert net.scale == scale
        assert net.eval()(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16 * scale, 16 * scale)
    assert archs.build_network({"type": "AETHER_TINY"}).scale == 4


def test_register_presets_is_idempotent_and_keeps_names():
    namespace = {"NAME": lambda name: name}
    exec(REGISTRY_SOURCE, namespace)
    registry = namespace["ARCH_REGISTRY"]
    aether_arch.register_presets(registry, default_scale=2)
    aether_arch.register_presets(registry, default_scale=2)  # no duplicate assert
    assert sorted(registry._obj_map) == sorted(aether_arch.PRESET_FACTORIES)
    factory = registry.get("aether_large")
    assert factory.__name__ == "aether_large" and factory.__doc__
    assert factory(num_blocks=1).scale == 2


def test_qat_is_a_config_switch_and_float_pretrain_loads_strictly(framework_root):
    _make_framework(framework_root, "traiNNer", "lambda name: name.lower()", {})
    archs = importlib.import_module("traiNNer.archs")
    float_net = archs.build_network({"type": "aether_tiny", "scale": 2, "num_blocks": 2})
    qat_net = archs.build_network({"type": "aether_tiny", "scale": 2, "num_blocks": 2, "qat": True})
    assert qat_net.qat and not float_net.qat
    # what both frameworks' load_network does with a pretrained path: strict by default
    qat_net.load_state_dict(float_net.state_dict())
    qat_net.train()(torch.rand(2, 3, 16, 16)).mean().backward()


def _redux_strict_load(net: torch.nn.Module, load_net: dict) -> None:
    """traiNNer-redux's load_network with strict_load_g: true (base_model.py, read from its
    source): the key sets are compared after ``net.map_state_dict(load_net)`` if the network
    has that hook, and a mismatch is refused before ``load_state_dict(load_net, strict=True)``."""
    checked = net.map_state_dict(load_net) if hasattr(net, "map_state_dict") else load_net
    if set(net.state_dict()) != set(checked):
        raise ValueError("Unable to load pretrain network due to mismatched state dict keys")
    net.load_state_dict(load_net, strict=True)


@pytest.mark.parametrize(
    "source, target",
    [("training", {"qat": True}), ("fused", {"qat": True}), ("training", {"fused": True}), ("training", {})],
)
def test_traiNNer_redux_strict_key_check_passes_float_to_qat(source, target):
    float_net = aether_arch.aether_tiny(scale=2, num_blocks=2)
    if source == "fused":
        float_net.fuse()
    load_net = float_net.state_dict()
    net = aether_arch.aether_tiny(scale=2, num_blocks=2, **target)
    _redux_strict_load(net, load_net)
    assert load_net.keys() == float_net.state_dict().keys()  # the hook left the caller's dict alone
    reference = copy.deepcopy(float_net).fuse() if target else float_net  # the float weights, as loaded
    for name, value in reference.named_parameters():
        torch.testing.assert_close(net.get_parameter(name), value, rtol=0, atol=1e-6)


class _WithoutHook(aether_arch.AetherNet):
    @property
    def map_state_dict(self):  # hasattr() is False: as if the hook did not exist
        raise AttributeError("map_state_dict")


def test_without_the_hook_traiNNer_redux_would_refuse_the_qat_load():
    """The neighbour test can fail: without map_state_dict a QAT network's keys differ."""
    net = _WithoutHook(scale=2, dim=48, num_blocks=2, large_kernel=5, qat=True)
    with pytest.raises(ValueError, match="mismatched state dict keys"):
        _redux_strict_load(net, aether_arch.aether_tiny(scale=2, num_blocks=2).state_dict())


# --- QAT state through the frameworks' EMA, torch.compile and their own ONNX exporters ---


def _qat_trained(steps: int = 3) -> aether_arch.AetherNet:
    torch.manual_seed(0)
    net = aether_arch.aether_tiny(scale=2, num_blocks=2, qat=True).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        net(torch.rand(2, 3, 16, 16)).mean().backward()
        optimizer.step()
    return net


def test_ema_pytorch_copy_keeps_every_quantizer():
    """traiNNer-redux's EMA (the real ema-pytorch package, its sr_model.py settings): the EMA
    copy is deep-copied before the first batch sets any range; ema-pytorch copies and averages
    floating-point tensors only, so the quantizers' state must all be floating point."""
    ema_pytorch = pytest.importorskip("ema_pytorch")
    torch.manual_seed(0)
    net = aether_arch.aether_tiny(scale=2, num_blocks=2, qat=True).train()
    ema = ema_pytorch.EMA(net, beta=0.999, update_after_step=2, update_every=1, allow_different_devices=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)  # small steps: the average stays close
    for _ in range(6):  # steps 0-2 copy, then the moving average
        optimizer.zero_grad()
        net(torch.rand(2, 3, 16, 16)).mean().backward()
        optimizer.step()
        ema.update()
    copy_ = ema.ema_model.eval()
    assert aether_arch.is_calibrated(copy_)
    for ours, theirs in zip(aether_arch.act_quantizers(copy_), aether_arch.act_quantizers(net), strict=True):
        assert ours.zero_point == theirs.zero_point  # constant since step 0: averaging keeps it
        torch.testing.assert_close(ours.scale, theirs.scale, rtol=0.05, atol=0)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        out = copy_(x)
    levels = out * 255
    assert (levels - levels.round()).abs().max() < 1e-3  # the integer output head: on the 8-bit grid


def test_neosr_ema_keeps_every_quantizer():
    """neosr's EMA (models/image.py at 31c7022, read from its source) is torch's own
    AveragedModel with get_ema_multi_avg_fn, built before the first batch: it averages the
    parameters and copies the buffers in place (``b_swa.detach().copy_(b)``), bypassing
    load_state_dict, so the "initialised" state must be read from the tensor, never cached."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    net = aether_arch.aether_tiny(scale=2, num_blocks=2, qat=True).train()
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.999), device=torch.device("cpu"))
    assert not aether_arch.is_calibrated(ema.module)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.rand(2, 3, 16, 16)).mean().backward()
        optimizer.step()
        ema.update_parameters(net)
    ema.eval()
    assert aether_arch.is_calibrated(ema.module)
    for ours, theirs in zip(aether_arch.act_quantizers(ema.module), aether_arch.act_quantizers(net), strict=True):
        assert ours.zero_point == theirs.zero_point
        torch.testing.assert_close(ours.scale, theirs.scale, rtol=0.05, atol=0)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ema(x), net.eval()(x), atol=3 / 255, rtol=0)


@pytest.mark.parametrize("qat", (False, True))
def test_training_step_compiles_without_graph_breaks(qat):
    net = aether_arch.aether_tiny(scale=2, num_blocks=2, qat=qat).train()
    x = torch.rand(2, 3, 16, 16)
    explanation = torch._dynamo.explain(lambda batch: net(batch).mean())(x)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_compiled_qat_training_matches_eager():
    eager = aether_arch.aether_tiny(scale=2, num_blocks=2, qat=True).train()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net)
    x = torch.rand(2, 3, 16, 16)
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (eager, compiled_net)]
    for _ in range(2):  # the first step initialises every range; the second keeps them
        for net, optimizer in zip((eager, compiled), optimizers, strict=True):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    assert aether_arch.is_calibrated(compiled_net.eval())
    for (name, a), b in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


def _framework_export(net: torch.nn.Module, x: torch.Tensor, dynamo: bool):
    """convert_to_onnx.py of traiNNer-redux (read from its source): torch.onnx.export under
    inference_mode, optimize=False then ONNXProgram.optimize() with dynamo, dynamic axes with
    the legacy exporter. neosr's convert script calls the same torch.onnx.export."""
    import io

    import onnx

    auto, static = torch.export.Dim.AUTO, torch.export.Dim.STATIC
    buffer = None if dynamo else io.BytesIO()
    axes = {0: "batch_size", 2: "height", 3: "width"}
    with torch.inference_mode():
        program = torch.onnx.export(
            net,
            (x,),
            buffer,
            dynamo=dynamo,
            verbose=False,
            optimize=False,
            opset_version=18 if dynamo else 17,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=((auto, static, auto, auto),) if dynamo else None,
            dynamic_axes=None if dynamo else {"input": axes, "output": axes},
        )
    if dynamo:
        program.optimize()
        return program.model_proto
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", (False, True))
@pytest.mark.parametrize("form", ("training", "qat"))
def test_the_frameworks_onnx_export_gives_the_deploy_graph(form, dynamo):
    """Their exporters export net_g as trained: an eval-mode training-form model traces its
    fused convs (no BatchNorm, one Conv per conv), a QAT model its Q/DQ pairs, at any size."""
    import numpy as np

    from aether_runtime import ort_session

    net = _qat_trained() if form == "qat" else aether_arch.aether_tiny(scale=2, num_blocks=2)
    net.eval()
    proto = _framework_export(net, torch.rand(1, 3, 20, 24), dynamo)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == 1 + 2 * 2 + 1 + 2 and "BatchNormalization" not in ops  # head, blocks, tail, output
    if form == "qat":
        assert ops.count("QuantizeLinear") >= 2 + 2 * 3 + 4
    session = ort_session(proto.SerializeToString())
    for size in ((20, 24), (13, 8)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= (1 / 255 + 1e-6 if form == "qat" else 1e-5)
