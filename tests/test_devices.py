"""``--device auto|cpu|cuda[:N]`` (mmfast.devices): what each value resolves to, the errors where
it cannot run, and, on a GPU, every system trained and applied there against the CPU."""

import argparse
import json

import numpy as np
import pytest
import torch

import mmfast
from mmfast.cli import main
from mmfast.data import Record, write_manifest
from mmfast.devices import cuda_ready, resolve_device

needs_no_gpu = pytest.mark.skipif(cuda_ready(), reason="a usable GPU is present")


def test_cpu_is_the_cpu_and_auto_is_the_cpu_without_a_usable_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if cuda_ready() else "cpu")


@needs_no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0"], ids=["any", "first"])  # an id "cuda"
def test_cuda_where_it_cannot_run_says_what_is_missing(name):  # would mark it a GPU test
    with pytest.raises(ValueError, match=rf"--device {name}: expected (mmfast built with its "
                                         r"CUDA kernels|a CUDA GPU)"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "cuda:-1", ""])
def test_values_other_than_auto_cpu_cuda_are_refused_by_the_parser(name, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--checkpoint", "c", "--input", "i.jsonl", "--device", name])
    assert stopped.value.code == 2
    assert "--device: expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """A learnable single-label manifest, its image features in a store."""
    from mmfast.data import FeatureStore

    root = tmp_path_factory.mktemp("devices")
    records = [Record(f"i{n}", "", f"w{n % 3} filler{n % 7}", (f"c{n % 3}",))
               for n in range(90)]
    write_manifest(root / "items.jsonl", records)
    image = np.eye(8)[np.arange(90) % 3] + 0.3 * np.random.default_rng(0).standard_normal(
        (90, 8))
    FeatureStore.write(root / "store", [r.id for r in records],
                       {"image": image.astype(np.float32)}, meta={"extractor": None})
    return root


@needs_no_gpu
def test_the_commands_name_the_device_they_cannot_use_in_one_line(items, capsys):
    command = ["train", "--train", str(items / "items.jsonl"), "--store", str(items / "store"),
               "--out", str(items / "ckpt"), "--epochs", "1", "--quiet"]
    assert main([*command, "--device", "cuda"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("mmfast train: --device cuda: expected") and "\n" not in error
    assert main([*command, "--device", "cpu"]) == 0  # and the CPU trains
    assert main(["eval", "--checkpoint", str(items / "ckpt"), "--input",
                 str(items / "items.jsonl"), "--store", str(items / "store"), "--json",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] > 0.9


def test_torchrun_ranks_take_their_local_gpu_and_train_over_nccl_there(monkeypatch):
    """Under torchrun a rank's GPU is cuda:LOCAL_RANK, and its training process group NCCL for
    the GPU tensors beside gloo for the CPU ones; on the CPU, gloo alone."""
    from mmfast.commands import _device, _process_group_backend

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = torch.device("cuda", 1 % torch.cuda.device_count()) if cuda_ready() else \
        torch.device("cpu")
    assert _device(argparse.Namespace(device="auto")) == expected
    assert _process_group_backend(torch.device("cpu")) == "gloo"
    assert _process_group_backend(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    if not cuda_ready():
        with pytest.raises(ValueError, match="--device cuda: expected"):
            _device(argparse.Namespace(device="cuda"))


@pytest.mark.cuda
def test_torchrun_trains_on_the_gpu_over_nccl(items, tmp_path):
    """One torchrun rank on the GPU (a machine with one GPU can hold no more NCCL ranks): its
    process group is NCCL and gloo, and it trains the additive fusion to the parameters one
    process trains on the GPU (float rounding of the GPU's sums)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    args = ["train", "--train", str(items / "items.jsonl"), "--store", str(items / "store"),
            "--model", "additive", "--epochs", "3", "--device", "cuda", "--valid-fraction", "0",
            "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
         "-m", "mmfast", *args, "--out", str(tmp_path / "ranks")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, ranks = (load_file(str(tmp_path / name / "model.safetensors"))
                  for name in ("one", "ranks"))
    for name in one:
        torch.testing.assert_close(ranks[name], one[name], atol=1e-4, rtol=1e-4)


def _learnable(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    classes = torch.arange(n) % 3
    texts = [f"w{int(c)} filler{int(r)}" for c, r in
             zip(classes, torch.randint(50, (n,), generator=generator))]
    image = torch.nn.functional.one_hot(classes, 8).float() + 0.3 * torch.randn(
        n, 8, generator=generator)
    return texts, image.numpy(), [f"c{int(c)}" for c in classes]


# one system of each trainer: fastText's Hogwild (CPU whatever the device), the minibatch
# fusions, the MLP, CACNet, an autoencoder
DEVICE_SYSTEMS = {"text": {}, "additive": {"dim": 16}, "bilinear_gated": {"dim": 8},
                  "mlp": {"dim": 32}, "cacnet": {"dim": 32, "text_features": "hashed",
                                                 "text_dim": 32, "image_dim": 8},
                  "joint_ae": {"text_features": "hashed", "text_dim": 32, "image_dim": 8}}


@pytest.mark.parametrize("system", DEVICE_SYSTEMS)
def test_a_system_moved_to_a_device_scores_as_before(system, device):
    """``Classifier.to`` / ``Fitted.to``: a model trained on the CPU gives the same scores (to
    float rounding), on the CPU, wherever its network is moved."""
    texts, image, labels = _learnable(120, 0)
    classifier = mmfast.Classifier(system, epochs=3, **DEVICE_SYSTEMS[system])
    classifier.fit(texts, image, labels)
    before = classifier.scores(texts, image)
    after = classifier.to(device).scores(texts, image)
    assert after.device.type == "cpu"
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("system", DEVICE_SYSTEMS)
def test_training_on_cuda_learns_as_on_the_cpu(system):
    """On a GPU: a model trained there (the same recipe and seed as on the CPU; the kernels'
    sums differ in order, so not bit for bit) classifies held-out items as well; fastText's
    models train on the CPU whatever the device."""
    texts, image, labels = _learnable(240, 0)
    test_texts, test_image, test_labels = _learnable(90, 1)
    on_gpu = mmfast.Classifier(system, device="cuda", epochs=10, **DEVICE_SYSTEMS[system])
    on_gpu.fit(texts, image, labels)
    trained_on = next(on_gpu.trained.model.parameters()).device.type
    assert trained_on == ("cpu" if system == "text" else "cuda")
    hits = np.mean([p == [t] for p, t in zip(on_gpu.predict(test_texts, test_image),
                                              test_labels)])
    assert hits > 0.9, (system, hits)


@pytest.mark.cuda
def test_classify_on_cuda_writes_what_the_cpu_writes(items, tmp_path):
    for system in ("additive", "cacnet"):
        checkpoint = tmp_path / system
        extra = ["--text-features", "hashed", "--dim", "16"] if system == "cacnet" else []
        assert main(["train", "--train", str(items / "items.jsonl"), "--store",
                     str(items / "store"), "--out", str(checkpoint), "--model", system,
                     "--epochs", "3", "--device", "cpu", "--quiet", *extra]) == 0
        outputs = []
        for device in ("cpu", "cuda"):
            output = tmp_path / f"{system}-{device}.jsonl"
            assert main(["classify", "--checkpoint", str(checkpoint), "--input",
                         str(items / "items.jsonl"), "--store", str(items / "store"),
                         "--output", str(output), "--device", device, "--quiet"]) == 0
            outputs.append([json.loads(line)["labels"] for line in
                            output.read_text().splitlines()])
        assert outputs[0] == outputs[1], system

