"""Paper 000's Table 4 on the demo data's multi-label ``tags`` task: CACNet, CACNet(gamma=1) (the
paper's ablation: case 2 never taken) and a plain MLP of the same size, trained on the same
inputs and mini-batches, scored by P@1, R@5, Acc@1, Acc@3, Acc@5 on the held-out split.

The two CACNets are the ``cacnet`` system (``mmfast train --model cacnet`` trains the same way):
image features reduced by a PCA fitted on the train split, the a/(a+p(w)) weighted average of
Word2Vec vectors trained on the train split's text (DESIGN 3.2), each standardized. The MLP
reads the same inputs (``TrainedCACNet.inputs``), concatenated. The run is the paper's: a fixed
number of epochs, no validation split.

Shared by ``mmfast demo --paper 000``, ``benchmarks/bench_cacnet_demo.py`` and
``tests/test_cacnet_demo.py``.
"""

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfast import metrics, systems
from mmfast.data import Record
from mmfast.defaults import CACNetRecipe
from mmfast.experiments import ordering
from mmfast.nn import tokenize
from mmfast.train.cacnet import ShuffledBatches

# Paper 000 on its CACEval set (%): Table 3's P@1, R@5 and Table 4's Acc@1, 3, 5.
PAPER = {"CACNet": {"P@1": 59.7, "R@5": 42.72, "Acc@1": 12.82, "Acc@3": 48.91, "Acc@5": 71.13},
         "CACNet(gamma=1)": {"Acc@1": 9.11, "Acc@3": 41.47, "Acc@5": 55.19}}
# (column, metric, K) in the order of paper 000's Tables 3 and 4.
HASHTAG_METRICS = (
    ("P@1", metrics.precision_at_k, 1), ("R@5", metrics.recall_at_k, 5),
    ("Acc@1", metrics.accuracy_at_k, 1), ("Acc@3", metrics.accuracy_at_k, 3),
    ("Acc@5", metrics.accuracy_at_k, 5),
)


def dense_mlp(input_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The baseline: CACNet's layer sizes, every unit connected to both modalities."""
    return nn.Sequential(
        nn.Linear(input_dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def train_mlp(image: torch.Tensor, text: torch.Tensor, targets: torch.Tensor, epochs: int,
              hidden: int, batch_size: int, lr: float, seed: int) -> nn.Sequential:
    """The dense MLP on the concatenated inputs, sigmoid outputs and per-label BCE averaged as
    CACNet's is, by SGD at ``lr``, on the inputs' device."""
    torch.manual_seed(seed)
    model = dense_mlp(image.shape[1] + text.shape[1], hidden, targets.shape[1]).to(image.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batches = ShuffledBatches(image, text, targets, batch_size, seed)
    for _ in range(epochs):
        for x_img, x_txt, y in batches:
            optimizer.zero_grad(set_to_none=True)
            logits = model(torch.cat([x_img, x_txt], dim=1))
            F.binary_cross_entropy_with_logits(logits, y).backward()
            optimizer.step()
    return model.eval()


def hashtag_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {name: metric(scores, targets, k) for name, metric, k in HASHTAG_METRICS}


def table4(train: Sequence[Record], heldout: Sequence[Record], train_image: np.ndarray,
           heldout_image: np.ndarray, labels: Sequence[str], recipe: CACNetRecipe,
           device=None) -> dict[str, dict]:
    """Held-out metrics of each model, keyed by model name. CACNet trains ``recipe`` (its gamma
    rising from ``recipe.gamma`` to ``gamma_end`` over the last fifth of the epochs: the
    paper's 0.4 to 0.8 over 100 of 500), CACNet(gamma=1) the same with gamma 1; their rows also
    hold ``case2_steps`` of ``steps``. The MLP has ``recipe.dim`` units per hidden layer and
    CACNet's step size. Every model trains on ``device`` (None: the CPU)."""
    system = systems.get("cacnet")
    rows, trained = {}, None
    for name, run_recipe in (("CACNet", recipe),
                             ("CACNet(gamma=1)", replace(recipe, gamma=1.0, gamma_end=1.0))):
        trained = system.fit(run_recipe, (train, train_image), labels, True, device=device)
        heldout_targets = trained.targets(heldout)
        cases = trained.stats["case_steps"]
        rows[name] = {**hashtag_metrics(trained.logits(heldout, heldout_image), heldout_targets),
                      "case2_steps": cases["2"], "steps": cases["1"] + cases["2"]}
    device = device or "cpu"
    mlp = train_mlp(*(x.to(device) for x in trained.inputs(train, train_image)),
                    trained.targets(train).to(device), recipe.epochs, recipe.dim,
                    recipe.batch_size, recipe.lr * len(labels), recipe.seed)
    with torch.no_grad():
        scores = mlp(torch.cat(trained.inputs(heldout, heldout_image), dim=1).to(device)).cpu()
    rows["MLP"] = hashtag_metrics(scores, heldout_targets)
    return rows


def run(epochs: int = 30, device=None) -> dict[str, dict]:
    """Print Table 4 on the demo's tags task, the CACNets with the ``cacnet`` system's default
    recipe (``epochs`` of it) at the paper's 600 hidden units and Word2Vec text, trained on
    ``device``; returns its rows."""
    from mmfast.features import demo_features

    start = time.perf_counter()
    data, train, heldout, train_image, heldout_image = demo_features("tags")
    recipe = CACNetRecipe(dim=600, epochs=epochs, text_features="word2vec")  # DESIGN 3.2's
    rows = table4(train, heldout, train_image, heldout_image, data.labels, recipe, device)
    vocabulary = {word for record in train for word in tokenize(record.text)}
    unseen = sum(word not in vocabulary for record in heldout for word in tokenize(record.text))
    print(f"paper 000 (CACNet) on the emoji tags: {len(train)} train / {len(heldout)} held-out "
          f"items, {len(data.labels)} tags ({np.mean([len(r.labels) for r in train]):.2f} per "
          f"item), {unseen} held-out word occurrences unseen in training; {epochs} epochs, "
          f"{recipe.dim} hidden units, batch {recipe.batch_size}, SGD lr {recipe.lr} x "
          f"{len(data.labels)} tags")
    names = [name for name, _, _ in HASHTAG_METRICS]
    print(f"{'model':<16}" + "".join(f"{name:>8}" for name in names) + f"{'case 2':>16}")
    for model, row in rows.items():
        case2 = f"{row['case2_steps']}/{row['steps']}" if "steps" in row else "-"
        print(f"{model:<16}" + "".join(f"{100 * row[name]:>7.2f}%" for name in names)
              + f"{case2:>16}")
    for model, row in PAPER.items():
        print(f"{'paper ' + model:<16}" + "".join(
            f"{row[name]:>7.2f}%" if name in row else f"{'-':>8}" for name in names))
    print(f"({time.perf_counter() - start:.1f} s; paper: its CACEval set, 300 hashtags)")
    print(ordering("CACNet beats CACNet(gamma=1) on Acc@1, 3 and 5", all(
        rows["CACNet"][name] > rows["CACNet(gamma=1)"][name]
        for name in ("Acc@1", "Acc@3", "Acc@5"))))
    return rows
