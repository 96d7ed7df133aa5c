"""What the trainers share to train across processes (torchrun, ``torch.distributed``): the
rank and world of the default process group, each rank's part of a batch, and the gradients,
losses and parameters averaged or summed over the ranks. One process is a world of one: every
function is then the identity, and nothing of ``torch.distributed`` is touched."""

import torch


def process_group() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_part(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of the rows ``batch`` (one of ``world`` nearly equal parts), or the
    whole batch when it has fewer rows than ranks: then every rank computes the same gradient,
    and their average is the batch's, as one process's would be."""
    return batch if len(batch) < world else batch.tensor_split(world)[rank]


def average_gradients(parameters, world: int, rows: int) -> None:
    """Each gradient, of a loss averaged over this rank's ``rows``, replaced by the mean over the
    ranks weighted by their rows (a parameter without one counts as zero): the gradient of the
    loss averaged over every rank's rows, as one process's step on the whole batch. The trainers
    that compute their loss outside the module's ``forward`` step this way."""
    if world == 1:
        return
    import torch.distributed as dist

    weight = rows_weight(rows, world)
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        parameter.grad *= weight
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad /= world


def rows_weight(rows: int, world: int) -> float:
    """The factor on a loss averaged over this rank's ``rows`` that makes the plain mean of the
    ranks' gradients (DistributedDataParallel's) the gradient of the mean over all their rows:
    rows x world / all ranks' rows. Without it a batch split 4 + 3 would weigh each of the 3
    rows 4/3 times as much as each of the 4 (a sample-independent term of the loss stays
    exact: the weights average to 1). When each rank holds the whole batch (``batch_part`` of
    fewer rows than ranks) every weight is 1."""
    if world == 1:
        return 1.0
    import torch.distributed as dist

    total = torch.tensor(float(rows), dtype=torch.float64)
    dist.all_reduce(total)
    return rows * world / float(total) if float(total) else 1.0


def global_mean(total: float, count: int, world: int) -> float:
    """The mean over every rank of the values summed to ``total`` over ``count`` on each."""
    if world == 1:
        return total / count if count else 0.0
    import torch.distributed as dist

    sums = torch.tensor([total, float(count)], dtype=torch.float64)
    dist.all_reduce(sums)
    return float(sums[0] / sums[1]) if sums[1] else 0.0


def barrier(world: int) -> None:
    """Every rank waits here for the others (nothing to wait for in a world of one)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
