"""fastText-style training: SGD with the learning rate decaying linearly to 0 over the run."""

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

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

    The learning rate falls linearly from ``lr`` to 0 over all steps (fastText's schedule);
    embedding tables with sparse gradients get sparse SGD updates.
    """
    if examples.targets is None:
        raise ValueError("train: examples must have targets")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"train: epochs and batch_size must be >= 1 and lr > 0, got "
                         f"epochs={epochs}, batch_size={batch_size}, lr={lr}")
    criterion = loss_function(loss)
    generator = torch.Generator().manual_seed(seed)
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


@torch.no_grad()
def predict(model: nn.Module, examples: Examples, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, K] in the order of ``examples``."""
    model.eval()
    outputs = []
    for index in torch.arange(len(examples)).split(batch_size):
        words, offsets, image, _ = examples.batch(index)
        outputs.append(model(words, offsets, image))
    return torch.cat(outputs) if outputs else torch.empty(0)
