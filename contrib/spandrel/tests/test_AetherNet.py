from spandrel.architectures.AetherNet import AetherNet, AetherNetArch

from .util import (
    ModelFile,
    TestImage,
    assert_image_inference,
    assert_loads_correctly,
    assert_size_requirements,
    disallowed_props,
    skip_if_unchanged,
)

skip_if_unchanged(__file__)


def test_load():
    assert_loads_correctly(
        AetherNetArch(),
        # aether_tiny / small / medium / large
        lambda: AetherNet(),
        lambda: AetherNet(dim=64),
        lambda: AetherNet(dim=96, num_blocks=6, large_kernel=7),
        lambda: AetherNet(dim=128, num_blocks=13, large_kernel=7),
        lambda: AetherNet(scale=1),
        lambda: AetherNet(scale=2),
        lambda: AetherNet(scale=3),
        lambda: AetherNet(scale=8),
        lambda: AetherNet(in_channels=1, out_channels=1),
        lambda: AetherNet(in_channels=4, out_channels=4),
        lambda: AetherNet(in_channels=1, out_channels=3),
        lambda: AetherNet(num_blocks=1),
        lambda: AetherNet(large_kernel=3),
        lambda: AetherNet(large_kernel=9),
        # deploy form, quantization-aware form (INT8 release files load into it)
        lambda: AetherNet(fused=True),
        lambda: AetherNet(scale=2, dim=64, num_blocks=4, large_kernel=7, fused=True),
        lambda: AetherNet(qat=True),
        lambda: AetherNet(scale=2, qat=True),
        lambda: AetherNet(qat=True, int8_profile="tensorrt"),
    )


def test_size_requirements():
    file = ModelFile.from_url(
        "https://github.com/OpenModelDB/model-hub/releases/download/aethernet/2x_AetherNet_tiny_sample.pth"
    )
    assert_size_requirements(file.load_model())


def test_AetherNet_tiny_x2_sample(snapshot):
    file = ModelFile.from_url(
        "https://github.com/OpenModelDB/model-hub/releases/download/aethernet/2x_AetherNet_tiny_sample.pth"
    )
    model = file.load_model()
    assert model == snapshot(exclude=disallowed_props)
    assert isinstance(model.model, AetherNet)
    assert_image_inference(
        file,
        model,
        [TestImage.SR_16, TestImage.SR_32, TestImage.SR_64],
    )
