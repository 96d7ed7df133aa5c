"""CACNet (paper 000, DESIGN 2.4): a two-hidden-layer multimodal classifier whose weights are
grouped into ten subsections, trained by ``mmfast.train.CACNetTrainer`` in two phases."""

import math

import torch
from torch import nn

from mmfast.ops._checks import check_tensor
from mmfast.ops.cacnet import ACTIVATIONS, PARAM_NAMES, cacnet_forward, param_shapes
from mmfast.reference import cacnet as reference


class CACNet(nn.Module):
    """Image features x' [B, image_dim] and text features x'' [B, text_dim] -> C logits.

    Hidden layers 1 and 2 each have ``hidden`` units in two halves: h' (image) and h'' (text),
    g' and g''. The ten weight subsections are parameters named ``w_<from>_<to>`` (xi/xt the
    image/text input, hi/ht the halves of layer 1, gi/gt of layer 2, y the output), laid out
    [in, out]; each half has its own bias (``b_hi``, ``b_ht``, ``b_gi``, ``b_gt``) and the output
    ``b_y``:

    ====================  =======================  ================
    subsection            parameter                kind
    ====================  =======================  ================
    w(x',h'), w(x'',h'')  w_xi_hi, w_xt_ht         passive, layer 1
    w(x',h''), w(x'',h')  w_xi_ht, w_xt_hi         cross-active, 1
    w(h',g'), w(h'',g'')  w_hi_gi, w_ht_gt         passive, layer 2
    w(h',g''), w(h'',g')  w_hi_gt, w_ht_gi         cross-active, 2
    w(g',y), w(g'',y)     w_gi_y, w_gt_y           output
    ====================  =======================  ================

    ``forward`` is the full network (the fused op, or the reference under
    ``mmfast.backend("reference")``); the ``*_logits`` methods give each sub-network's
    virtual output. Probabilities are ``sigmoid(logits)``.
    """

    def __init__(
        self,
        image_dim: int = 300,
        text_dim: int = 300,
        hidden: int = 600,
        num_classes: int = 300,
        activation: str = "relu",
    ):
        super().__init__()
        for name, value in (("image_dim", image_dim), ("text_dim", text_dim),
                            ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CACNet: {name} must be a positive int, got {value!r}")
        if not isinstance(hidden, int) or hidden < 2 or hidden % 2:
            raise ValueError(
                f"CACNet: hidden must be a positive even int (an image and a text half), "
                f"got {hidden!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"CACNet: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.image_dim, self.text_dim, self.hidden = image_dim, text_dim, hidden
        self.num_classes, self.activation = num_classes, activation
        for name, shape in param_shapes(image_dim, text_dim, hidden // 2, num_classes).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialization of the full network's layers: every unit's fan-in is its
        whole layer (image_dim + text_dim, then hidden, then hidden), so the subsections of one
        layer share one scale."""
        fan_in = {"x": self.image_dim + self.text_dim, "h": self.hidden, "g": self.hidden}
        bias_fan_in = {"b_hi": "x", "b_ht": "x", "b_gi": "h", "b_gt": "h", "b_y": "g"}
        with torch.no_grad():
            for name in PARAM_NAMES:
                source = name[2] if name.startswith("w_") else bias_fan_in[name]
                bound = 1.0 / math.sqrt(fan_in[source])
                getattr(self, name).uniform_(-bound, bound)

    def op_params(self) -> list[torch.Tensor]:
        """The 15 parameters in the order the ``mmfast.ops.cacnet`` ops take them."""
        return [getattr(self, name) for name in PARAM_NAMES]

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] of the full network."""
        return cacnet_forward(x_img, x_txt, self.op_params(), self.activation)

    # ---- the sub-networks' virtual outputs: x -> one half of each layer -> logits
    def passive_image_logits(self, x_img: torch.Tensor) -> torch.Tensor:
        """x' -> h' -> g' -> y' through w(x',h'), w(h',g'), w(g',y)."""
        return self._subnetwork("passive_image", "x_img", x_img, self.image_dim)

    def passive_text_logits(self, x_txt: torch.Tensor) -> torch.Tensor:
        """x'' -> h'' -> g'' -> y'' through w(x'',h''), w(h'',g''), w(g'',y)."""
        return self._subnetwork("passive_text", "x_txt", x_txt, self.text_dim)

    def cross_active_image_logits(self, x_img: torch.Tensor) -> torch.Tensor:
        """x' -> h'' -> g' -> y' through w(x',h''), w(h'',g'), w(g',y)."""
        return self._subnetwork("cross_active_image", "x_img", x_img, self.image_dim)

    def cross_active_text_logits(self, x_txt: torch.Tensor) -> torch.Tensor:
        """x'' -> h' -> g'' -> y'' through w(x'',h'), w(h',g''), w(g'',y)."""
        return self._subnetwork("cross_active_text", "x_txt", x_txt, self.text_dim)

    def _subnetwork(self, name: str, arg: str, x: torch.Tensor, dim: int) -> torch.Tensor:
        # A chain of three GEMMs that ATen already runs at full speed: nothing to fuse.
        op = f"CACNet.{name}_logits"
        check_tensor(op, arg, x, ndim=2, dtypes=(self.b_y.dtype,))
        if x.shape[1] != dim:
            raise ValueError(f"{op}: {arg} must have shape [B, {dim}], got {tuple(x.shape)}")
        params = dict(zip(PARAM_NAMES, self.op_params()))
        return reference.subnetwork_logits(name, x, x, params, self.activation)

    # ---- configuration (the constructor's arguments, for checkpoints)
    def config(self) -> dict:
        return {
            "image_dim": self.image_dim, "text_dim": self.text_dim, "hidden": self.hidden,
            "num_classes": self.num_classes, "activation": self.activation,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())
