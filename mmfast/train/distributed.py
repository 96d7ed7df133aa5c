"""What the trainers share to train across processes (torchrun, ``torch.distributed``): the
rank and world of the default process group, each rank's part of a batch, and the gradients,
losses and parameters averaged or summed over the ranks. One process is a world of one: every
function is then the identity, and nothing of ``torch.distributed`` is touched.

Under ``sharded_data()`` each rank holds only its share of the training and validation items
(``mmfast train --rank-data share``): what is fitted on the whole split (vocabulary, image
means, document frequencies, quantizers, PCA, standardization, Word2Vec) is reduced over the
ranks (``merged_counts``, ``global_sum``, ``gather_rows``, ``gather_objects``), each rank
steps on its own shuffled share (``epoch_batches``), and validation scores the ranks'
gathered predictions."""

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch

_SHARDED = False


@contextlib.contextmanager
def sharded_data() -> Iterator[None]:
    """Within: the trainers' inputs are this rank's share of the items, not all of them."""
    global _SHARDED
    previous, _SHARDED = _SHARDED, process_group()[1] > 1
    try:
        yield
    finally:
        _SHARDED = previous


def data_sharded() -> bool:
    """Whether each rank holds only its share of the items (``sharded_data``)."""
    return _SHARDED


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


def average_hook(_, bucket):
    """``DistributedDataParallel``'s communication hook for every trainer here: a bucket's
    gradients averaged over the ranks, as DDP's own all-reduce does, except that a sparse
    gradient (the embedding tables of paper 003's models and the mlp) is summed as a CPU tensor:
    over gloo, which adds sparse tensors of different rows, where NCCL, the GPU ranks' backend
    (``"cpu:gloo,cuda:nccl"``), reduces only dense ones. On the CPU it is DDP's default."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    gradient = bucket.buffer()
    if not gradient.is_sparse:
        return allreduce_hook(None, bucket)
    total = gradient.coalesce().cpu()
    dist.all_reduce(total)
    future = torch.futures.Future()
    future.set_result(total.to(gradient.device) / dist.get_world_size())
    return future


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


def merged_counts(counts: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Word counts of the whole split from each rank's ``counts`` of its share, most frequent
    first, then in code-point order (``mmfast.ops.count_words``'s order); ``counts`` itself
    when the data is not sharded."""
    if not data_sharded():
        return counts
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, counts)
    total: Counter = Counter()
    for part in every:
        total.update(dict(part))
    return sorted(total.items(), key=lambda item: (-item[1], item[0]))


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks when the data is sharded (a new tensor; ``tensor`` itself
    otherwise): the whole split's sums and counts from each share's."""
    if not data_sharded():
        return tensor
    import torch.distributed as dist

    total = tensor.clone()
    dist.all_reduce(total)
    return total


def share_total():
    """What a fit's ``total=`` takes (``PCA.fit``, ``mean_of_parts``, the models' statistics):
    ``global_sum`` when the ranks hold shares, else None, so one process keeps its plain means."""
    return global_sum if data_sharded() else None


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` [n_r, ...] end to end, rank 0's first, the same on every
    rank, when the data is sharded (``tensor`` itself otherwise): a metric of the whole
    validation split from each share's scores."""
    if not data_sharded():
        return tensor
    import torch.distributed as dist

    sizes = share_sizes(len(tensor))
    padded = tensor.new_zeros(max(sizes), *tensor.shape[1:])
    padded[:len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)])


def share_sizes(count: int) -> list[int]:
    """Every rank's ``count`` (this rank's items), rank 0's first; ``[count]`` when the data is
    not sharded."""
    if not data_sharded():
        return [count]
    import torch.distributed as dist

    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([count]))
    return [int(size) for size in sizes]


def gather_objects(items: list) -> list:
    """Every rank's ``items`` end to end, rank 0's first, the same on every rank, when the data
    is sharded (``items`` itself otherwise): what a fit that is not a sum needs of the whole
    split (Word2Vec's texts)."""
    if not data_sharded():
        return items
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, items)
    return [item for part in every for item in part]


def shuffled_share(count: int, generator: torch.Generator) -> torch.Tensor:
    """A shuffle of this rank's ``count`` items (of all of them when the data is not sharded).
    Sharded, every rank draws every rank's shuffle from ``generator`` and keeps its own: the
    ranks' orders differ, and their generators move alike, so the state rank 0 saves is every
    rank's to resume from."""
    if not data_sharded():
        return torch.randperm(count, generator=generator)
    rank = process_group()[0]
    orders = [torch.randperm(size, generator=generator) for size in share_sizes(count)]
    return orders[rank]


def epoch_batches(count: int, batch_size: int, generator: torch.Generator,
                  part: tuple[int, int] = (0, 1)) -> list[torch.Tensor]:
    """The rows this rank (``part``: rank, world; ``(0, 1)`` alone) steps on, one tensor per
    step of an epoch over its ``count`` items, drawn from ``generator``.

    Every rank holding every item: the one shuffle every rank draws alike, split into
    ``batch_size`` batches, and this rank's part of each (``batch_part``), so the ranks' steps
    together are one process's. Each rank holding its share (``sharded_data``): a shuffle of
    the share (``shuffled_share``), ``batch_size / world`` rows a step, as
    ``DistributedSampler`` has it; a share shorter than the longest repeats its first rows so
    that every rank takes the same number of steps."""
    rank, world = part
    if world > 1 and data_sharded():
        order = shuffled_share(count, generator)
        longest = max(share_sizes(count))
        order = order.repeat(-(-longest // max(count, 1)))[:longest]
        return list(order.split(_rank_batch(batch_size, world)))
    order = torch.randperm(count, generator=generator)
    return [batch_part(batch, rank, world) for batch in order.split(batch_size)]


def steps_per_epoch(count: int, batch_size: int, world: int = 1) -> int:
    """How many tensors ``epoch_batches`` gives (``count``: this rank's items)."""
    if world > 1 and data_sharded():
        return -(-max(share_sizes(count)) // _rank_batch(batch_size, world))
    return -(-count // batch_size)


def _rank_batch(batch_size: int, world: int) -> int:
    """The rows a rank steps on when each holds a share: ``batch_size`` over the ranks."""
    return -(-batch_size // world)
