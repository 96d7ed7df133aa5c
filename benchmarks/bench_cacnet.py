"""One CACNet training iteration (phase 1 + phase 2): mmfast vs the literal reference vs a plain
dense MLP SGD step of the same size (600 -> 600 -> 600 -> 300, BCE), side by side.

    pytest benchmarks/bench_cacnet.py --benchmark-enable

B in {20 (the paper's batch), 4096}, 1 and 2 threads, each case of phase 2 forced (gamma = 1:
case 1, the full network; gamma = 0: case 2, the cross-active sub-networks). By FLOPs a CACNet
iteration is 1.77x (case 1) or 1.69x (case 2) a dense step: phase 1 trains two sub-networks,
phase 2 runs the full and both passive forwards, then one backward.
"""

import pytest
import torch
import torch.nn.functional as F

import mmfast
from mmfast.nn import CACNet
from mmfast.train import CACNetTrainer
from mmfast.experiments.cacnet_demo import dense_mlp

DIM, HIDDEN, CLASSES = 300, 600, 300


def _batch(batch):
    g = torch.Generator().manual_seed(0)
    x_img = torch.randn(batch, DIM, generator=g).relu()
    x_txt = torch.randn(batch, DIM, generator=g)
    targets = (torch.rand(batch, CLASSES, generator=g) < 0.03).float()
    return x_img, x_txt, targets


def _dense_mlp_step(batch):
    torch.manual_seed(0)
    mlp = dense_mlp(2 * DIM, HIDDEN, CLASSES)
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    x_img, x_txt, targets = _batch(batch)
    x = torch.cat([x_img, x_txt], 1)  # given the concatenated input for free

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(mlp(x), targets).backward()
        optimizer.step()

    return step


@pytest.mark.parametrize("case", [1, 2], ids=lambda c: f"case{c}")
@pytest.mark.parametrize("batch", [20, 4096], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("impl", ["mmfast", "reference", "dense_mlp"])
def test_train_step(benchmark, record, threads, batch, case, impl):
    record(benchmark, f"train step B={batch} case {case} {threads}thr", impl)
    rounds = 30 if batch == 20 else 3
    if impl == "dense_mlp":
        benchmark.pedantic(_dense_mlp_step(batch), rounds=rounds, warmup_rounds=1)
        return
    torch.manual_seed(0)
    model = CACNet(DIM, DIM, HIDDEN, CLASSES)
    trainer = CACNetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05),
                            gamma_schedule=1.0 if case == 1 else 0.0)
    x_img, x_txt, targets = _batch(batch)
    with mmfast.backend("fused" if impl == "mmfast" else "reference"):
        result = benchmark.pedantic(trainer.step, (x_img, x_txt, targets), rounds=rounds,
                                    warmup_rounds=1)
    assert result["case"] == case
