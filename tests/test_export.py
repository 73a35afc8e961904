"""ONNX export of the fused model: contract (names, dynamic axes, shape inference) and numerics."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from aether_arch import aether_tiny, export_onnx, onnx_model_proto
from conftest import OnnxModelInfo, chainner_onnx_info, train_steps


@pytest.fixture(scope="module")
def fused_x3():
    model = aether_tiny(scale=3)
    train_steps(model)
    return model.fuse().eval()


def test_export_at_x3_is_read_by_chainner_and_matches_pytorch(tmp_path, fused_x3):
    """export_onnx itself (the release tests check the contract of every artifact at x2): x3
    as chainner infers it, the metadata, an odd-sized batch against PyTorch, no temp files."""
    path = tmp_path / "model.onnx"
    export_onnx(fused_x3, path, metadata={"precision": "fp32"})
    proto = onnx.load(path)
    assert proto.opset_import[0].version == 17
    assert chainner_onnx_info(proto) == OnnxModelInfo(channels=3, scale=3, fp16=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["architecture"] == "AetherNet" and meta["precision"] == "fp32"
    assert json.loads(meta["config"])["scale"] == 3 and meta["fused"] == "true"
    assert not list(tmp_path.glob("*.tmp-*"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(4, 3, 7, 13)
    with torch.no_grad():
        expected = fused_x3(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("opset", (14, 18))
def test_other_opsets_and_every_conv_has_its_own_initializers(opset):
    """A fresh model has identical all-zero biases that exporters would share via Identity
    nodes; ONNX Runtime's quantizer cannot fuse such convs into integer kernels."""
    proto = onnx_model_proto(aether_tiny(scale=2).fuse(), opset=opset)
    assert proto.opset_import[0].version == opset
    initializers = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        assert node.op_type != "Identity"
        if node.op_type == "Conv":
            assert all(name in initializers for name in node.input[1:])


def test_unsupported_opset_is_explained():
    with pytest.raises(ValueError, match="opset 12 is not supported; use 14..18"):
        onnx_model_proto(aether_tiny(scale=2).fuse(), opset=12)
