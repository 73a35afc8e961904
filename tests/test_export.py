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


def test_onnx_contract_and_metadata(tmp_path, fused_x3):
    path = tmp_path / "model.onnx"
    export_onnx(fused_x3, path, metadata={"precision": "fp32"})
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(d.dim_param for d in (dims[0], dims[2], dims[3]))
    assert proto.opset_import[0].version == 17
    assert chainner_onnx_info(proto) == OnnxModelInfo(channels=3, scale=3, fp16=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["architecture"] == "AetherNet" and meta["precision"] == "fp32"
    assert json.loads(meta["config"])["scale"] == 3 and meta["fused"] == "true"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_onnx_matches_pytorch_on_odd_sizes_and_batches(fused_x3):
    session = ort.InferenceSession(
        onnx_model_proto(fused_x3).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for shape in ((1, 3, 1, 1), (4, 3, 7, 13), (1, 3, 1, 40)):
        x = torch.rand(shape)
        with torch.no_grad():
            expected = fused_x3(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_every_conv_has_its_own_initializers():
    """Fresh models have identical all-zero biases that exporters would share via Identity
    nodes; ONNX Runtime's quantizer cannot fuse such convs into integer kernels."""
    proto = onnx_model_proto(aether_tiny(scale=2).fuse())
    initializers = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        assert node.op_type != "Identity"
        if node.op_type == "Conv":
            assert all(name in initializers for name in node.input[1:])


@pytest.mark.parametrize("opset", (14, 18))
def test_other_opsets(opset):
    assert onnx_model_proto(aether_tiny(scale=2).fuse(), opset=opset).opset_import[0].version == opset


def test_unsupported_opset_is_explained():
    with pytest.raises(ValueError, match="opset 12 is not supported; use 14..18"):
        onnx_model_proto(aether_tiny(scale=2).fuse(), opset=12)
