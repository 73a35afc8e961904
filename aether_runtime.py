"""AetherNet's deployable forms and the runtimes that run them.

Making them: the models behind the release files (the fused float32 model; INT8 from QAT or from
post-training calibration) and their ONNX graphs (FP32, FP16 with float16 I/O, Q/DQ INT8).
Running them: every release file in the runtime it is for (PyTorch for .pth, ONNX Runtime for
.onnx), numpy in and numpy out, and the PyTorch device to use. aether_release.py,
aether_upscale.py and aether_bench.py all go through these functions, so that what is validated,
what upscales images and what is benchmarked are one and the same.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxconverter_common import float16 as onnx_float16

from aether_arch import (
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    AetherNet,
    OneDNNInt8,
    calibrate_int8,
    holds_int8_weights,
    is_calibrated,
    load_model,
    onnx_model_proto,
    prepare_qat,
)
from aether_cli import InputError

# Float16 input and output for model_fp16.onnx: chaiNNer (and most ONNX front ends) pick the
# precision they feed from the input's type, so float16 I/O makes them run it in half
# precision end to end, with no Cast nodes at the graph edges. model_fp32.onnx is the one
# with float32 I/O.
FP16_IO_DTYPE = "float16"
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"
# PTQ calibration feeds low-resolution images like the validation does; larger ones are
# centre-cropped to this side because calibration runs the INT8 simulation. Min/max ranges do
# not need whole photos: on samples/val, 128 px crops gave the same INT8 fidelity as whole
# images (44.5 dB) in 30% less time.
CALIBRATION_MAX_SIDE = 128


# ---------------------------------------------------------------------------------------
# Making the deployable forms
# ---------------------------------------------------------------------------------------


def has_qat_ranges_for(model: AetherNet, profile: str) -> bool:
    """Whether ``model`` was fine-tuned with QAT (its activation ranges are set) for ``profile``."""
    return model.qat and is_calibrated(model) and model.int8_profile == profile


def int8_model(
    source: AetherNet,
    fp32_model: AetherNet,
    *,
    profile: str,
    calibration: Iterable[torch.Tensor],
    device: torch.device | None = None,
) -> tuple[AetherNet, str]:
    """(calibrated QAT model for ``profile`` on the CPU, "qat" | "ptq"): ``source`` itself when it
    was fine-tuned with QAT for that profile, else post-training calibration (PTQ) of
    ``fp32_model`` (its fused float form) on ``calibration``, float NCHW batches in [0, 1]."""
    if has_qat_ranges_for(source, profile):
        return source, "qat"
    model = prepare_qat(copy.deepcopy(fp32_model), int8_profile=profile).to(device or "cpu")
    calibrate_int8(model, calibration)
    return model.cpu().eval(), "ptq"


def calibration_batches(lrs: Iterable[torch.Tensor], max_side: int = CALIBRATION_MAX_SIDE) -> list[torch.Tensor]:
    """PTQ calibration data: low-resolution images (1, C, h, w), each centre-cropped to at most
    ``max_side`` pixels a side."""
    batches = []
    for lr in lrs:
        h, w = lr.shape[-2:]
        top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        batches.append(lr[..., top : top + max_side, left : left + max_side])
    return batches


def fp16_onnx(fp32_proto: onnx.ModelProto) -> onnx.ModelProto:
    """The FP16 graph of an FP32 one: float16 weights and compute, FP16_IO_DTYPE input/output."""
    proto = onnx.ModelProto()
    proto.CopyFrom(fp32_proto)  # the converter edits in place; the FP32 proto is kept
    with warnings.catch_warnings():
        # It warns once per weight below float16's range that it rounds to +-1e-7: harmless.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"onnxconverter_common\.")
        proto = onnx_float16.convert_float_to_float16(proto, keep_io_types=FP16_IO_DTYPE != "float16")
    onnx.checker.check_model(proto)
    return proto


def onnx_models(
    fp32_model: AetherNet, int8_model: AetherNet | None = None, *, opset: int = 17, fp16: bool = True
) -> dict[str, onnx.ModelProto]:
    """The ONNX graphs by precision: "fp32" (the fused model), "fp16" (converted from it, when
    ``fp16``) and "int8" (the Q/DQ export of the calibrated QAT model, when given)."""
    protos = {"fp32": onnx_model_proto(fp32_model, opset=opset)}
    if fp16:
        protos["fp16"] = fp16_onnx(protos["fp32"])
    if int8_model is not None:
        protos["int8"] = onnx_model_proto(int8_model, opset=opset)
    return protos


# ---------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------

Upscaler = Callable[[np.ndarray], np.ndarray]  # (N, 3, h, w) float32 -> (N, 3, h*s, w*s) float32


@dataclass
class Runtime:
    """A model file in one runtime; ``open()`` loads it (and may fail, which fails the file)."""

    label: str  # e.g. "ONNX Runtime CPU", "PyTorch cpu float32"
    open: Callable[[], Upscaler]
    note: str = ""


def resolve_device(option: str) -> torch.device:
    """The PyTorch device for --device cpu / cuda / auto (cuda when available)."""
    if option == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: PyTorch sees no CUDA device (use --device cpu or auto)")
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(option)


def pytorch_runtime(checkpoint: Path | Mapping[str, torch.Tensor], precision: str, device: torch.device) -> Runtime:
    """``checkpoint``: a file, or a state dict a caller has already read (anything load_model takes)."""
    # CPU float16 convolutions are emulated (~50x slower than float32), so on CPU the FP16
    # weights run in float32 math: load_model gives float32 tensors holding the float16 values.
    dtype = torch.float16 if precision == "fp16" and device.type == "cuda" else torch.float32
    math_name = str(dtype).removeprefix("torch.")
    loaded = None
    if precision == "int8":  # which path AetherNet.forward takes (see AetherNet.int8_backend)
        int8_file = not isinstance(checkpoint, Mapping) or holds_int8_weights(checkpoint)
        # the loaded model tells (a file on the old full int8 grid runs the simulation); read once
        loaded = load_model(checkpoint)
        kernels = int8_file and device.type == "cpu" and OneDNNInt8.supports(loaded)
        math_name = "int8 oneDNN kernels" if kernels else "int8 simulated"
    explanation = ""
    if precision == "fp16" and dtype == torch.float32:
        explanation = "float16 weights run in float32 math: the CPU has no fast float16 convolutions"

    def open_model() -> Upscaler:
        model = (loaded if loaded is not None else load_model(checkpoint)).to(device=device, dtype=dtype)

        @torch.no_grad()
        def upscale(lr: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(lr).to(device=device, dtype=dtype)).float().cpu().numpy()

        return upscale

    return Runtime(f"PyTorch {device.type} {math_name}", open_model, explanation)


def onnx_providers() -> list[str]:
    """The execution providers this ONNX Runtime has, of those AetherNet is validated on."""
    available = ort.get_available_providers()
    return [p for p in (CPU_PROVIDER, CUDA_PROVIDER) if p in available]


def ort_session(model: str | Path | bytes, *, provider: str = CPU_PROVIDER, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session for a model file or serialized model; ``threads`` 0: one per core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Nothing from ONNX Runtime's own log (its errors come with colour codes): the exceptions
    # it raises carry the same message, and callers report them in one line.
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    # Idle intra-op threads would otherwise busy-wait after each run and steal the cores from
    # whatever runs next (another session timed in alternation, the next tile's PyTorch work).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=[provider])
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"ONNX Runtime did not use {provider} ({session.get_providers()})")
    return session


def onnx_input_dtype(session: ort.InferenceSession) -> type[np.floating]:
    """The type to feed, as the graph declares it (and as chaiNNer feeds it): float16 for the
    FP16 model, float32 otherwise."""
    return np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32


def onnx_runtime(model: str | Path | bytes, provider: str, threads: int) -> Runtime:
    """``model``: an .onnx file or a serialized model."""

    def open_session() -> Upscaler:
        session = ort_session(model, provider=provider, threads=threads)
        input_dtype = onnx_input_dtype(session)

        def upscale(lr: np.ndarray) -> np.ndarray:
            (output,) = session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: lr.astype(input_dtype)})
            return output.astype(np.float32, copy=False)

        return upscale

    return Runtime(f"ONNX Runtime {provider.removesuffix('ExecutionProvider')}", open_session)
