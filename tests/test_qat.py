"""Quantization-aware training: the simulation is real INT8, and the exported models match it."""

import copy
import warnings

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import aether_arch
from aether_arch import (
    ActQuant,
    AetherNet,
    QuantConv2d,
    QuantPoint,
    aether_tiny,
    calibrate_int8,
    detect_config,
    int8_state_dict,
    is_calibrated,
    load_model,
    onnx_model_proto,
    prepare_qat,
    read_checkpoint,
    save_checkpoint,
)
from conftest import SAMPLES, on_the_old_grid, train_steps

ZOO_X2 = SAMPLES.parent / "models" / "aether_tiny_x2.pth"  # the zoo model: 7-bit cpu weights


def _sr_batch(n=2, size=16, scale=2):
    """Smooth random images and their nearest-upsampled targets plus detail: an SR-like task
    that keeps activations in a realistic range."""
    low = torch.rand(n, 3, size // 4, size // 4)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    target = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return x, target.clamp(0, 1)


def _qat_model(profile="cpu", steps=4, scale=2):
    """A float model trained briefly on an SR-like task, then QAT-fine-tuned briefly (ranges
    and scales learned)."""
    torch.manual_seed(3)
    model = aether_tiny(scale=scale, num_blocks=3)
    for qat_phase, n_steps, lr in ((False, 30, 2e-3), (True, steps, 1e-4)):
        if qat_phase:
            with torch.no_grad():  # Adam's first steps leave the weights near a lattice of its lr,
                # where w / scale falls on exact .5 ties that x / s and x * (1 / s) round apart
                for parameter in model.parameters():
                    parameter.add_(torch.randn_like(parameter) * 1e-5)
            prepare_qat(model, int8_profile=profile)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(n_steps):
            x, target = _sr_batch(scale=scale)
            loss = (model(x) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def qat_model():
    return _qat_model()


@pytest.fixture(scope="module")
def qat_proto(qat_model):
    """The Q/DQ export of qat_model (exported once: the exporter takes seconds)."""
    return onnx_model_proto(qat_model)


def _manual_fake_quant(x, scale, zero_point, qmin, qmax):
    """ONNX QuantizeLinear -> DequantizeLinear, written out: round half to even, saturate."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _reference_int8_model(qat):
    """A FLOAT64 fused AetherNet with the QAT model's weights rounded to int8 by hand, biases
    rounded to the int32 grid (input scale x weight scale) and hand-written fake quantization
    hooked onto the same quantization points."""
    config = {k: v for k, v in detect_config(qat.state_dict()).items() if k not in ("qat",)}
    ref = AetherNet(**{**config, "fused": True}).double().eval()
    modules = dict(qat.named_modules())
    input_scales = {id(m): float(m.scale.detach().abs()) for m in modules.values() if isinstance(m, ActQuant)}
    with torch.no_grad():
        for name, module in ref.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                q = modules[name]
                top = {"cpu": 64, "tensorrt": 127}[config["int8_profile"]]  # the profile's weight grid
                s = q.weight.double().abs().amax(dim=(1, 2, 3), keepdim=True) / top
                module.weight.copy_(torch.clamp(torch.round(q.weight.double() / s), -top, top) * s)
                bias_step = input_scales[id(q._input_quant)] * s.flatten()
                module.bias.copy_(torch.round(q.bias.double() / bias_step) * bias_step)
            elif isinstance(module, QuantPoint):
                act = modules[name]
                params = (float(act.scale.detach().abs()), int(act.zero_point), act.qmin, act.qmax)
                module.register_forward_hook(lambda m, i, o, p=params: _manual_fake_quant(o, *p))
    return ref


def _record_outputs(model, store):
    def hook(name):
        def record(module, inputs, output):
            store.setdefault(name, output.double())  # first call: the unsliced tensor

        return record

    for name, module in model.named_modules():
        if isinstance(module, (ActQuant, QuantPoint)):
            module.register_forward_hook(hook(name))


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_qat_forward_equals_reference_int8_simulation(qat_model, dtype):
    ref = _reference_int8_model(qat_model)
    qat_model = copy.deepcopy(qat_model).to(dtype)
    got, expected = {}, {}
    _record_outputs(qat_model, got)
    _record_outputs(ref, expected)
    x, _ = _sr_batch(n=2, size=20)
    with torch.no_grad():
        out, ref_out = qat_model.forward_unclamped(x.to(dtype)), ref.forward_unclamped(x.double())
    assert got.keys() == expected.keys() and len(got) == 3 * 3 + 7
    for name in got:
        step = float(dict(qat_model.named_modules())[name].scale.detach())
        diff = (got[name] - expected[name]).abs() / step
        if dtype == torch.float64:  # the same arithmetic: the same INT8 grid value everywhere
            assert diff.max() < 1e-6, name
            continue
        # float32 differs from it only at rounding ties: a conv's exact output is a whole multiple
        # of s_in * s_w, so where s_in * s_w / s_out is near a simple fraction (upsample_q's fine
        # grid) ties recur, and one upstream moves it by 2. How many depends on the CPU's float32
        # summation order: 0.59% of upsample_q on a 2-thread Intel Xeon, under 0.5% on AMD EPYC.
        assert diff.max() <= 2.0 + 1e-4 and (diff > 0.5).float().mean() < 1e-2, name
    assert (out.double() - ref_out).abs().mean() < 0.1 * float(qat_model.feat_q.scale.detach())


def test_training_and_eval_quantization_agree(qat_model):
    model = copy.deepcopy(qat_model)
    x, _ = _sr_batch()
    with torch.no_grad():
        evaluated = model.forward_unclamped(x)
        model.train()  # the fused QAT model has no BatchNorm: train mode changes only quantizers
        trained = model.forward_unclamped(x)
    torch.testing.assert_close(trained, evaluated, atol=1e-6, rtol=0)


def test_quantizers_cover_every_conv_and_scales_are_sane(qat_model):
    assert all(type(m) is not torch.nn.Conv2d for m in qat_model.modules())
    assert not any(type(m) is QuantPoint for m in qat_model.modules())
    for m in qat_model.modules():
        if isinstance(m, ActQuant):
            assert bool(m.initialized) and torch.isfinite(m.scale) and m.scale > 0
            # float state (EMA copies carry it) holding a uint8 zero-point
            assert m.zero_point.dtype == torch.float32 and m.qmin == 0
            assert 0 <= m.zero_point <= 255 and m.zero_point == m.zero_point.round()
        if isinstance(m, QuantConv2d):
            assert torch.isfinite(m.weight_scale).all() and (m.weight_scale > 0).all()
            assert m.weight_qmax == aether_arch.CPU_WEIGHT_QMAX
            assert m.int8_weight().abs().max() == m.weight_qmax  # max |w| maps to the top of the grid


def _session(proto, optimize=True):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_qdq_onnx_carries_the_qat_scales_and_matches_pytorch(qat_model, qat_proto):
    proto = qat_proto
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    scalar_scales = {float(v) for v in initializers.values() if v.dtype == np.float32 and v.ndim == 0}
    for m in qat_model.modules():
        if isinstance(m, ActQuant):
            assert float(np.float32(m.scale.detach().abs())) in scalar_scales
    int8_weights = [v for v in initializers.values() if v.dtype == np.int8 and v.ndim == 4]
    convs = [m for m in qat_model.modules() if isinstance(m, QuantConv2d)]
    assert len(int8_weights) == len(convs)

    x, _ = _sr_batch(n=1, size=24)
    with torch.no_grad():
        expected = qat_model(x).numpy()
    step = float(qat_model.feat_q.scale.detach())
    exact = _session(proto, optimize=False).run(None, {"input": x.numpy()})[0]
    assert np.abs(exact - expected).max() <= step * 1.001  # Q/DQ semantics: within one step
    integer = _session(proto).run(None, {"input": x.numpy()})[0]  # ORT integer kernels
    assert np.abs(integer - expected).max() <= 2 * step


def test_onnx_runtime_runs_integer_kernels_to_the_output(tmp_path, qat_model, qat_proto):
    """ONNX Runtime's optimized graph (the default level, as users run it): every conv an
    integer kernel (the output convs too), the output's add integer, the pixel shuffle's
    transposes moving uint8, one QuantizeLinear at the input and one DequantizeLinear at the end."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # ORT warns that an ALL-level graph is machine-specific
    ort.InferenceSession(qat_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    # The nodes that carry pixels: reached from the input, not through a Shape (shape arithmetic).
    on_data_path, frontier = [], {graph.input[0].name}
    for node in graph.node:  # the optimized graph is topologically sorted
        if node.op_type != "Shape" and frontier.intersection(node.input):
            on_data_path.append(node)
            frontier.update(node.output)
    ops = [n.op_type for n in on_data_path]
    n_convs = sum(isinstance(m, QuantConv2d) for m in qat_model.modules())
    assert ops.count("QLinearConv") == n_convs
    assert set(ops) == {"QuantizeLinear", "QLinearConv", "QLinearAdd", "Transpose", "Reshape", "DequantizeLinear"}
    assert ops[0] == "QuantizeLinear" and ops[-1] == "DequantizeLinear" and ops.count("DequantizeLinear") == 1
    assert ops.count("QuantizeLinear") == 1 and on_data_path[-1].output[0] == graph.output[0].name
    last_add = max(i for i, op in enumerate(ops) if op == "QLinearAdd")
    assert set(ops[last_add + 1 : -1]) == {"Transpose", "Reshape"}  # the shuffle moves the add's uint8


@pytest.mark.parametrize("form", ("training", "fused"))
def test_float_checkpoint_loads_strictly_into_qat_model(form):
    float_model = aether_tiny(scale=2, num_blocks=2)
    train_steps(float_model)
    if form == "fused":
        float_model.fuse()
    qat = aether_tiny(scale=2, num_blocks=2, qat=True)
    qat.load_state_dict(float_model.state_dict())  # the framework default: strict=True
    fused = copy.deepcopy(float_model).fuse()
    for name, p in fused.named_parameters():
        torch.testing.assert_close(qat.get_parameter(name), p, rtol=0, atol=1e-6)
    assert not is_calibrated(qat)


@pytest.mark.parametrize("profile", ("cpu", "tensorrt"))
def test_shortcut_stays_exact_nearest_upsampling_through_float_and_qat_training(profile):
    model = aether_tiny(scale=2, num_blocks=1)
    initial = copy.deepcopy(model.skip.state_dict())
    train_steps(model)
    prepare_qat(model, int8_profile=profile)
    train_steps(model)
    assert not [name for name, _ in model.named_parameters() if name.startswith("skip.")]
    x = torch.rand(1, 3, 6, 6)
    nearest = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(model.shuffle(model.skip._conv_forward(x, model.skip.grid_weight(), None)), nearest)
    torch.testing.assert_close(model.skip.state_dict()["weight"], initial["weight"], rtol=0, atol=0)
    assert not model.skip.bias.any() and model.has_exact_shortcut()


def test_a_trained_shortcut_would_leave_its_int8_grid():
    """The neighbour can fail: a shortcut with a trainable weight drifts off nearest upsampling,
    and its per-sub-pixel gains are no longer on the 7-bit grid's exact 64."""
    model = aether_tiny(scale=2, num_blocks=1)
    model.skip.weight = torch.nn.Parameter(model.skip.weight.clone())
    train_steps(model)
    prepare_qat(model)
    assert not model.has_exact_shortcut()


def test_checkpoints_with_a_trained_shortcut_keep_it():
    """Files from before the shortcut was fixed load with their own shortcut: same output."""
    float_model = aether_tiny(scale=2, num_blocks=2)
    state_dict = float_model.state_dict()
    state_dict["skip.weight"] = state_dict["skip.weight"] * 0.99
    loaded = load_model(state_dict)
    torch.testing.assert_close(loaded.skip.weight, state_dict["skip.weight"], rtol=0, atol=0)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), (0.99 * torch.nn.functional.interpolate(x, scale_factor=2)).clamp(0, 1))


def test_partial_qat_state_dict_is_still_strict(qat_model):
    state_dict = qat_model.state_dict()
    del state_dict["head_q.scale"]
    with pytest.raises(RuntimeError, match="head_q.scale"):
        aether_tiny(scale=2, num_blocks=3, qat=True).load_state_dict(state_dict)


@pytest.mark.parametrize("suffix", (".pth", ".safetensors"))
def test_qat_checkpoint_round_trip(tmp_path, qat_model, suffix):
    path = tmp_path / f"qat{suffix}"
    save_checkpoint(qat_model, path)
    loaded = load_model(path)
    assert loaded.qat and is_calibrated(loaded)
    state_dict, meta = read_checkpoint(path)
    assert detect_config(state_dict)["qat"] and meta["qat"] and meta["int8_profile"] == "cpu"
    x, _ = _sr_batch()
    with torch.no_grad():
        assert torch.equal(loaded(x), qat_model(x))


def test_int8_pth_is_int8_and_matches_onnx(tmp_path, qat_model):
    path = tmp_path / "model_int8.pth"
    save_checkpoint(qat_model, path, int8_weights=True)
    raw = torch.load(path, weights_only=True)["params"]
    convs = [n for n, m in qat_model.named_modules() if isinstance(m, QuantConv2d)]
    assert all(raw[f"{n}.weight"].dtype == torch.int8 for n in convs)
    loaded = load_model(path)
    assert loaded.int8_backend == "onednn" and qat_model.int8_backend == "simulation"  # an INT8 file: oneDNN
    plain = AetherNet(**qat_model.config, qat=True)
    plain.load_state_dict(raw)  # the network's own load hook picks the backend, however it is loaded
    assert plain.int8_backend == "onednn"
    x, _ = _sr_batch(n=1, size=24)
    with torch.no_grad():
        from_pth = loaded(x)
        loaded.int8_backend = qat_model.int8_backend = "reference"  # the integer-exact path
        assert torch.equal(loaded(x), qat_model(x))
        qat_model.int8_backend = "simulation"
    from_onnx = _session(onnx_model_proto(loaded)).run(None, {"input": x.numpy()})[0]
    assert np.abs(from_onnx - from_pth.numpy()).max() <= 1 / 255 + 1e-6


def _val_images():
    images = []
    for path in sorted((SAMPLES / "val").glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
        images.append(torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255)[None])
    return images


@pytest.mark.skipif(not aether_arch.onednn_int8_available(), reason="this torch has no oneDNN int8 kernels")
def test_int8_release_pth_runs_onednn_kernels_and_matches_onnx_on_real_images(monkeypatch):
    """The zoo model's INT8 forms (made as the release makes them) on whole photos: oneDNN equals
    the integer reference on every CPU, VNNI or not. An INT8 file on the old full int8 grid, which
    saturates without VNNI, runs the simulation instead."""
    qat = load_model(ZOO_X2)
    model = aether_arch.build_from_state_dict(aether_arch.int8_state_dict(qat))
    session = _session(onnx_model_proto(qat))
    calls = []
    original = aether_arch.OneDNNInt8.__call__
    monkeypatch.setattr(aether_arch.OneDNNInt8, "__call__", lambda self, x: calls.append(1) or original(self, x))
    for image in _val_images():
        image = image[..., :160, :160]
        with torch.inference_mode():
            fast = model(image).numpy()
            model.int8_backend = "reference"
            reference = model(image).numpy()
            model.int8_backend = "onednn"
        expected = session.run(None, {"input": image.numpy()})[0]
        assert fast.shape == expected.shape
        assert np.array_equal(fast, reference)  # QLinearConv's requantization, exactly
        assert np.abs(fast - expected).max() <= 1 / 255 + 1e-6  # both land on the 8-bit grid
    assert len(calls) == len(_val_images())  # the fast path ran, once per image
    legacy = aether_arch.build_from_state_dict(aether_arch.int8_state_dict(on_the_old_grid(qat)))
    with torch.inference_mode():
        legacy(_val_images()[0][..., :32, :32])
    assert len(calls) == len(_val_images()) and legacy._int8_engine is None


@pytest.mark.skipif(not aether_arch.onednn_int8_available(), reason="this torch has no oneDNN int8 kernels")
@pytest.mark.parametrize(
    "preset, kwargs",
    [("aether_tiny", {"scale": 1, "in_channels": 1, "out_channels": 1}), ("aether_large", {"scale": 4})],
)
def test_onednn_int8_equals_the_integer_reference_at_the_grid_corners(preset, kwargs):
    """Deep models too: 13 blocks compound any rounding that differs (oneDNN's own
    requantization put a third of this large model's output up to 6/255 off)."""
    qat = prepare_qat(aether_arch.PRESET_FACTORIES[preset](**kwargs))
    with torch.no_grad():  # trained-like weights: a fresh model is nearly the identity
        for parameter in qat.parameters():
            if parameter.dim() == 4:
                parameter.add_(torch.randn_like(parameter) * 0.3 / parameter[0].numel() ** 0.5)
    channels = kwargs.get("in_channels", 3)
    calibrate_int8(qat, [torch.rand(1, channels, 24, 24) for _ in range(2)])
    model = aether_arch.build_from_state_dict(aether_arch.int8_state_dict(qat))
    for size in ((1, 1), (21, 16)):
        x = torch.rand(2, channels, *size)
        with torch.inference_mode():
            fast = model(x)
            assert model._int8_engine is not None  # the oneDNN path ran
            model.int8_backend = "reference"
            reference = model(x)
            model.int8_backend = "onednn"
        assert torch.equal(fast, reference), size


def test_int8_kernels_step_aside_where_they_cannot_run(monkeypatch):
    model = aether_arch.build_from_state_dict(aether_arch.int8_state_dict(load_model(ZOO_X2)))  # an INT8 file
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        model.int8_backend = "simulation"
        simulated = model(x)
        model.int8_backend = "onednn"
        monkeypatch.setattr(aether_arch, "onednn_int8_available", lambda: False)  # e.g. an ARM build
        assert torch.equal(model(x), simulated) and model._int8_engine is None
        monkeypatch.undo()
        model(x)
        assert model._int8_engine is not None
        copied = copy.deepcopy(model)  # packed weights are not copied; the copy builds its own
        assert copied._int8_engine is None
        torch.testing.assert_close(copied(x), model(x), atol=0, rtol=0)
        model.train()
        assert model._int8_engine is None  # training may change the weights: rebuilt on next use
        model.eval()
    with torch.enable_grad():  # an input that wants gradients: the float simulation, no engine
        model(x.clone().requires_grad_()).sum().backward()
    assert model._int8_engine is None


def _worst_int16_pair_sum(proto):
    """The largest |a1 * w1 + a2 * w2| over uint8 activations a and any two int8 weights of
    one output channel: what vpmaddubsw (x86 without VNNI) must hold in int16."""
    return max(
        255 * 2 * int(np.abs(w.reshape(w.shape[0], -1).astype(np.int64)).max())
        for w in (onnx.numpy_helper.to_array(i) for i in proto.graph.initializer)
        if w.dtype == np.int8 and w.ndim == 4
    )


def test_cpu_int8_weights_add_up_in_int16_without_saturating(qat_proto):
    """ONNX Runtime's and oneDNN's uint8 x int8 kernels on AVX2 CPUs add two products in int16
    (saturating at 32767); the cpu profile's [-64, 64] grid keeps every pair exact. The
    tensorrt neighbour's full [-127, 127] grid does not, so the bound can fail."""
    assert _worst_int16_pair_sum(qat_proto) <= 32767
    assert _worst_int16_pair_sum(onnx_model_proto(_qat_model(profile="tensorrt", steps=1))) > 32767


def test_a_file_made_on_the_old_full_int8_grid_keeps_it(qat_model):
    """QAT files from before the cpu grid became [-64, 64] read their 127 back from their
    weights and scales and run as they were trained; new and float files get the 7-bit grid."""
    old = on_the_old_grid(qat_model)
    loaded = AetherNet(**detect_config(old.state_dict()))
    loaded.load_state_dict(old.state_dict(), strict=True)
    loaded.eval()
    assert {m.weight_qmax for m in loaded.modules() if isinstance(m, QuantConv2d)} == {127}
    x, _ = _sr_batch(n=1, size=24)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))
    for source in (qat_model.state_dict(), aether_arch.float_copy(qat_model).state_dict()):
        fresh = prepare_qat(aether_tiny(scale=2, num_blocks=3))
        fresh.load_state_dict(source, strict=True)
        convs = [m for m in fresh.modules() if isinstance(m, QuantConv2d)]
        assert {m.weight_qmax for m in convs} == {64}
        assert max(int(m.int8_weight().abs().max()) for m in convs) == 64


def test_tensorrt_profile_is_symmetric():
    model = _qat_model(profile="tensorrt", steps=1)
    zero_points = [m.zero_point for m in model.modules() if isinstance(m, ActQuant)]
    assert all(int(z) == 0 for z in zero_points)
    assert all(m.qmin == -128 for m in model.modules() if isinstance(m, ActQuant))
    assert detect_config(model.state_dict())["int8_profile"] == "tensorrt"
    proto = onnx_model_proto(model)
    initializers = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = onnx.numpy_helper.to_array(initializers[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any()


def test_uncalibrated_model_is_not_exported():
    with pytest.raises(ValueError, match="never set: fine-tune it with QAT or run calibrate_int8"):
        onnx_model_proto(aether_tiny(scale=2, qat=True))


def test_post_training_calibration_sets_every_range():
    model = aether_tiny(scale=2, num_blocks=2)
    train_steps(model)
    calibrate_int8(model, [_sr_batch()[0] for _ in range(3)])
    assert model.qat and is_calibrated(model) and not model.training


def _quantized_shortcut_is_exact(model):
    """Whether the shortcut's quantizer carries the quantized input's pixels through unchanged
    (up to float rounding, far below a level)."""
    x = torch.arange(256.0).reshape(1, 1, 16, 16).expand(1, 3, 16, 16) / 255  # every 8-bit pixel
    with torch.no_grad():
        pixels = model.input_q(x)
        shortcut = model.shuffle(model.skip_q(model.skip(pixels)))
    nearest = torch.nn.functional.interpolate(pixels, scale_factor=model.scale, mode="nearest")
    return torch.allclose(shortcut, nearest, rtol=0, atol=1e-6)


def test_calibration_gives_the_shortcut_the_images_range_not_the_brightest_pixel_seen():
    """Given the range its calibration images reached, the shortcut clipped brighter pixels."""
    model = aether_tiny(scale=2, num_blocks=2)
    train_steps(model)
    dark, bright = copy.deepcopy(model), model
    calibrate_int8(dark, [_sr_batch()[0] * 0.5 for _ in range(3)])
    calibrate_int8(bright, [_sr_batch()[0] for _ in range(3)])
    assert dark.head_q.scale < bright.head_q.scale  # the other ranges do come from the images
    assert _quantized_shortcut_is_exact(dark) and _quantized_shortcut_is_exact(bright)


def test_no_deprecation_warnings_on_the_qat_and_export_path(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = _qat_model(steps=1)
        save_checkpoint(model, tmp_path / "q.pth", int8_weights=True)
        loaded = load_model(tmp_path / "q.pth")
        onnx_model_proto(loaded)
        calibrate_int8(aether_tiny(scale=2, num_blocks=1), [torch.rand(1, 3, 8, 8)])


def test_saving_a_training_qat_model_as_int8_keeps_it_training():
    model = prepare_qat(AetherNet(scale=2, dim=16, num_blocks=2)).train()
    x, target = _sr_batch()
    model(x)  # its ranges are set from the first batch
    int8_state_dict(model)  # as save_checkpoint(int8_weights=True) during a run
    assert model.training  # a run that saves a checkpoint goes on learning
    (model(x) - target).abs().mean().backward()
    assert model.upsample.weight.grad.abs().sum() > 0  # (the body starts at zero: no gradient reaches it yet)
