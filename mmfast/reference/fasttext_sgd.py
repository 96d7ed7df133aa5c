import torch


def fasttext_sgd_(
    embedding: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    labels: torch.Tensor,
    lr_start: float,
    lr_end: float,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """fastText's training loop, one example at a time: for example b with the bag
    ``indices[offsets[b]:offsets[b+1]]`` (weights ``per_sample_weights``, or 1/bag size),

        hidden = sum_j w_j embedding[i_j]            logits = weight @ hidden + bias
        g = softmax(logits) - onehot(labels[b])      grad_hidden = weight^T g
            (one-vs-all, labels [B, K]: g = sigmoid(logits) - labels[b], the loss the sum of
            the K binary cross-entropies)
        weight -= lr g hidden^T,  bias -= lr g,  embedding[i_j] -= lr w_j grad_hidden

    with ``lr = lr_start + (lr_end - lr_start) * s / S`` at step s of S, which trains example
    ``order[s]`` (``order`` None: example s of S = B). Updates the parameters in place and
    returns each step's loss before its own update [S]. Sequential: the fused op with one
    thread computes exactly this.
    """
    examples = range(labels.shape[0]) if order is None else order.tolist()
    losses = embedding.new_empty(len(examples))
    with torch.no_grad():
        for step, b in enumerate(examples):
            lr = lr_start + (lr_end - lr_start) * step / len(examples)
            bag = indices[offsets[b] : offsets[b + 1]]
            if per_sample_weights is None:
                bag_weights = embedding.new_full((len(bag),), 1.0 / max(len(bag), 1))
            else:
                bag_weights = per_sample_weights[offsets[b] : offsets[b + 1]]
            hidden = bag_weights @ embedding[bag]  # [H]
            logits = weight @ hidden  # [K]
            if bias is not None:
                logits = logits + bias
            if labels.dim() == 2:
                losses[step] = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, labels[b], reduction="sum")
                grad_logits = torch.sigmoid(logits) - labels[b]
            else:
                log_probs = torch.log_softmax(logits, 0)
                losses[step] = -log_probs[labels[b]]
                grad_logits = log_probs.exp()
                grad_logits[labels[b]] -= 1.0
            grad_hidden = weight.T @ grad_logits  # with the classifier before its step
            weight -= lr * torch.outer(grad_logits, hidden)
            if bias is not None:
                bias -= lr * grad_logits
            # index_add_ accumulates a repeated id once per occurrence, as the loop over the bag
            # does
            embedding.index_add_(0, bag, torch.outer(bag_weights, grad_hidden), alpha=-lr)
    return losses
