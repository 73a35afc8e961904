from __future__ import annotations

from typing_extensions import override

from spandrel.util import KeyCondition, get_scale_and_output_channels, get_seq_len

from ...__helpers.model_descriptor import (
    Architecture,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    StateDict,
)
from .__arch.AetherNet import AetherNet


def _form_key(conv: str, fused: bool) -> str:
    # a fused conv has its own weight; the training form's largest branch holds the full kernel
    return f"{conv}.weight" if fused else f"{conv}.branches.0.conv.weight"


class AetherNetArch(Architecture[AetherNet]):
    def __init__(self) -> None:
        super().__init__(
            id="AetherNet",
            detect=KeyCondition.has_all(
                "head.weight",
                "upsample.weight",
                "skip.weight",
                KeyCondition.has_any(
                    "blocks.0.conv2.weight", "blocks.0.conv2.branches.0.conv.weight"
                ),
                KeyCondition.has_any(
                    "body_tail.weight", "body_tail.branches.0.conv.weight"
                ),
            ),
        )

    @override
    def load(self, state_dict: StateDict) -> ImageModelDescriptor[AetherNet]:
        scale: int = 4
        in_channels: int = 3
        out_channels: int = 3
        dim: int = 48
        num_blocks: int = 3
        large_kernel: int = 5
        fused = False
        qat = False
        int8_profile = "cpu"

        in_channels = state_dict["head.weight"].shape[1]
        dim = state_dict["head.weight"].shape[0]
        # the file's form: the network is returned in it, so hyperparameters round-trip;
        # in eval mode a training-form network runs its fused kernels anyway
        fused = "body_tail.weight" in state_dict
        num_blocks = get_seq_len(state_dict, "blocks")
        # block 0 holds the large kernel (blocks alternate large and 3x3)
        large_kernel = state_dict[_form_key("blocks.0.conv2", fused)].shape[-1]
        scale, out_channels = get_scale_and_output_channels(
            state_dict["upsample.weight"].shape[0], in_channels
        )
        # quantization-aware (and INT8 release) files carry the quantizer state
        qat = "input_q.zero_point" in state_dict
        # the cpu profile's output head is integer; tensorrt's stays float
        if qat and "output_q.scale" not in state_dict:
            int8_profile = "tensorrt"

        model = AetherNet(
            scale=scale,
            in_channels=in_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            large_kernel=large_kernel,
            fused=fused,
            qat=qat,
            int8_profile=int8_profile,
        )

        tags = [f"{dim}nf", f"{num_blocks}nb"]
        if qat:
            tags.append("int8")

        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration" if scale == 1 else "SR",
            tags=tags,
            supports_half=True,
            supports_bfloat16=True,
            scale=scale,
            input_channels=in_channels,
            output_channels=out_channels,
            # fully convolutional with zero padding: any size works, even 1x1
            size_requirements=SizeRequirements(),
            tiling=ModelTiling.SUPPORTED,
        )


__all__ = ["AetherNet", "AetherNetArch"]
