"""The networks users would pick instead of AetherNet, as their users deploy them: built from
Spandrel's architecture code with their published hyperparameters, in their deploy form,
exported by AetherNet's own exporter and statically quantized to INT8 with ONNX Runtime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) — the same path the
benchmark's roofline conv stacks take.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from aether_arch import ONNX_INPUT_NAME, AetherNet, onnx_model_proto
from aether_bench_report import RRDB, SPAN_BASELINE

# Random calibration images for graphs whose speed, not quality, is measured.
CALIBRATION_INPUTS = 8
CALIBRATION_SIZE = 64


# ---------------------------------------------------------------------------------------
# Peers: Spandrel's architecture code with published hyperparameters
# ---------------------------------------------------------------------------------------


def _span(feature_channels: int) -> Callable[[int], nn.Module]:
    def build(scale: int) -> nn.Module:
        from spandrel.architectures.SPAN import SPAN

        # norm=False as traiNNer-redux builds SPAN (archs/span_arch.py `span`, `span_s`; its SPAN
        # templates: "norm: false  # some pretrains require norm: true"). Spandrel's default, the
        # paper's (x - mean) * 255 input, trains far slower from scratch (Charbonnier 0.139 vs
        # 0.049 after 300 equal steps) and its 255-scale first features share one INT8 scale with
        # the small ones in conv_cat's concat, so static PTQ lost 1.3 dB more on top.
        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=feature_channels, upscale=scale, norm=False)

    return build


def _compact(num_feat: int, num_conv: int) -> Callable[[int], nn.Module]:
    def build(scale: int) -> nn.Module:
        from spandrel.architectures.Compact import Compact

        return Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=scale)

    return build


def _plksr_tiny(scale: int) -> nn.Module:
    from spandrel.architectures.PLKSR import PLKSR

    return PLKSR(
        dim=64,
        n_blocks=12,
        upscaling_factor=scale,
        ccm_type="DCCM",
        kernel_size=13,
        split_ratio=0.25,
        lk_type="PLK",
        use_ea=False,
    )


def _rrdb(scale: int) -> nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=scale)


@dataclass(frozen=True)
class Peer:
    build: Callable[[int], nn.Module]  # scale -> training form, from Spandrel's code
    hyperparameters: str  # what they are and where they are published
    tile_hd: bool = False  # 1280x720 runs in tiles (memory)


PEERS: dict[str, Peer] = {
    "SPAN-48": Peer(
        _span(48),
        "feature_channels 48: the SPAN paper's model (NTIRE 2024 ESR winner), Spandrel's default; norm off "
        "(traiNNer-redux's SPAN)",
    ),
    SPAN_BASELINE: Peer(
        _span(28),
        "feature_channels 28: the NTIRE Efficient SR challenge baseline (published: 0.151 M params at ×4); "
        "norm off (traiNNer-redux's SPAN)",
    ),
    "Compact": Peer(
        _compact(64, 16), "num_feat 64, num_conv 16: Real-ESRGAN's SRVGGNetCompact defaults (Spandrel's Compact)"
    ),
    "UltraCompact": Peer(
        _compact(64, 8), "num_feat 64, num_conv 8: traiNNer-redux `ultracompact` (archs/srvgg_arch.py)"
    ),
    "SuperUltraCompact": Peer(_compact(24, 8), "num_feat 24, num_conv 8: traiNNer-redux `superultracompact`"),
    "PLKSR-tiny": Peer(
        _plksr_tiny,
        "dim 64, 12 blocks, DCCM, kernel 13, split 0.25, no EA: traiNNer-redux `plksr_tiny` "
        "(archs/plksr_arch.py; neosr's is the same)",
    ),
    RRDB: Peer(
        _rrdb,
        "64 filters, 23 RRDB blocks: ESRGAN (Wang et al. 2018), Spandrel's defaults. 1280×720 runs in tiles: "
        "its upsampling convs work on 64-channel maps at output resolution (3.8 GB each for a ×4 frame)",
        tile_hd=True,
    ),
}


def peer_deploy_form(model: nn.Module) -> nn.Module:
    """A peer as it is deployed: a copy in eval mode. SPAN's Conv3XC layers train three
    branches and, in eval mode, re-fuse them into ``eval_conv`` on every forward; deployed,
    each is that fused 3x3 conv (and its LeakyReLU), as SPAN's own release runs it. The other
    peers deploy as they train."""
    from spandrel.architectures.SPAN.__arch.span import Conv3XC

    def fold(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, Conv3XC):
                child.update_params()
                conv = child.eval_conv
                setattr(module, name, nn.Sequential(conv, nn.LeakyReLU(0.05)) if child.has_relu else conv)
            else:
                fold(child)

    deployed = copy.deepcopy(model).eval()
    fold(deployed)
    return deployed


# ---------------------------------------------------------------------------------------
# ONNX export and static INT8 of any network
# ---------------------------------------------------------------------------------------


def quantize_int8(
    fp32_path: str,
    int8_path: str,
    workdir: str,
    calibration_inputs: Sequence[np.ndarray] | None = None,
) -> None:
    """Static INT8 quantization (QDQ, per-channel weights, uint8 activations) calibrated on
    ``calibration_inputs`` (NCHW float32), by default on random images (enough for timing:
    speed does not depend on the ranges). The graph is pre-processed first, as the quantizer
    recommends (without it the quantizer logs a warning on every call)."""
    if calibration_inputs is None:
        input_shape = onnx.load(fp32_path).graph.input[0].type.tensor_type.shape
        channels = input_shape.dim[1].dim_value
        rng = np.random.default_rng(0)
        shape = (1, channels, CALIBRATION_SIZE, CALIBRATION_SIZE)
        calibration_inputs = [rng.random(shape, dtype=np.float32) for _ in range(CALIBRATION_INPUTS)]

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{ONNX_INPUT_NAME: x} for x in calibration_inputs])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    fp32_path, int8_path, workdir = (os.path.abspath(p) for p in (fp32_path, int8_path, workdir))
    preprocessed_path = os.path.join(workdir, "preprocessed.onnx")
    try:
        # When ORT's symbolic shape inference gives up, it dumps its partial model into the
        # working directory: let that be the temporary one.
        with contextlib.chdir(workdir):
            quant_pre_process(fp32_path, preprocessed_path)
    except Exception:  # noqa: BLE001 - ORT's symbolic shape inference raises a bare Exception
        # It gives up on some graphs (Compact's nearest-neighbour Resize); ONNX's own shape
        # inference, which the pre-processing also runs, is enough for those.
        quant_pre_process(fp32_path, preprocessed_path, skip_symbolic_shape=True)
    quantize_static(
        preprocessed_path,
        int8_path,
        Inputs(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # 7-bit weights, as AetherNet's cpu profile: full-range ones saturate the int16 pair sums
        # of ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI (SPAN-28 lost 6-11 dB there).
        reduce_range=True,
    )


class ExportableModule(nn.Module):
    """Any image-to-image network, with the two attributes that aether_arch.onnx_model_proto
    reads from an AetherNet (``qat``, ``in_channels``), so that every model in a comparison
    goes through the same exporter, opset and graph clean-up."""

    qat = False

    def __init__(self, model: nn.Module, in_channels: int = 3) -> None:
        super().__init__()
        self.model = model
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the exporter's dynamic shapes name x
        return self.model(x)


def onnx_bytes(model: nn.Module, in_channels: int = 3) -> bytes:
    """``model`` as a serialized ONNX model (AetherNet's exporter, opset 17, dynamic H/W)."""
    exportable = model if isinstance(model, AetherNet) else ExportableModule(model, in_channels)
    return onnx_model_proto(exportable, opset=17).SerializeToString()


def static_int8_bytes(fp32_model: bytes, calibration_inputs: Sequence[np.ndarray] | None = None) -> bytes:
    """quantize_int8 for serialized models."""
    with tempfile.TemporaryDirectory(prefix="aether_bench_") as workdir:
        fp32_path = os.path.join(workdir, "fp32.onnx")
        int8_path = os.path.join(workdir, "int8.onnx")
        Path(fp32_path).write_bytes(fp32_model)
        quantize_int8(fp32_path, int8_path, workdir, calibration_inputs)
        return Path(int8_path).read_bytes()
