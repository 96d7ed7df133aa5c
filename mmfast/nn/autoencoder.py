"""Joint and cross-modal autoencoders (paper 002, DESIGN 3.3) over a visual vector v (the
PCA-whitened visual words histogram) and a text vector tau (the standardized mean tag vector).

Every model has one over-complete hidden layer ``h = act(W1 x + b1)`` and a linear output
``W2 h + b2`` split into the reconstructions ``(v_hat, tau_hat)``:

==============================  ==========  ===================  ========================
model                           input x     output               hidden units
==============================  ==========  ===================  ========================
``JointAutoencoder``            [v, tau]    (v_hat, tau_hat)     1.4 (visual + text dim)
``CrossModalAutoencoder("I")``  v           tau_hat              1.4 visual dim
``CrossModalAutoencoder("II")`` v           (v_hat, tau_hat)     1.4 visual dim
==============================  ==========  ===================  ========================

The hidden activations are the learned features (``encode``). The cross-modal models need the
text only as a training target, so they encode images without text; the joint model needs both
(the paper: it "is not very robust to missing modalities") and fills a missing text with 0,
the standardized mean tag vector.

Two small GEMMs that ATen already runs at full speed: there is no fused op to pick, and the
``mmfast.backend`` switch does not apply.
"""

from typing import NamedTuple

import torch
from torch import nn

from mmfast.ops._checks import check_finite, check_number, check_same_device, check_tensor

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
CROSS_MODAL_MODES = ("I", "II")

DEFAULT_MU = 10.0
"""The paper's weight of the text reconstruction (20 text dims next to 200 visual ones)."""

DEFAULT_WEIGHT_DECAY = 1e-4
"""lambda. The paper gives none. This is the weight decay of the UFLDL sparse autoencoder, the
same objective family (per-example sums of squared errors averaged over the batch, plus lambda
times the squared Frobenius norms). With standardized inputs the reconstruction terms start in
the hundreds while the decay of a 200-300 unit layer is ~0.01: it only keeps the weights from
growing without bound (sigmoid units saturating) and leaves the features' scale to the data."""


class Reconstruction(NamedTuple):
    hidden: torch.Tensor
    """[B, hidden]: the features."""
    visual: torch.Tensor | None
    """v_hat [B, visual_dim]; None for Cross-Modal I, which reconstructs only the text."""
    text: torch.Tensor
    """tau_hat [B, text_dim]."""


class AutoencoderLoss(NamedTuple):
    """``total = visual + text + decay``, each a scalar tensor."""

    total: torch.Tensor
    visual: torch.Tensor
    """mean over the batch of ``|v - v_hat|^2`` (0 for Cross-Modal I)."""
    text: torch.Tensor
    """``mu`` times the mean over the batch of ``|tau - tau_hat|^2`` (weight 1 instead of ``mu``
    for Cross-Modal I); a row without text adds 0 but still counts in the mean."""
    decay: torch.Tensor
    """``lambda (|W1|_F^2 + |W2|_F^2)``; biases are not decayed."""


def _check_positive_int(where: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")


class _Autoencoder(nn.Module):
    """The layers, checks and loss the three models share; subclasses say what goes in
    (``reads_text``) and what comes out (``reconstructs_visual``)."""

    def __init__(self, visual_dim: int, text_dim: int, reads_text: bool,
                 reconstructs_visual: bool, hidden_ratio: float, activation: str,
                 text_weight: float, weight_decay: float):
        super().__init__()
        name = type(self).__name__
        _check_positive_int(name, "visual_dim", visual_dim)
        _check_positive_int(name, "text_dim", text_dim)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {tuple(ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.hidden_ratio = check_number(name, "hidden_ratio", hidden_ratio, 0.0, strict=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, 0.0, strict=False)
        self.visual_dim, self.text_dim, self.activation = visual_dim, text_dim, activation
        self.reads_text, self.reconstructs_visual = reads_text, reconstructs_visual
        self.text_weight = text_weight
        input_dim = visual_dim + (text_dim if reads_text else 0)
        output_dim = (visual_dim if reconstructs_visual else 0) + text_dim
        self.hidden = round(self.hidden_ratio * input_dim)
        if self.hidden < 1:
            raise ValueError(f"{name}: hidden_ratio {hidden_ratio} leaves no hidden unit for "
                             f"{input_dim} inputs")
        self.encoder = nn.Linear(input_dim, self.hidden)  # W1, b1
        self.decoder = nn.Linear(self.hidden, output_dim)  # W2, b2 (linear output)

    def check_inputs(self, fn: str, v, tau=None, text_present=None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(v, tau, text_present)`` checked against the model (``fn`` names the caller in
        messages); the rows of ``tau`` without text, which may hold anything (NaN included),
        replaced by 0, the standardized mean."""
        weight = self.encoder.weight
        check_tensor(fn, "v", v, ndim=2)
        if v.dtype != weight.dtype:
            raise TypeError(f"{fn}: v must have the model's dtype {weight.dtype}, got {v.dtype}")
        if v.shape[1] != self.visual_dim:
            raise ValueError(f"{fn}: v must have shape [B, {self.visual_dim}] (visual_dim), "
                             f"got {tuple(v.shape)}")
        check_same_device(fn, "v", v, weight, "the model's device")
        check_finite(fn, "v", v)
        if tau is None:
            if text_present is not None:
                raise ValueError(f"{fn}: text_present needs tau, got tau=None")
            return v, None, None
        check_tensor(fn, "tau", tau, ndim=2)
        if tau.dtype != weight.dtype:
            raise TypeError(f"{fn}: tau must have the model's dtype {weight.dtype}, "
                            f"got {tau.dtype}")
        if tau.shape != (v.shape[0], self.text_dim):
            raise ValueError(f"{fn}: tau must have shape [B, {self.text_dim}] with B = "
                             f"{v.shape[0]} rows like v, got {tuple(tau.shape)}")
        check_same_device(fn, "tau", tau, weight, "the model's device")
        if text_present is not None:
            check_tensor(fn, "text_present", text_present, ndim=1, dtypes=(torch.bool,))
            if text_present.shape[0] != v.shape[0]:
                raise ValueError(f"{fn}: text_present must have {v.shape[0]} entries (one per "
                                 f"row of v), got {text_present.shape[0]}")
            check_same_device(fn, "text_present", text_present, weight, "the model's device")
            tau = torch.where(text_present[:, None], tau, 0.0)
        check_finite(fn, "tau", tau)
        return v, tau, text_present

    def check_loss_inputs(self, fn: str, v, tau=None, text_present=None
                          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``check_inputs`` for the loss, which also needs ``tau`` unless the model reads it:
        without it a cross-modal model would train on the weight decay alone (mode I) or as a
        plain autoencoder of v (mode II)."""
        if tau is None and not self.reads_text:
            raise ValueError(f"{fn}: tau is required: it is the cross-modal model's "
                             f"reconstruction target, got None")
        return self.check_inputs(fn, v, tau, text_present)

    def _reconstruct(self, v: torch.Tensor, tau: torch.Tensor | None) -> Reconstruction:
        if self.reads_text:
            x = torch.cat([v, tau if tau is not None else v.new_zeros(len(v), self.text_dim)], 1)
        else:
            x = v
        hidden = ACTIVATIONS[self.activation](self.encoder(x))
        output = self.decoder(hidden)
        if not self.reconstructs_visual:
            return Reconstruction(hidden, None, output)
        return Reconstruction(hidden, output[:, :self.visual_dim], output[:, self.visual_dim:])

    def loss(self, v: torch.Tensor, tau: torch.Tensor | None = None,
             text_present: torch.Tensor | None = None) -> AutoencoderLoss:
        """The objective on a batch, ``AutoencoderLoss(total, visual, text, decay)``::

            total = 1/B sum_b ( |v_b - v_hat_b|^2 + mu |tau_b - tau_hat_b|^2 )
                    + lambda (|W1|_F^2 + |W2|_F^2)

        ``|.|^2`` sums the squared errors over a vector's dimensions; the visual term is absent
        for Cross-Modal I, whose text term has weight 1 instead of ``mu``. ``text_present``
        [B] bool marks the rows that have text: the others add no text term (still counting in
        B), and the joint model reads 0 for their text. ``tau=None``: no row has text, for the
        joint model only; a cross-modal model needs ``tau``, its reconstruction target (and
        raises without it).
        """
        fn = f"{type(self).__name__}.loss"
        v, tau, text_present = self.check_loss_inputs(fn, v, tau, text_present)
        if v.shape[0] == 0:
            raise ValueError(f"{fn}: v must have at least one row (a mean over no rows is NaN)")
        return self._loss(v, tau, text_present)

    def _loss(self, v: torch.Tensor, tau: torch.Tensor | None,
              text_present: torch.Tensor | None) -> AutoencoderLoss:
        """``loss`` on inputs already checked by ``check_loss_inputs``, v not empty."""
        output = self._reconstruct(v, tau)
        zero = v.new_zeros(())
        visual = zero
        if output.visual is not None:
            visual = (v - output.visual).square().sum(1).mean()
        text = zero
        if tau is not None:
            errors = (tau - output.text).square().sum(1)  # [B]
            if text_present is not None:
                errors = errors * text_present
            text = self.text_weight * errors.mean()
        decay = self.weight_decay * (self.encoder.weight.square().sum()
                                     + self.decoder.weight.square().sum())
        return AutoencoderLoss(visual + text + decay, visual, text, decay)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())


class JointAutoencoder(_Autoencoder):
    """Joint features of an image and its text: ``[v, tau]`` -> hidden (``round(hidden_ratio *
    (visual_dim + text_dim))`` units) -> ``(v_hat, tau_hat)``; loss ``|v - v_hat|^2 + mu |tau -
    tau_hat|^2 + lambda (|W1|_F^2 + |W2|_F^2)`` (see ``loss``)."""

    def __init__(self, visual_dim: int, text_dim: int, hidden_ratio: float = 1.4,
                 activation: str = "sigmoid", mu: float = DEFAULT_MU,
                 weight_decay: float = DEFAULT_WEIGHT_DECAY):
        mu = check_number("JointAutoencoder", "mu", mu, 0.0, strict=True)
        super().__init__(visual_dim, text_dim, reads_text=True, reconstructs_visual=True,
                         hidden_ratio=hidden_ratio, activation=activation, text_weight=mu,
                         weight_decay=weight_decay)
        self.mu = mu

    def forward(self, v: torch.Tensor, tau: torch.Tensor | None = None) -> Reconstruction:
        """``Reconstruction(hidden, v_hat, tau_hat)``; ``tau=None`` reads 0 (the standardized
        mean) for every text: features of images without text, which the joint model was not
        trained for (use a cross-modal model when text is missing at test time)."""
        v, tau, _ = self.check_inputs("JointAutoencoder.forward", v, tau, None)
        return self._reconstruct(v, tau)

    def encode(self, v: torch.Tensor, tau: torch.Tensor | None = None) -> torch.Tensor:
        """The joint features [B, hidden]; ``tau=None`` as in ``forward``."""
        return self.forward(v, tau).hidden

    def config(self) -> dict:
        return {"visual_dim": self.visual_dim, "text_dim": self.text_dim,
                "hidden_ratio": self.hidden_ratio, "activation": self.activation, "mu": self.mu,
                "weight_decay": self.weight_decay}


class CrossModalAutoencoder(_Autoencoder):
    """Image features learned with the text as a target: ``v`` -> hidden (``round(hidden_ratio
    * visual_dim)`` units) -> ``tau_hat`` (mode ``"I"``) or ``(v_hat, tau_hat)`` (mode
    ``"II"``). Encoding needs no text.

    ``mu`` weighs the text reconstruction against the visual one, so it applies to mode II only
    (default 10, the paper's); mode I's loss is ``|tau - tau_hat|^2 + lambda (|W1|_F^2 +
    |W2|_F^2)`` and takes ``mu=None``.
    """

    def __init__(self, visual_dim: int, text_dim: int, mode: str = "II",
                 hidden_ratio: float = 1.4, activation: str = "sigmoid",
                 mu: float | None = None, weight_decay: float = DEFAULT_WEIGHT_DECAY):
        if mode not in CROSS_MODAL_MODES:
            raise ValueError(f"CrossModalAutoencoder: mode must be one of {CROSS_MODAL_MODES}, "
                             f"got {mode!r}")
        if mode == "I" and mu is not None:
            raise ValueError(f"CrossModalAutoencoder: mu weighs the text reconstruction against "
                             f"the visual one, which mode 'I' does not have; it must be None, "
                             f"got {mu!r}")
        if mode == "II":
            mu = check_number("CrossModalAutoencoder", "mu", DEFAULT_MU if mu is None else mu,
                              0.0, strict=True)
        super().__init__(visual_dim, text_dim, reads_text=False,
                         reconstructs_visual=mode == "II", hidden_ratio=hidden_ratio,
                         activation=activation, text_weight=1.0 if mu is None else mu,
                         weight_decay=weight_decay)
        self.mode, self.mu = mode, mu

    def forward(self, v: torch.Tensor) -> Reconstruction:
        """``Reconstruction(hidden, v_hat or None (mode I), tau_hat)`` from the image alone."""
        v, _, _ = self.check_inputs("CrossModalAutoencoder.forward", v, None, None)
        return self._reconstruct(v, None)

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """The cross-modal features [B, hidden] of images, no text needed."""
        return self.forward(v).hidden

    def config(self) -> dict:
        return {"visual_dim": self.visual_dim, "text_dim": self.text_dim, "mode": self.mode,
                "hidden_ratio": self.hidden_ratio, "activation": self.activation, "mu": self.mu,
                "weight_decay": self.weight_decay}
