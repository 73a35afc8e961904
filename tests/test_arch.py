"""The network: shapes, presets, exact re-parameterization."""

import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import aether_arch
from aether_arch import PRESET_FACTORIES, PRESETS, AetherNet, RepConv, aether_tiny
from conftest import SMALL_CONFIG

SCALES = (1, 2, 3, 4)
# The grid's corners: the smallest and largest preset at the smallest and largest scale; the
# scales between are covered by the small configuration.
CORNERS = [(name, scale) for name in ("aether_tiny", "aether_large") for scale in (1, 4)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("name, scale", [*CORNERS, *(("small", scale) for scale in SCALES)])
def test_exact_scale_for_any_size(name, scale):
    model = (AetherNet(scale=scale, **SMALL_CONFIG) if name == "small" else PRESET_FACTORIES[name](scale=scale)).eval()
    with torch.no_grad():
        for h, w in ((1, 1), (7, 13), (16, 16), (1, 9)):
            out = model(torch.rand(2, 3, h, w))
            assert out.shape == (2, 3, h * scale, w * scale)
            assert out.min() >= 0 and out.max() <= 1


def test_presets_are_sized_for_their_class():
    limits = {
        "aether_tiny": (0, 0.4e6),
        "aether_small": (0.2e6, 1e6),
        "aether_medium": (2e6, 4e6),
        "aether_large": (8e6, 12e6),
    }
    for name, (low, high) in limits.items():
        with torch.device("meta"):  # shapes only
            n = sum(p.numel() for p in PRESET_FACTORIES[name](scale=4, fused=True).parameters())
        assert low <= n <= high, (name, n)


def test_preset_overrides_and_keyword_only():
    model = aether_tiny(scale=2, num_blocks=2)
    assert model.config["num_blocks"] == 2 and model.config["dim"] == PRESETS["aether_tiny"]["dim"]
    with pytest.raises(TypeError):
        AetherNet(4)  # hyperparameters are keyword-only


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0}, "scale must be a positive integer"),
        ({"large_kernel": 8}, "large_kernel must be odd"),
        ({"num_blocks": 0}, "num_blocks must be a positive integer"),
    ],
)
def test_bad_hyperparameters_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AetherNet(**kwargs)


@pytest.mark.parametrize("scale", SCALES)
def test_fresh_model_is_nearest_upsampling(scale):
    """Training starts from nearest-neighbour upsampling (shortcut) with a silent body."""
    model = aether_tiny(scale=scale).eval()
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        out = model(x)
    expected = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def _assert_moved_from_init(model: AetherNet) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean.abs().max() > 1e-4, name
            assert (module.running_var - 1).abs().max() > 1e-4, name
            assert (module.weight - 1).abs().max() > 1e-4, name


@pytest.mark.parametrize("name, scale", [("aether_tiny", 2), *(("small", scale) for scale in SCALES)])
def test_fusion_is_exact(trained_models, name, scale, monkeypatch):
    # The reference adds the branches up, as training does (eval runs the fused kernel itself).
    monkeypatch.setattr(RepConv, "forward", RepConv.branch_sum)
    trained = trained_models(name, scale)
    _assert_moved_from_init(trained)
    x = torch.rand(1, 3, 11, 9)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        reference = copy.deepcopy(trained).to(dtype).eval()
        fused = copy.deepcopy(reference).fuse()
        with torch.no_grad():
            a = reference.forward_unclamped(x.to(dtype))
            b = fused.forward_unclamped(x.to(dtype))
        assert rel_err(a, b) <= tolerance, (dtype, rel_err(a, b))


def test_deploy_form_has_no_norms_or_branches_and_fuse_is_idempotent(trained_models):
    model = copy.deepcopy(trained_models("aether_tiny", 2))
    assert not model.fused
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    returned = model.fuse()
    assert returned is model and model.fused
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, (nn.BatchNorm2d, RepConv, nn.ModuleList)) for k in kinds), kinds
    assert all(isinstance(m, nn.Conv2d) for n, m in model.named_modules() if n.endswith((".conv1", ".conv2")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fused_model_can_keep_training():
    model = aether_tiny(scale=2).fuse().train()
    loss = model(torch.rand(1, 3, 8, 8)).mean()
    loss.backward()
    assert model.head.weight.grad is not None


def test_arch_file_imports_only_torch_and_stdlib():
    import sys

    tree = ast.parse(Path(aether_arch.__file__).read_text())
    top_level = set()
    for node in tree.body:  # module level only: lazy imports inside functions are fine
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_level.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"torch"}
    assert top_level <= allowed, top_level - allowed
