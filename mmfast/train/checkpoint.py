"""Checkpoints: a directory with ``model.safetensors`` and ``config.json`` (the model's class
and constructor arguments, plus whatever the caller adds: labels, text hasher, feature recipe).
Loading never unpickles: the class comes from ``mmfast.nn.MODELS`` by name."""

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from mmfast._io import atomic_path, write_text_atomic

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, extra: dict | None = None
                    ) -> None:
    """Write the checkpoint; config.json goes last, so its presence marks a complete one."""
    directory = Path(directory)
    tensors = {name: tensor.detach().cpu().contiguous()
               for name, tensor in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as temporary:
        save_file(tensors, temporary)
    config = {"model": type(model).__name__, "args": model.config(), **(extra or {})}
    write_text_atomic(directory / CONFIG, json.dumps(config, indent=1) + "\n")


def load_checkpoint(directory: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(model, config)`` from ``save_checkpoint``'s directory, in eval mode."""
    from mmfast.nn import MODELS

    directory = Path(directory)
    if not (directory / CONFIG).is_file():
        raise FileNotFoundError(f"{directory} is not an mmfast checkpoint (no {CONFIG})")
    config = json.loads((directory / CONFIG).read_text())
    if config.get("model") not in MODELS:
        raise ValueError(f"{directory / CONFIG}: model must be one of {sorted(MODELS)}, "
                         f"got {config.get('model')!r}")
    model = MODELS[config["model"]](**config["args"])
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.eval(), config
