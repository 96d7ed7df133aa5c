"""Fusion layers of two modalities (DESIGN 3.1): bilinear and bilinear-gated."""

import torch

from mmfast.ops.bilinear_fusion import GATES, bilinear_fusion


class Bilinear(torch.nn.Bilinear):
    """``torch.nn.Bilinear`` computed by ``mmfast.ops.bilinear_fusion``.

    Same constructor, parameters (``weight`` [out, in1, in2], ``bias`` [out]), initialization and
    state dict as ``torch.nn.Bilinear``, so checkpoints load both ways; inputs may have any
    leading dimensions, which must agree between the two inputs.
    """

    gate = "none"

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        if input1.shape[:-1] != input2.shape[:-1]:
            raise ValueError(
                f"{type(self).__name__}: input1 and input2 must have the same leading "
                f"dimensions, got shapes {tuple(input1.shape)} and {tuple(input2.shape)}"
            )
        leading = input1.shape[:-1]
        out = bilinear_fusion(
            input1.reshape(-1, input1.shape[-1]),
            input2.reshape(-1, input2.shape[-1]),
            self.weight,
            self.bias,
            self.gate,
        )
        return out.reshape(*leading, self.out_features)


class BilinearFusion(Bilinear):
    """Kiela's bilinear (``gate="none"``) and bilinear-gated fusion: ``W(g(u) (x) g'(v)) + b``
    with a sigmoid on the first (``gate="first"``) or the second (``"second"``) input, applied
    inside the kernel. Parameters as ``torch.nn.Bilinear``."""

    def __init__(
        self,
        in1_features: int,
        in2_features: int,
        out_features: int,
        bias: bool = True,
        gate: str = "none",
        device=None,
        dtype=None,
    ) -> None:
        if gate not in GATES:
            raise ValueError(f"BilinearFusion: gate must be one of {GATES}, got {gate!r}")
        super().__init__(in1_features, in2_features, out_features, bias, device, dtype)
        self.gate = gate

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gate={self.gate!r}"
