"""Statistics of a training split held in parts (torchrun ranks that each read a share):
what the models fit on the whole split, from their part and a ``total`` that sums over all."""

import torch


def mean_of_parts(rows: torch.Tensor, total=None) -> torch.Tensor:
    """The mean of ``rows`` [N, D] and of the other parts ``total`` sums in (the rows' sum and
    count summed by ``total``, e.g. ``mmfast.train.distributed.global_sum``; the plain mean
    without it)."""
    if total is None:
        return rows.mean(0)
    sums = total(torch.cat([rows.sum(0), rows.new_tensor([len(rows)])]))
    return sums[:-1] / sums[-1]
