"""CACNet (DESIGN 2.4) written literally: every network and sub-network is its own forward pass
over the shared parameters (a dict name -> tensor, names of ``mmfast.ops.cacnet.PARAM_NAMES``),
and gradients come from autograd. Weights are [in, out]: a layer is ``x @ w + b``."""

import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}

# Each sub-network: its input, then the weights and biases it passes through (DESIGN 2.4 table).
SUBNETWORKS = {
    "passive_image": ("image", "w_xi_hi", "b_hi", "w_hi_gi", "b_gi", "w_gi_y"),
    "passive_text": ("text", "w_xt_ht", "b_ht", "w_ht_gt", "b_gt", "w_gt_y"),
    "cross_active_image": ("image", "w_xi_ht", "b_ht", "w_ht_gi", "b_gi", "w_gi_y"),
    "cross_active_text": ("text", "w_xt_hi", "b_hi", "w_hi_gt", "b_gt", "w_gt_y"),
}


def full_logits(x_img, x_txt, params, activation="relu"):
    """Logits [B, C] of the full network."""
    act, p = ACTIVATIONS[activation], params
    h_img = act(x_img @ p["w_xi_hi"] + x_txt @ p["w_xt_hi"] + p["b_hi"])  # h'
    h_txt = act(x_txt @ p["w_xt_ht"] + x_img @ p["w_xi_ht"] + p["b_ht"])  # h''
    g_img = act(h_img @ p["w_hi_gi"] + h_txt @ p["w_ht_gi"] + p["b_gi"])  # g'
    g_txt = act(h_txt @ p["w_ht_gt"] + h_img @ p["w_hi_gt"] + p["b_gt"])  # g''
    return g_img @ p["w_gi_y"] + g_txt @ p["w_gt_y"] + p["b_y"]


def subnetwork_logits(name, x_img, x_txt, params, activation="relu", train_output=True):
    """Virtual-output logits [B, C] of one sub-network (a key of ``SUBNETWORKS``); with
    ``train_output=False`` the output layer is detached, so no gradient reaches it."""
    source, w1, b1, w2, b2, w_out = SUBNETWORKS[name]
    act, p = ACTIVATIONS[activation], params
    x = x_img if source == "image" else x_txt
    hidden1 = act(x @ p[w1] + p[b1])
    hidden2 = act(hidden1 @ p[w2] + p[b2])
    w_out, b_y = p[w_out], p["b_y"]
    if not train_output:
        w_out, b_y = w_out.detach(), b_y.detach()
    return hidden2 @ w_out + b_y


def per_sample_loss(logits, targets):
    """[B]: the binary cross-entropy of sigmoid(logits) against targets, mean over classes."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


def beta(full_loss, passive_image_loss, passive_text_loss):
    """beta = alpha / (1 + alpha), alpha = mean_i (E'_i + E''_i) / (2 E_i), E_i >= 1e-12."""
    alpha = ((passive_image_loss + passive_text_loss) / (2 * full_loss.clamp(min=1e-12))).mean()
    return alpha / (1 + alpha)


def pair_losses(kind, x_img, x_txt, targets, params, activation="relu", train_output=True):
    """Per-sample losses [B] of the image and text sub-networks of ``kind`` ("passive" or
    "cross_active"): phase 1 trains the passive pair, case 2 of phase 2 the cross-active one."""
    return tuple(
        per_sample_loss(
            subnetwork_logits(f"{kind}_{side}", x_img, x_txt, params, activation, train_output),
            targets,
        )
        for side in ("image", "text")
    )


def gradients(objective, params):
    """d objective / d p for every parameter it depends on (name -> tensor); the others are
    left out, as autograd leaves their ``.grad`` None."""
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(objective, [params[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}
