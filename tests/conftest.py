import contextlib
import copy
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from aether_arch import PRESET_FACTORIES, AetherNet, QuantConv2d
from aether_data import read_image, write_image


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


def train_steps(model: torch.nn.Module, steps: int = 3, size: int = 12) -> None:
    """Move weights and BatchNorm running statistics away from their init."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.5
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.rand(2, 3, size, size)
        loss = (model(x) - 0.5).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# A small configuration that still has every part: a block with a large kernel wider than its
# 3x3 branch and a block with a 3x3 second conv.
SMALL_CONFIG = {"dim": 16, "num_blocks": 2, "large_kernel": 5}


@pytest.fixture(scope="session")
def trained_models():
    """One trained training-form model per (preset or "small", scale), built once per session."""
    cache = {}

    def get(name: str, scale: int):
        if (name, scale) not in cache:
            torch.manual_seed(1)
            model = AetherNet(scale=scale, **SMALL_CONFIG) if name == "small" else PRESET_FACTORIES[name](scale=scale)
            train_steps(model)
            cache[name, scale] = model
        return cache[name, scale]

    return get


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def on_the_old_grid(model: AetherNet) -> AetherNet:
    """A copy of a cpu QAT model with its weights on the full int8 grid, as files were made
    before the 7-bit one."""
    old = copy.deepcopy(model)
    for conv in old.modules():
        if isinstance(conv, QuantConv2d):
            conv.profile_qmax = conv.weight_qmax = 127
            conv.refresh_weight_scale()
    return old


def photo_like(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]: smooth gradients, waves of several frequencies and a
    little grain, so that every crop and tile has edges and detail an SR model can learn."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for channel in range(3):
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
        wave = np.sin(frequency * (x * np.cos(angle) + y * np.sin(angle)) + channel)
        planes.append(0.5 + 0.3 * wave + 0.15 * (x / width - y / height))
    image = np.stack(planes, axis=2) + rng.normal(0, 0.03, (height, width, 3))
    return image.clip(0, 1).astype(np.float32)


def as_pixels(image: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """A float [0, 1] image as stored integers of ``dtype``."""
    top = np.iinfo(dtype).max
    return np.rint(image * top).astype(dtype)


def write_image_folder(folder: Path, sizes, *, seed: int) -> Path:
    """A new folder of photo_like PNGs, one per (height, width)."""
    folder.mkdir(parents=True)
    for i, (height, width) in enumerate(sizes):
        write_image(folder / f"image_{i}.png", photo_like(height, width, seed=seed * 1000 + i))
    return folder


@pytest.fixture(scope="session")
def sample_release(tmp_path_factory) -> Path:
    """The release folder of the shipped sample checkpoint (six artifacts, plus the NCNN files
    where pnnx and ncnn are installed), built once and
    validated on a 96 x 96 crop of a sample image (whole images add seconds, not checks)."""
    import aether_release

    root = tmp_path_factory.mktemp("sample_release")
    (root / "val").mkdir()
    write_image(root / "val" / "crop.png", read_image(SAMPLES / "val" / "astronaut.png")[0][100:196, 200:296])
    argv = ["--model-path", SAMPLES / "aether_tiny_x2.pth", "--output-dir", root / "release"]
    argv += ["--validation-dir", root / "val"]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = aether_release.main([str(a) for a in argv])
    assert code == 0, log.getvalue()
    (root / "release.log").write_text(log.getvalue())  # its warnings, for test_release
    return root / "release"


@dataclass
class OnnxModelInfo:
    channels: int
    scale: int | None
    fp16: bool


def chainner_onnx_info(proto: onnx.ModelProto) -> OnnxModelInfo:
    """What chaiNNer's ONNX loader reads from a model (it ignores metadata_props): the channel
    count from the first input's static dim 1 (<= 4, NCHW), precision from the first input's
    element type, and the scale by fixing H/W to 16, 64, 256 in turn, running strict shape
    inference and dividing output by input size (None unless static and the same every time)."""
    tensor_type = proto.graph.input[0].type.tensor_type
    dims = tensor_type.shape.dim
    assert len(dims) == 4 and dims[1].HasField("dim_value") and 1 <= dims[1].dim_value <= 4, dims
    ratios = set()
    for size in (16, 64, 256):
        fixed = onnx.ModelProto.FromString(proto.SerializeToString())
        for dim in fixed.graph.input[0].type.tensor_type.shape.dim[2:]:
            dim.dim_value = size
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
        for dim in inferred.graph.output[0].type.tensor_type.shape.dim[2:]:
            ratios.add(dim.dim_value / size if dim.HasField("dim_value") else None)
    ratio = ratios.pop() if len(ratios) == 1 else None
    return OnnxModelInfo(
        channels=dims[1].dim_value,
        scale=int(ratio) if ratio is not None and ratio.is_integer() else None,
        fp16=tensor_type.elem_type == onnx.TensorProto.FLOAT16,
    )


UNWRITABLE_KINDS = ("is_a_file", "inside_a_file", "read_only")


def unwritable_output_dir(tmp_path: Path, kind: str, monkeypatch) -> tuple[Path, Path]:
    """(output folder that cannot be written, a file that must stay untouched): the folder is
    that file, is below it, or is read-only (also for root, via a patched os.access)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"is_a_file": blocker, "inside_a_file": blocker / "out", "read_only": tmp_path / "ro"}[kind]
    if kind == "read_only":
        out.mkdir(mode=0o500)
        if os.geteuid() == 0:  # root may write anyway: make the permission check say no
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != out and real_access(path, mode))
    return out, blocker
