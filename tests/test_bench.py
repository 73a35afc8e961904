"""The benchmark's deterministic parts: MAC counting and the README preset table.
(Latencies are only reported by aether_bench.py; speed targets are not tests.)"""

from pathlib import Path

import pytest
from torch import nn

import aether_bench
from aether_arch import PRESET_FACTORIES

README = Path(__file__).resolve().parent.parent / "README.md"


def test_macs_of_a_hand_made_network():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, groups=4),  # 4x4, 2 input channels per group
        nn.PixelShuffle(2),  # free
    )
    first = (8 * 4 * 4) * 3 * 3 * 3
    second = (16 * 4 * 4) * (8 // 4) * 1 * 1
    assert aether_bench.macs_per_lr_pixel(net, size=8) == (first + second) / (8 * 8)


@pytest.mark.parametrize("fused", [False, True])
def test_macs_of_a_preset_match_its_conv_weights(fused):
    model = PRESET_FACTORIES["aether_tiny"](scale=3, fused=fused).eval()
    # Every conv (body, upsampler, skip) runs at LR resolution, so each weight is applied
    # once per LR pixel: the MACs per LR pixel are the number of conv weights.
    expected = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert aether_bench.macs_per_lr_pixel(model, size=5) == expected


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
        f"# Title\n\n{aether_bench.README_TABLE_START}\nstale\n{aether_bench.README_TABLE_END}\n"
        "\nAfter.\n",
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
