"""AetherNet's NCNN form: making it with pnnx from the FP32 ONNX file, and running it in ncnn.

NCNN models are what upscayl, chaiNNer's NCNN path and the realesrgan-ncnn-vulkan family run:
a text ``.param`` (the graph) and a binary ``.bin`` (the weights) side by side. pnnx converts the
released model_fp32.onnx (the exact graph that is validated in ONNX Runtime) into them; the
``ncnn`` Python package runs them, numpy in and numpy out, like every other runtime in
aether_runtime. Both packages are optional: ``unavailable()`` says why NCNN files cannot be
made here, and nothing imports them until a file is made or run.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from aether_runtime import Runtime, Upscaler

# Blob names of the input and output in the .param file. pnnx writes in0 / out0;
# realesrgan-ncnn-vulkan and upscayl (its fork) run every model with ex.input("data") and
# ex.extract("output") and fail on any other name, so the blobs are renamed.
NCNN_INPUT_NAME = "data"
NCNN_OUTPUT_NAME = "output"
INSTALL_HINT = "pip install pnnx ncnn"
PARAM_MAGIC = "7767517"
# pnnx fixes every dynamic dim it is not shown varying: two input sizes keep height and width
# dynamic, and small ones keep its shape-inference pass (it runs the graph in ONNX Runtime)
# quick: it defaults to 128 and 512 px, seconds for a large model.
PNNX_INPUT_SHAPES = ((1, 3, 16, 16), (1, 3, 24, 20))
PNNX_TIMEOUT_S = 600
# pnnx's log is shown only when a conversion fails, trimmed to its first line that names a
# failure (the cause: later ones are a C++ stack trace and usage hints), else its last lines.
PNNX_FAILURE_LINE = re.compile(r"fail|error|exception|unsupported|not supported", re.IGNORECASE)
PNNX_LOG_TAIL_LINES = 3
PNNX_LOG_MAX_CHARS = 300
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NcnnConversionError(Exception):
    """pnnx could not make the NCNN files; the message is one line, with pnnx's last words."""


def versions() -> dict[str, str | None]:
    """The installed pnnx and ncnn versions (None where missing), for the release report."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for package in ("pnnx", "ncnn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def _pnnx_executable() -> str:
    """The pnnx converter binary shipped in the ``pnnx`` wheel."""
    return importlib.import_module("pnnx").EXEC_PATH


def unavailable() -> str | None:
    """Why NCNN files cannot be made and validated here (one line), or None when they can."""
    for package in ("pnnx", "ncnn"):
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if exc.name != package:  # installed, but something it needs is missing
                return f"{package} does not load here (ModuleNotFoundError: {exc})"
            return f"{package} is not installed ({INSTALL_HINT})"
        except Exception as exc:  # a broken build, or pnnx's own "Unsupported platform for pnnx."
            return f"{package} does not load here ({type(exc).__name__}: {exc})"
    executable = _pnnx_executable()
    if not os.access(executable, os.X_OK):
        return f"the pnnx converter {executable} is missing or not executable ({INSTALL_HINT})"
    return None


def _log_summary(text: str) -> str:
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", text).splitlines() if line.strip()]
    causes = [line for line in lines if PNNX_FAILURE_LINE.search(line)]
    summary = causes[0] if causes else " | ".join(lines[-PNNX_LOG_TAIL_LINES:]) or "no output"
    return summary if len(summary) <= PNNX_LOG_MAX_CHARS else summary[:PNNX_LOG_MAX_CHARS] + "..."


def rename_io_blobs(param_text: str, input_name: str = NCNN_INPUT_NAME, output_name: str = NCNN_OUTPUT_NAME) -> str:
    """The .param text with its one Input blob (and layer) named ``input_name`` and its one
    output blob (made by a layer, used by none) named ``output_name``."""
    lines = param_text.splitlines()
    if len(lines) < 3 or lines[0].strip() != PARAM_MAGIC:
        raise NcnnConversionError("pnnx wrote a .param file without the NCNN magic number")
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        try:
            n_in, n_out = int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            raise NcnnConversionError(f"pnnx wrote a .param file whose line {number} is not a layer") from None
        bottoms, tops = fields[4 : 4 + n_in], fields[4 + n_in : 4 + n_in + n_out]
        if len(bottoms) + len(tops) != n_in + n_out:
            raise NcnnConversionError(f"pnnx wrote a .param file whose line {number} lacks blob names")
        layers.append((fields, bottoms, tops))
    inputs = [tops[0] for fields, _, tops in layers if fields[0] == "Input"]
    consumed = {blob for _, bottoms, _ in layers for blob in bottoms}
    outputs = [blob for _, _, tops in layers for blob in tops if blob not in consumed]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NcnnConversionError(
            f"the NCNN graph has {len(inputs)} input(s) and {len(outputs)} output(s), not 1 and 1"
        )
    every_blob = {blob for _, bottoms, tops in layers for blob in (*bottoms, *tops)}
    renames = {inputs[0]: input_name, outputs[0]: output_name}
    taken = (every_blob - set(renames)) & set(renames.values())
    if taken:
        raise NcnnConversionError(f"the NCNN graph already has a blob named {sorted(taken)[0]!r}")
    written = lines[:2]
    for fields, bottoms, tops in layers:
        n_blobs = len(bottoms) + len(tops)
        blobs = [renames.get(blob, blob) for blob in fields[4 : 4 + n_blobs]]
        name = input_name if fields[0] == "Input" else fields[1]
        # Columns as pnnx aligns them (type and name padded to 24), so the file stays readable.
        written.append(" ".join([f"{fields[0]:<24}", f"{name:<24}", *fields[2:4], *blobs, *fields[4 + n_blobs :]]))
    return "\n".join(written) + "\n"


def convert_onnx(onnx_path: Path, param_path: Path, bin_path: Path, *, fp16: bool, threads: int = 0) -> None:
    """Make ``param_path`` and ``bin_path`` from an ONNX file with pnnx (float16 weights in the
    .bin when ``fp16``: ncnn's fp16 storage). pnnx writes side files (.pnnx.param, .pnnx.bin,
    _pnnx.py, .pnnx.onnx, .pnnxsim.onnx, _ncnn.py) next to its input and prints a long log: it
    runs on a copy of the input in its own temporary folder (beside ``param_path``, so that an
    interrupted release removes it with its staging folder), the log is kept only for the
    error message, and only the two NCNN files leave that folder."""
    shapes = [f"[{','.join(map(str, shape))}]f32" for shape in PNNX_INPUT_SHAPES]
    with tempfile.TemporaryDirectory(prefix=".pnnx-", dir=param_path.parent) as work_name:
        work = Path(work_name)
        # Plain relative names: pnnx reads key=value arguments, and a path holding "," or "="
        # would be split.
        shutil.copyfile(onnx_path, work / "model.onnx")
        command = [
            _pnnx_executable(),
            "model.onnx",
            f"inputshape={shapes[0]}",
            f"inputshape2={shapes[1]}",
            f"fp16={int(fp16)}",
            "device=cpu",
        ]
        environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads > 0 else {})}
        try:
            result = subprocess.run(
                command,
                cwd=work,
                env=environment,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=PNNX_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise NcnnConversionError(f"pnnx did not finish in {PNNX_TIMEOUT_S} s") from None
        except OSError as exc:
            raise NcnnConversionError(f"pnnx does not start ({exc.strerror or exc})") from None
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        if result.returncode != 0 or not param.is_file() or not weights.is_file():
            raise NcnnConversionError(
                f"pnnx exited with code {result.returncode}: {_log_summary(result.stdout + result.stderr)}"
            )
        param_path.write_text(rename_io_blobs(param.read_text(encoding="utf-8")), encoding="utf-8")
        os.replace(weights, bin_path)


def ncnn_runtime(param_path: Path, bin_path: Path, precision: str, threads: int) -> Runtime:
    """The NCNN files in ncnn on the CPU. FP32 runs with ncnn's float16 storage off (on ARM
    CPUs it is on by default and would make FP32 an FP16 run); FP16 runs as
    realesrgan-ncnn-vulkan runs models: float16 storage, float32 arithmetic."""
    fp16 = precision == "fp16"
    note = "float16 weights (ncnn fp16 storage), float32 arithmetic, as realesrgan-ncnn-vulkan runs it"

    def open_net() -> Upscaler:
        import ncnn

        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = threads
        # Idle OpenMP threads would otherwise spin after each run and steal the cores from
        # whatever runs next (as ONNX Runtime's spinning would: see aether_runtime.ort_session).
        net.opt.openmp_blocktime = 0
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = fp16
        net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
        if net.load_param(str(param_path)) != 0:
            raise RuntimeError(f"ncnn cannot read {param_path.name}")
        if net.load_model(str(bin_path)) != 0:
            raise RuntimeError(f"ncnn cannot read {bin_path.name}")

        def upscale(lr: np.ndarray) -> np.ndarray:
            outputs = []
            for image in lr:  # ncnn has no batch dimension: one (C, H, W) image at a time
                # A Mat made from an array points into it: the array must outlive the extraction.
                pixels = np.ascontiguousarray(image, dtype=np.float32)
                with net.create_extractor() as extractor:
                    extractor.input(NCNN_INPUT_NAME, ncnn.Mat(pixels))
                    code, output = extractor.extract(NCNN_OUTPUT_NAME)
                    if code != 0:
                        raise RuntimeError(f"ncnn extract({NCNN_OUTPUT_NAME!r}) returned {code}")
                    outputs.append(np.array(output, dtype=np.float32))  # a copy: the Mat is freed
            return np.stack(outputs)

        return upscale

    return Runtime("ncnn CPU", open_net, note if fp16 else "")
