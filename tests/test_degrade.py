"""aether_degrade: every kernel gives the right shape and differs from the others (except where
the maths makes two the same), the kernels agree with OpenCV's, and a recipe is reproducible
under a seed, draws a fixed count of random numbers and fails loudly on a bad definition."""

import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aether_data import bicubic_downscale, evaluation_pair
from aether_degrade import (
    KERNELS,
    PROTOCOLS,
    RECIPES,
    Recipe,
    downscale,
    gaussian_blur,
    parse_kernels,
    protocol_lr,
)

REPO = Path(__file__).resolve().parents[1]
HR = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
# Exact identities: at x2 plain linear samples midway between two pixels (the 2x2 mean, as
# area); at odd scales plain cubic, linear and nearest all sample the centre pixel.
SAME = {
    2: {frozenset({"linear", "area"})},
    3: {frozenset(p) for p in itertools.combinations(("cubic", "linear", "nearest"), 2)},
    4: set(),
}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_every_kernel_has_the_right_shape_and_differs_from_the_others(scale):
    lrs = {kernel: downscale(HR, scale, kernel) for kernel in KERNELS}
    for kernel, lr in lrs.items():
        assert lr.shape == (2, 3, 48 // scale, 48 // scale), kernel
        assert lr.min() >= 0 and lr.max() <= 1
    for a, b in itertools.combinations(KERNELS, 2):
        same = torch.allclose(lrs[a], lrs[b], atol=1e-6)
        assert same == (frozenset({a, b}) in SAME[scale]), f"x{scale}: {a} vs {b}"


@pytest.mark.parametrize(
    "kernel, flag", [("cubic", cv2.INTER_CUBIC), ("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA)]
)
@pytest.mark.parametrize("scale", [2, 4])
def test_plain_kernels_match_opencv(kernel, flag, scale):
    image = HR[0].permute(1, 2, 0).numpy()
    expected = np.clip(cv2.resize(image, (48 // scale, 48 // scale), interpolation=flag), 0, 1)
    actual = downscale(HR[:1], scale, kernel)[0].permute(1, 2, 0).numpy()
    assert np.abs(actual - expected).max() < 1e-5


@pytest.mark.parametrize("scale", [2, 4])
def test_patches_smaller_than_a_kernel_still_degrade(scale):
    # --lr-patch 1 or 2 with Lanczos, and a --blur-sigma wider than the patch, reach the filter
    # with less image than its reach (reflection cannot pad that far)
    tiny = torch.rand(2, 3, 2 * scale, 2 * scale, generator=torch.Generator().manual_seed(1))
    for kernel in KERNELS:
        lr = downscale(tiny, scale, kernel)
        assert lr.shape == (2, 3, 2, 2) and torch.isfinite(lr).all(), kernel
    flat = torch.full((3, 8, 8), 0.25)
    assert torch.allclose(gaussian_blur(flat, 20.0), flat, atol=1e-6)
    # the neighbour: where reflection fits, borders still reflect (OpenCV's default border)
    reference = cv2.GaussianBlur(HR[0].permute(1, 2, 0).numpy(), (7, 7), 1.0, borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(gaussian_blur(HR[0], 1.0).permute(1, 2, 0).numpy() - reference).max() < 1e-6


def test_antialiased_kernels_keep_flat_areas_and_lanczos_is_sharper_than_bilinear():
    flat = torch.full((1, 3, 32, 32), 0.3)
    for kernel in KERNELS:
        assert torch.allclose(downscale(flat, 4, kernel), torch.full((1, 3, 8, 8), 0.3), atol=1e-6), kernel
    # a step edge: the wider, smoother antialiasing kernel spreads it over more LR pixels
    edge = torch.zeros(1, 3, 32, 32)
    edge[..., 16:] = 1
    spread = {
        k: int(((downscale(edge, 4, k)[0, 0, 4] > 0.01) & (downscale(edge, 4, k)[0, 0, 4] < 0.99)).sum())
        for k in ("lanczos", "aa-bilinear", "area")
    }
    assert spread["area"] == 0 and spread["lanczos"] >= 2 and spread["aa-bilinear"] >= 2


def test_the_benchmark_kernel_and_protocols():
    assert torch.equal(downscale(HR, 2, "aa-bicubic"), bicubic_downscale(HR, 2))
    # each protocol's LR is its kernel's, on the 8-bit grid as every real input is
    sharp = protocol_lr(HR, 2, "sharp")
    assert torch.equal(sharp, (downscale(HR, 2, "cubic") * 255).round() / 255)
    assert not torch.equal(sharp, downscale(HR, 2, "cubic"))
    image = HR[0].permute(1, 2, 0).numpy()
    _, sharp, sharp_bicubic = evaluation_pair(image, 2, "sharp")
    _, soft, soft_bicubic = evaluation_pair(image, 2)  # default: the benchmark protocol
    assert torch.equal(soft, (bicubic_downscale(HR[:1], 2) * 255).round() / 255) and not torch.equal(sharp, soft)
    assert sharp_bicubic != soft_bicubic
    assert set(PROTOCOLS) == {"aa-bicubic", "sharp"}
    with pytest.raises(ValueError, match="unknown protocol 'x'"):
        protocol_lr(HR, 2, "x")


def _apply(recipe, seed, hr=HR, scale=2):
    generator = torch.Generator().manual_seed(seed)
    return recipe.apply(hr, scale, generator), generator.get_state()


def test_a_recipe_is_reproducible_under_a_seed_and_draws_a_fixed_count():
    robust = RECIPES["robust"]
    hr = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    (a, state_a), (b, state_b) = _apply(robust, 5, hr), _apply(robust, 5, hr)
    assert torch.equal(a, b) and torch.equal(state_a, state_b)
    c, _ = _apply(robust, 6, hr)
    assert not torch.equal(a, c)
    # the generator moves on by the same count whatever the images (and so the picks) are
    _, state_other = _apply(robust, 5, torch.rand(32, 3, 16, 16))
    assert torch.equal(state_a, state_other)
    # robust LR is 8-bit, and the 32 images used more than one kernel: not all are aa-bicubic
    assert torch.equal((a * 255).round() / 255, a)
    assert not torch.allclose(a, downscale(hr, 2, "aa-bicubic"), atol=2 / 255)


def test_the_bicubic_recipe_is_the_benchmark_degradation_and_draws_nothing():
    lr, state = _apply(RECIPES["bicubic"], 3)
    assert torch.equal(lr, bicubic_downscale(HR, 2))
    assert torch.equal(state, torch.Generator().manual_seed(3).get_state())


@pytest.mark.parametrize(
    "fields, changed",
    [
        ({"jpeg_prob": 1.0, "jpeg_quality": (30, 30)}, True),
        ({"noise_prob": 1.0, "noise_sigma": (4.0, 4.0)}, True),
        ({"blur_prob": 1.0, "blur_sigma": (1.5, 1.5)}, True),
        ({"jpeg_prob": 0.0, "noise_prob": 0.0, "blur_prob": 0.0}, False),
    ],
)
def test_each_optional_step_changes_the_lr(fields, changed):
    plain = Recipe(kernels=(("area", 1.0),))
    base, _ = _apply(plain, 0)
    degraded, _ = _apply(Recipe(kernels=(("area", 1.0),), **fields), 0)
    assert degraded.shape == base.shape
    assert (not torch.equal(degraded, base)) == changed


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kernels": (("cubic", 0.5),)}, "sum to 0.5, not 1"),
        ({"kernels": (("bogus", 1.0),)}, "unknown kernel 'bogus'"),
        ({"kernels": ()}, "at least one kernel"),
        ({"kernels": (("cubic", 1.0),), "jpeg_quality": (90, 80)}, "jpeg_quality needs"),
        ({"kernels": (("cubic", 1.0),), "blur_prob": 2.0}, r"blur_prob must be in \[0, 1\]"),
    ],
)
def test_bad_recipes_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**fields)


def test_parse_kernels():
    assert parse_kernels("aa-bicubic:0.25, cubic:0.75") == (("aa-bicubic", 0.25), ("cubic", 0.75))
    assert parse_kernels("area") == (("area", 1.0),)
    with pytest.raises(ValueError, match="'cubic:x' is not KERNEL:PROBABILITY"):
        parse_kernels("cubic:x")


def test_the_readme_states_the_robust_recipe_the_code_draws():
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `robust`"))
    robust = RECIPES["robust"]
    stated = {k: float(p) for k, p in re.findall(r"([a-z-]+) (0\.\d+)", row.split("drawn from")[1].split(";")[0])}
    assert stated == dict(robust.kernels)
    for step, prob, low_high in (
        ("blur", robust.blur_prob, robust.blur_sigma),
        ("noise", robust.noise_prob, robust.noise_sigma),
        ("JPEG", robust.jpeg_prob, robust.jpeg_quality),
    ):
        p, low, high = re.search(rf"{step}[^(]*\(p ([\d.]+), \D*([\d.]+)–([\d.]+)", row).groups()
        assert (float(p), float(low), float(high)) == (prob, *low_high), step
