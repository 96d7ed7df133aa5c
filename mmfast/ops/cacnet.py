"""``cacnet_*``: the fused CACNet forward and training phases (DESIGN 2.4).

All ops take the 15 parameters as one list in ``PARAM_NAMES`` order (``CACNet.op_params()``),
weights laid out [in, out] so that a layer is ``x @ w`` as in the paper. H is the width of one
hidden half (h', h'', g', g''); C the number of classes. Losses are per sample, [B]: the mean
over classes of the stable binary cross-entropy with logits. Every gradient is of the mean over
the batch of the loss trained (the sum of the two sub-networks' means where a pair is trained).

    cacnet_forward(x_img [B, Di], x_txt [B, Dt], params, activation)
        -> (logits [B, C], hidden1 [2, B, H], hidden2 [2, B, H])
        The full network. Differentiable (backward: ``_cacnet_forward_backward``); the hidden
        activations (image half first) are what the backward reads.
    _cacnet_forward_backward(grad_logits, x_img, x_txt, params, hidden1, hidden2, activation,
                             input_grads) -> (grad_x_img, grad_x_txt, grad_params [15])
        grad_x_* are empty [0] tensors when not input_grads.
    cacnet_phase1(x_img, x_txt, targets [B, C], params, activation)
        -> (passive_image_loss [B], passive_text_loss [B], grads [11])
        Phase 1: both passive sub-networks on their virtual outputs; grads in
        ``PHASE1_GRAD_NAMES`` order (the passive subsections, their biases, the output layer).
    cacnet_phase2_forward(x_img, x_txt, targets, params, activation)
        -> (full_loss, passive_image_loss, passive_text_loss, beta [], layer1 [4, B, H],
            hidden1, hidden2, logits [B, C])
        Phase 2's forward: the four layer-1 blocks (x'w(x',h'), x''w(x'',h''), x'w(x',h''),
        x''w(x'',h'), before bias) computed once feed the full network, both passive
        sub-networks and, in case 2, the cross-active ones. beta = alpha / (1 + alpha),
        alpha = mean_i (E'_i + E''_i) / (2 max(E_i, 1e-12)).
    cacnet_phase2_full_backward(x_img, x_txt, targets, params, hidden1, hidden2, logits,
                                activation) -> grads [15]
        Case 1: the full network end to end, grads in ``PARAM_NAMES`` order.
    cacnet_phase2_cross_active(x_img, x_txt, targets, params, layer1, activation, train_output)
        -> (cross_image_loss [B], cross_text_loss [B], grads [8 or 11])
        Case 2: both cross-active sub-networks from phase2_forward's layer1; grads in
        ``cross_active_grad_names(train_output)`` order.

The Python functions below check their arguments and name the gradients; the ops themselves also
check values (finite inputs, targets in {0, 1}). ``cacnet_forward`` follows
``mmfast.get_backend()``; the phase functions are the fused path only, and
``mmfast.train.CACNetTrainer`` picks between them and the literal ``mmfast.reference.cacnet``.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch

from mmfast import _backend
from mmfast.reference import cacnet as reference_cacnet
from mmfast.ops._checks import check_finite, check_same_device, check_tensor

# w_<from>_<to>: xi/xt image/text input, hi/ht image/text half of hidden layer 1 (h', h''),
# gi/gt of hidden layer 2 (g', g''), y the output.
PARAM_NAMES = (
    "w_xi_hi", "w_xt_ht",  # passive, layer 1
    "w_xi_ht", "w_xt_hi",  # cross-active, layer 1
    "w_hi_gi", "w_ht_gt",  # passive, layer 2
    "w_hi_gt", "w_ht_gi",  # cross-active, layer 2
    "w_gi_y", "w_gt_y",  # output
    "b_hi", "b_ht", "b_gi", "b_gt", "b_y",
)
ACTIVATIONS = ("relu", "tanh", "sigmoid")
OUTPUT_NAMES = ("w_gi_y", "w_gt_y", "b_y")
PHASE1_GRAD_NAMES = (
    "w_xi_hi", "w_xt_ht", "w_hi_gi", "w_ht_gt", "b_hi", "b_ht", "b_gi", "b_gt",
) + OUTPUT_NAMES


def cross_active_grad_names(train_output: bool) -> tuple[str, ...]:
    """The parameters case 2 trains: cross-active subsections, the biases of the units their
    sub-networks pass through and, when ``train_output``, the output layer."""
    names = ("w_xi_ht", "w_xt_hi", "w_ht_gi", "w_hi_gt", "b_ht", "b_hi", "b_gi", "b_gt")
    return names + OUTPUT_NAMES if train_output else names


def param_shapes(image_dim: int, text_dim: int, half: int, classes: int
                 ) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter (name -> shape, ``PARAM_NAMES`` order) for inputs of
    ``image_dim`` and ``text_dim``, hidden halves of ``half`` units and ``classes`` outputs."""
    return {
        "w_xi_hi": (image_dim, half), "w_xt_ht": (text_dim, half),
        "w_xi_ht": (image_dim, half), "w_xt_hi": (text_dim, half),
        **{name: (half, half) for name in ("w_hi_gi", "w_ht_gt", "w_hi_gt", "w_ht_gi")},
        "w_gi_y": (half, classes), "w_gt_y": (half, classes),
        **{name: (half,) for name in ("b_hi", "b_ht", "b_gi", "b_gt")}, "b_y": (classes,),
    }


class SubnetworkPairStep(NamedTuple):
    """Phase 1 or case 2: per-sample losses of the image and text sub-networks and the
    gradients of the parameters the pair trains (name -> tensor)."""

    image_loss: torch.Tensor
    text_loss: torch.Tensor
    grads: dict[str, torch.Tensor]


class Phase2Forward(NamedTuple):
    full_loss: torch.Tensor  # [B] E_i
    passive_image_loss: torch.Tensor  # [B] E'_i
    passive_text_loss: torch.Tensor  # [B] E''_i
    beta: torch.Tensor  # [] alpha / (1 + alpha)
    layer1: torch.Tensor  # [4, B, H] layer-1 blocks before bias
    hidden1: torch.Tensor  # [2, B, H] full network, post-activation
    hidden2: torch.Tensor  # [2, B, H]
    logits: torch.Tensor  # [B, C] full network


# ---- checks: _check_args reads metadata only (free under torch.compile; the kernels check
# values); _check_values is the kernels' value check for the literal path
def _check_args(op, x_img, x_txt, targets, params, activation) -> None:
    check_tensor(op, "x_img", x_img, ndim=2, dtypes=(torch.float32, torch.float64))
    check_tensor(op, "x_txt", x_txt, ndim=2, dtypes=(x_img.dtype,))
    check_same_device(op, "x_txt", x_txt, x_img)
    batch = x_img.shape[0]
    if x_txt.shape[0] != batch:
        raise ValueError(f"{op}: x_txt must have {batch} rows like x_img, got {x_txt.shape[0]}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(params, Sequence) or len(params) != len(PARAM_NAMES):
        got = len(params) if isinstance(params, Sequence) else type(params).__name__
        raise ValueError(f"{op}: params must be a list of {len(PARAM_NAMES)} tensors in "
                         f"PARAM_NAMES order, got {got}")
    for name, value in zip(PARAM_NAMES, params):
        check_tensor(op, f"params[{name}]", value, dtypes=(x_img.dtype,))
        check_same_device(op, f"params[{name}]", value, x_img)
    weights = dict(zip(PARAM_NAMES, params))
    half, classes = weights["b_hi"].shape[0], weights["b_y"].shape[0]
    image_dim, text_dim = x_img.shape[1], x_txt.shape[1]
    for name, shape in param_shapes(image_dim, text_dim, half, classes).items():
        if tuple(weights[name].shape) != shape:
            # The weights are what the model is: a wrong input width is the usual cause.
            hint = ""
            if name in ("w_xi_hi", "w_xi_ht") and weights[name].dim() == 2:
                hint = f" (the model takes image features of dim {weights[name].shape[0]}, " \
                       f"x_img has {image_dim})"
            elif name in ("w_xt_ht", "w_xt_hi") and weights[name].dim() == 2:
                hint = f" (the model takes text features of dim {weights[name].shape[0]}, " \
                       f"x_txt has {text_dim})"
            raise ValueError(f"{op}: params[{name}] must have shape {shape}, got "
                             f"{tuple(weights[name].shape)}{hint}")
    if targets is not None:
        check_tensor(op, "targets", targets, ndim=2, dtypes=(x_img.dtype,))
        check_same_device(op, "targets", targets, x_img)
        if tuple(targets.shape) != (batch, classes):
            raise ValueError(f"{op}: targets must have shape ({batch}, {classes}), got "
                             f"{tuple(targets.shape)}")


def _check_values(op, x_img, x_txt, targets) -> None:
    """The kernels' value checks, with their messages, for a path that runs no kernel (the
    reference backend, the trainer's literal reference step): finite inputs, targets (unless
    None) in {0, 1}; as ``mmfast.set_checks`` says."""
    check_finite(op, "x_img", x_img)
    check_finite(op, "x_txt", x_txt)
    if targets is None or not _backend.checks_values(targets):
        return
    binary = (targets == 0) | (targets == 1)
    if not bool(binary.all()):
        row = int((~binary).any(1).nonzero()[0, 0])
        raise ValueError(f"{op}: targets must hold only 0 and 1, but row {row} has another value")


# ---- public functions
def cacnet_forward(x_img, x_txt, params, activation: str = "relu") -> torch.Tensor:
    """Logits [B, C] of the full network; differentiable in every input and parameter."""
    _check_args("cacnet_forward", x_img, x_txt, None, params, activation)
    if _backend.use_reference():
        _check_values("cacnet_forward", x_img, x_txt, None)
        named = dict(zip(PARAM_NAMES, params))
        return reference_cacnet.full_logits(x_img, x_txt, named, activation)
    return torch.ops.mmfast.cacnet_forward(x_img, x_txt, list(params), activation)[0]


# Gradients come out as values: nothing here is recorded for autograd.
@torch.no_grad()
def cacnet_phase1(x_img, x_txt, targets, params, activation: str = "relu") -> SubnetworkPairStep:
    """Phase 1: losses and gradients of both passive sub-networks (DESIGN 2.4)."""
    _check_args("cacnet_phase1", x_img, x_txt, targets, params, activation)
    image_loss, text_loss, grads = torch.ops.mmfast.cacnet_phase1(
        x_img, x_txt, targets, list(params), activation
    )
    return SubnetworkPairStep(image_loss, text_loss, dict(zip(PHASE1_GRAD_NAMES, grads)))


@torch.no_grad()
def cacnet_phase2_forward(x_img, x_txt, targets, params, activation: str = "relu") -> Phase2Forward:
    """Phase 2's forward: E, E', E'', beta and what either case's backward reads."""
    _check_args("cacnet_phase2_forward", x_img, x_txt, targets, params, activation)
    return Phase2Forward(
        *torch.ops.mmfast.cacnet_phase2_forward(x_img, x_txt, targets, list(params), activation)
    )


@torch.no_grad()
def cacnet_phase2_full_backward(
    x_img, x_txt, targets, params, forward: Phase2Forward, activation: str = "relu"
) -> dict[str, torch.Tensor]:
    """Case 1: gradients of the full network's loss for all 15 parameters."""
    _check_args("cacnet_phase2_full_backward", x_img, x_txt, targets, params, activation)
    grads = torch.ops.mmfast.cacnet_phase2_full_backward(
        x_img, x_txt, targets, list(params), forward.hidden1, forward.hidden2, forward.logits,
        activation,
    )
    return dict(zip(PARAM_NAMES, grads))


@torch.no_grad()
def cacnet_phase2_cross_active(
    x_img, x_txt, targets, params, forward: Phase2Forward, activation: str = "relu",
    train_output: bool = True,
) -> SubnetworkPairStep:
    """Case 2: losses and gradients of both cross-active sub-networks, from the layer-1 blocks
    of ``forward``."""
    _check_args("cacnet_phase2_cross_active", x_img, x_txt, targets, params, activation)
    image_loss, text_loss, grads = torch.ops.mmfast.cacnet_phase2_cross_active(
        x_img, x_txt, targets, list(params), forward.layer1, activation, train_output
    )
    return SubnetworkPairStep(
        image_loss, text_loss, dict(zip(cross_active_grad_names(train_output), grads))
    )


# ---- fake kernels
def _empty_loss(x):
    return x.new_empty((x.shape[0],))


@torch.library.register_fake("mmfast::cacnet_forward")
def _(x_img, x_txt, params, activation):
    batch, half, classes = x_img.shape[0], params[10].shape[0], params[14].shape[0]
    hidden = x_img.new_empty((2, batch, half))
    return x_img.new_empty((batch, classes)), hidden, torch.empty_like(hidden)


@torch.library.register_fake("mmfast::_cacnet_forward_backward")
def _(grad_logits, x_img, x_txt, params, hidden1, hidden2, activation, input_grads):
    grad_params = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    if not input_grads:
        return x_img.new_empty((0,)), x_img.new_empty((0,)), grad_params
    return x_img.new_empty(x_img.shape), x_txt.new_empty(x_txt.shape), grad_params


def _fake_grads(params, names):
    by_name = dict(zip(PARAM_NAMES, params))
    return [by_name[name].new_empty(by_name[name].shape) for name in names]


@torch.library.register_fake("mmfast::cacnet_phase1")
def _(x_img, x_txt, targets, params, activation):
    return _empty_loss(x_img), _empty_loss(x_img), _fake_grads(params, PHASE1_GRAD_NAMES)


@torch.library.register_fake("mmfast::cacnet_phase2_forward")
def _(x_img, x_txt, targets, params, activation):
    batch, half, classes = x_img.shape[0], params[10].shape[0], params[14].shape[0]
    return (
        _empty_loss(x_img), _empty_loss(x_img), _empty_loss(x_img), x_img.new_empty(()),
        x_img.new_empty((4, batch, half)), x_img.new_empty((2, batch, half)),
        x_img.new_empty((2, batch, half)), x_img.new_empty((batch, classes)),
    )


@torch.library.register_fake("mmfast::cacnet_phase2_full_backward")
def _(x_img, x_txt, targets, params, hidden1, hidden2, logits, activation):
    return _fake_grads(params, PARAM_NAMES)


@torch.library.register_fake("mmfast::cacnet_phase2_cross_active")
def _(x_img, x_txt, targets, params, layer1, activation, train_output):
    return (
        _empty_loss(x_img), _empty_loss(x_img),
        _fake_grads(params, cross_active_grad_names(train_output)),
    )


# ---- autograd of cacnet_forward
def _setup_context(ctx, inputs, output):
    x_img, x_txt, params, activation = inputs
    _, hidden1, hidden2 = output
    ctx.save_for_backward(x_img, x_txt, hidden1, hidden2, *params)
    ctx.activation = activation
    ctx.mark_non_differentiable(hidden1, hidden2)


def _backward(ctx, grad_logits, _grad_hidden1, _grad_hidden2):
    x_img, x_txt, hidden1, hidden2, *params = ctx.saved_tensors
    needs_x_img, needs_x_txt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x_img, grad_x_txt, grad_params = torch.ops.mmfast._cacnet_forward_backward(
        grad_logits.contiguous(), x_img, x_txt, params, hidden1, hidden2, ctx.activation,
        needs_x_img or needs_x_txt,
    )
    return (
        grad_x_img if needs_x_img else None,
        grad_x_txt if needs_x_txt else None,
        list(grad_params),
        None,
    )


torch.library.register_autograd("mmfast::cacnet_forward", _backward, setup_context=_setup_context)
