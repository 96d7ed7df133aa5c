"""fastText-style training: SGD with the learning rate decaying linearly to 0 over the run."""

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from mmfast import _backend
from mmfast.nn.fasttext import FastText
from mmfast.nn.kiela import DiscretizedFastText
from mmfast.ops.fasttext_sgd import fasttext_sgd_

LOSSES = ("softmax", "ova")


@dataclass
class Examples:
    """Encoded items: text bags as CSR (``words`` end to end, ``offsets`` per item), ``image``
    [N, D] float vectors or [N, T] int64 tokens (or None), ``targets`` [N] class indices
    (softmax) or [N, K] 0/1 floats (one-vs-all)."""

    words: torch.Tensor
    offsets: torch.Tensor
    image: torch.Tensor | None
    targets: torch.Tensor | None = None

    def __post_init__(self):
        self.lengths = torch.diff(self.offsets, append=self.offsets.new_tensor([self.words.numel()]))
        for name in ("image", "targets"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != len(self):
                raise ValueError(f"Examples: {name} must have {len(self)} rows (one per text), "
                                 f"got shape {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.offsets.numel()

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(words, offsets, image, targets)`` of the items ``index``, gathered without a
        Python loop."""
        lengths = self.lengths[index]
        offsets = torch.cumsum(lengths, 0) - lengths
        shift = torch.repeat_interleave(self.offsets[index] - offsets, lengths)
        words = self.words[shift + torch.arange(int(lengths.sum()))]
        image = None if self.image is None else self.image[index]
        targets = None if self.targets is None else self.targets[index]
        return words, offsets, image, targets


def loss_function(loss: str):
    if loss == "softmax":
        return nn.functional.cross_entropy
    if loss == "ova":
        return nn.functional.binary_cross_entropy_with_logits
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def train(model: nn.Module, examples: Examples, *, epochs: int = 10, lr: float = 0.5,
          batch_size: int = 32, loss: str = "softmax", seed: int = 0,
          progress: bool = False) -> dict:
    """Train ``model`` in place; returns ``{"seconds", "items_per_s", "final_loss"}``.

    The learning rate falls linearly from ``lr`` to 0 over all steps (fastText's schedule).
    On the fused backend, a float32 CPU ``FastText`` or ``DiscretizedFastText`` with the softmax
    loss trains as fastText does, one SGD step per example with ``torch.get_num_threads()``
    Hogwild threads (``mmfast.ops.fasttext_sgd_``; ``batch_size`` does not apply). Otherwise
    (the reference backend, other models, losses or devices) minibatches of ``batch_size`` take
    autograd SGD steps, embedding tables with sparse gradients getting sparse updates.
    """
    if examples.targets is None:
        raise ValueError("train: examples must have targets")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"train: epochs and batch_size must be >= 1 and lr > 0, got "
                         f"epochs={epochs}, batch_size={batch_size}, lr={lr}")
    criterion = loss_function(loss)
    generator = torch.Generator().manual_seed(seed)
    if _fused_sgd_applies(model, loss):
        return _train_fused(model, examples, epochs, lr, generator, progress)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(examples) // batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    model.train()
    start = time.perf_counter()
    running = 0.0
    with tqdm(total=total_steps, desc=f"train {type(model).__name__}", disable=not progress,
              leave=False) as bar:
        for _ in range(epochs):
            for index in torch.randperm(len(examples), generator=generator).split(batch_size):
                words, offsets, image, targets = examples.batch(index)
                optimizer.zero_grad(set_to_none=True)
                value = criterion(model(words, offsets, image), targets)
                value.backward()
                optimizer.step()
                schedule.step()
                running = 0.95 * running + 0.05 * value.item() if running else value.item()
                bar.update()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "items_per_s": epochs * len(examples) / seconds,
            "final_loss": running}


def _fused_sgd_applies(model: nn.Module, loss: str) -> bool:
    # Exact types: subclasses such as ContinuousFusion have more than the one embedding bag.
    return (not _backend.use_reference() and loss == "softmax"
            and type(model) in (FastText, DiscretizedFastText)
            and model.embedding.weight.device.type == "cpu"
            and model.embedding.weight.dtype == torch.float32)


@torch.no_grad()
def _train_fused(model: FastText, examples: Examples, epochs: int, lr: float,
                 generator: torch.Generator, progress: bool) -> dict:
    """One ``fasttext_sgd_`` call per epoch over a fresh shuffle, each taking its share of the
    run's linear decay."""
    model.train()
    kept = (examples.targets >= 0).nonzero().flatten()  # items without a known label take no step
    parameters = (model.embedding.weight.detach(), model.classifier.weight.detach(),
                  model.classifier.bias.detach())
    start = time.perf_counter()
    epoch_loss = 0.0
    for epoch in tqdm(range(epochs), desc=f"train {type(model).__name__}", disable=not progress,
                      leave=False):
        words, offsets, image, targets = examples.batch(
            kept[torch.randperm(len(kept), generator=generator)])
        ids, starts, weights = model.bags(words, offsets, image)
        bounds = torch.cat([starts, starts.new_tensor([ids.numel()])])  # [B + 1]
        losses = fasttext_sgd_(*parameters, ids, bounds, weights, targets,
                               lr * (1 - epoch / epochs), lr * (1 - (epoch + 1) / epochs))
        epoch_loss = float(losses.mean()) if losses.numel() else 0.0
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "items_per_s": epochs * len(kept) / seconds,
            "final_loss": epoch_loss}


@torch.no_grad()
def predict(model: nn.Module, examples: Examples, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, K] in the order of ``examples``."""
    model.eval()
    outputs = []
    for index in torch.arange(len(examples)).split(batch_size):
        words, offsets, image, _ = examples.batch(index)
        outputs.append(model(words, offsets, image))
    return torch.cat(outputs) if outputs else torch.empty(0)
