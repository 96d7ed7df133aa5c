"""Sharded classification: --shard I/N parts joined by mmfast merge, and two real torchrun
processes (gloo) whose rank 0 merges, give the single-process run's rows."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mmfast.cli import main
from mmfast.data import Record, write_manifest
from mmfast.sharding import merge, parse_shard


def _why(stderr: str) -> str:
    """What a failed torchrun says about its failure: the ranks' own error lines (a C++
    ``terminate``'s ``what()`` comes long before torchrun's summary), then the summary's end."""
    said = [line for line in stderr.splitlines()
            if any(word in line for word in ("Error", "error", "terminate", "what()", "Abort"))]
    return "\n".join(said[:30]) + "\n...\n" + stderr[-1500:]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    records = [Record(f"i{n:03d}", "", f"w{n % 3} filler{n % 7}", (f"c{n % 3}",))
               for n in range(101)]
    write_manifest(root / "items.jsonl", records)
    assert main(["train", "--train", str(root / "items.jsonl"), "--model", "text",
                 "--epochs", "3", "--out", str(root / "ckpt"), "--quiet"]) == 0
    single = root / "single.jsonl"
    assert main(["classify", "--checkpoint", str(root / "ckpt"), "--input",
                 str(root / "items.jsonl"), "--output", str(single), "--top-k", "2",
                 "--quiet"]) == 0
    return root, sorted(single.read_text().splitlines())


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_shards_joined_by_merge_are_the_single_run(text_model, suffix, capsys):
    root, single = text_model
    output = root / f"sharded{suffix}"
    for index in range(3):
        assert main(["classify", "--checkpoint", str(root / "ckpt"), "--input",
                     str(root / "items.jsonl"), "--output", str(output), "--top-k", "2",
                     "--shard", f"{index}/3", "--quiet"]) == 0
    sizes = [len(open(f"{output}.shard-{i}-of-3").read().splitlines()) for i in range(3)]
    assert sizes == ([34, 34, 33] if suffix == ".jsonl" else [35, 35, 34])  # CSV: + header
    assert main(["merge", "--output", str(output)]) == 0
    assert "merged 101 rows" in capsys.readouterr().out
    lines = output.read_text().splitlines()
    if suffix == ".csv":
        assert lines[0] == "id,labels,scores" and len(lines) == 102
    else:
        assert sorted(lines) == single
    assert not list(root.glob(f"sharded{suffix}.shard-*"))  # the parts are gone


def test_merge_refuses_incomplete_or_mixed_parts(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert main(["merge", "--output", str(output)]) == 1
    assert "expected the parts of one sharded run (out.jsonl.shard-I-of-N), got none" in \
        capsys.readouterr().err
    (tmp_path / "out.jsonl.shard-0-of-2").write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"shards \[1\] of 2 have no part yet"):
        merge(output)
    (tmp_path / "out.jsonl.shard-1-of-3").write_text('{"id": "b"}\n')
    with pytest.raises(ValueError, match="expected the parts of one sharded run"):
        merge(output)
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="expected I/N with 0 <= I < N"):
            parse_shard(bad)


def test_two_torchrun_processes_classify_and_rank_0_merges(text_model):
    root, single = text_model
    output = root / "ranks.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mmfast", "classify", "--checkpoint", str(root / "ckpt"), "--input",
         str(root / "items.jsonl"), "--output", str(output), "--top-k", "2", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, _why(result.stderr)
    assert "merged the 2 ranks' parts: 101 rows" in result.stdout
    assert sorted(output.read_text().splitlines()) == single
    assert not list(root.glob("ranks.jsonl.shard-*"))
    assert json.loads(output.read_text().splitlines()[0])["id"] == "i000"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    records = []
    for n in range(9):
        Image.new("RGB", (40, 40), (n * 25, 255 - n * 25, 80)).save(root / f"{n}.png")
        records.append(Record(f"i{n}", str(root / f"{n}.png"), "x", ("a",)))
    write_manifest(root / "items.jsonl", records + records[:2])  # two ids repeated
    return root


EXTRACT = ["--image-size", "32", "--quiet"]  # the packaged weights: the same in every process


def _rows(store) -> dict:
    from mmfast.data import FeatureStore

    store = FeatureStore(store)
    return {item: store["image"][row].tolist() for row, item in enumerate(store.ids)}


def test_sharded_features_merged_are_the_single_runs_store(images, capsys):
    import warnings

    manifest = ["features", "--manifest", str(images / "items.jsonl"), *EXTRACT]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the repeated ids
        assert main([*manifest, "--store", str(images / "single")]) == 0
        for index in range(2):
            assert main([*manifest, "--store", str(images / "sharded"), "--shard",
                         f"{index}/2"]) == 0
    assert main(["merge", "--store", str(images / "sharded")]) == 0
    assert "merged 9 items" in capsys.readouterr().out
    single, sharded = _rows(images / "single"), _rows(images / "sharded")
    assert single.keys() == sharded.keys()
    for item, row in single.items():
        assert row == pytest.approx(sharded[item], abs=1e-5)
    assert not list(images.glob("sharded.shard-*"))


def test_two_torchrun_processes_extract_and_rank_0_merges_the_store(images):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mmfast", "features", "--manifest", str(images / "items.jsonl"), "--store",
         str(images / "ranks"), *EXTRACT],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, _why(result.stderr)
    assert "merged the 2 ranks' parts: 9 rows" in result.stdout
    assert sorted(_rows(images / "ranks")) == [f"i{n}" for n in range(9)]


def test_two_torchrun_processes_train_the_text_model_by_merged_hogwild(text_model, tmp_path,
                                                                       capsys):
    """Each rank trains on its half of every epoch and the ranks merge their updates; rank 0
    writes the one checkpoint, which learns the task; a system without a distributed trainer
    is refused by name."""
    root, _ = text_model
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", "-m", "mmfast", "train", "--train", str(root / "items.jsonl"),
               "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, "--model", "text", "--epochs", "5", "--valid-fraction",
                             "0", "--out", str(tmp_path / "ckpt")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, _why(result.stderr)
    assert result.stdout.count("trained text on 101 items") == 1  # rank 0 reports
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--input",
                 str(root / "items.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.9
    result = subprocess.run([*command, "--model", "text", "--autotune", "--out",
                             str(tmp_path / "tuned")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode != 0
    assert "torchrun: --autotune searches in one process" in result.stderr


@pytest.mark.parametrize("system", ["additive", "crossmodal_ae_ii", "ananet", "cacnet"])
def test_two_torchrun_processes_train_as_one_process_does(tmp_path, system):
    """Two ranks, each with half of every batch and the gradients averaged (weighted by the
    parts' rows), take the steps one process takes on the whole batches: the same parameters,
    to float rounding (the additive fusion under DistributedDataParallel: sparse embedding
    gradients and dense ones, SGD; the autoencoder and AnANet trainers averaging their
    gradients, Adam; CACNet's two phases, the case of each step chosen by the whole batch's
    beta)."""
    import numpy as np
    from safetensors.torch import load_file

    from mmfast.data import FeatureStore

    # 99 items: the last batch of 3 splits 2 + 1, and the ranks' gradients must be weighted by
    # their rows to be the whole batch's
    records = [Record(f"i{n}", "", f"w{n % 3} f{n % 7}", (f"c{n % 3}",)) for n in range(99)]
    write_manifest(tmp_path / "items.jsonl", records)
    image = np.eye(8)[np.arange(99) % 3] + 0.3 * np.random.default_rng(0).standard_normal(
        (99, 8))
    if system == "ananet":  # regions: the vector in two cells
        image = np.stack([image, image[:, ::-1]], axis=1)
    FeatureStore.write(tmp_path / "store", [r.id for r in records],
                       {"image": image.astype(np.float32)}, meta={"extractor": None})
    settings = {"additive": [], "crossmodal_ae_ii": ["--text-features", "hashed", "--text-dim",
                                                     "8", "--image-dim", "4", "--l2", "1"],
                "ananet": ["--dim", "8", "--text-dim", "4"],
                "cacnet": ["--dim", "16", "--text-features", "hashed", "--text-dim", "8",
                           "--image-dim", "4"]}[system]
    args = ["train", "--train", str(tmp_path / "items.jsonl"), "--store", str(tmp_path / "store"),
            "--model", system, "--epochs", "3", "--batch-size", "8", "--valid-fraction", "0",
            "--threads", "1", "--quiet", *settings]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mmfast", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, _why(result.stderr)
    one, two = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        assert (one[name] - two[name]).abs().max() < 1e-5, name


def _one_process_and_two_ranks_reading_shares(tmp_path, system: str, settings: list[str],
                                              capsys) -> tuple[dict, dict, str, dict]:
    """``mmfast train`` of ``system`` in one process and under two torchrun ranks with
    --rank-data share, on 200 learnable items (item 1 alone, in rank 1's share, has the label
    "solo" and the word "lonely"): the two checkpoints' configs, the ranks' standard output and
    both held-out accuracies."""
    import numpy as np

    from mmfast.data import FeatureStore

    records = [Record(f"i{n}", "", f"w{n % 3} f{n % 7}" + (" lonely" if n == 1 else ""),
                      ("solo" if n == 1 else f"c{n % 3}",)) for n in range(240)]
    write_manifest(tmp_path / "items.jsonl", records[:200])
    write_manifest(tmp_path / "heldout.jsonl", records[200:])
    image = np.eye(8)[np.arange(240) % 3] + 0.3 * np.random.default_rng(0).standard_normal(
        (240, 8))
    if system == "ananet":  # regions: the vector in two cells
        image = np.stack([image, image[:, ::-1]], axis=1)
    FeatureStore.write(tmp_path / "store", [r.id for r in records],
                       {"image": image.astype(np.float32)}, meta={"extractor": None})
    args = ["train", "--train", str(tmp_path / "items.jsonl"), "--store", str(tmp_path / "store"),
            "--model", system, "--epochs", "5", "--threads", "1", "--quiet", *settings]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mmfast", *args, "--rank-data", "share", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, _why(result.stderr)
    one, two = (json.loads((tmp_path / name / "config.json").read_text())
                for name in ("one", "two"))
    assert two["labels"] == one["labels"] and "solo" in two["labels"]
    # the validation split is by record: the shares' splits make one process's
    assert two["training"]["valid_items"] == one["training"]["valid_items"]
    # the ranks refit (or not) as one process does, on the whole training split
    assert two["training"].get("refit", {}).get("items") == \
        one["training"].get("refit", {}).get("items") in (None, 200)
    capsys.readouterr()
    accuracy = {}
    for name in ("one", "two"):
        assert main(["eval", "--checkpoint", str(tmp_path / name), "--input",
                     str(tmp_path / "heldout.jsonl"), "--store", str(tmp_path / "store"),
                     "--json"]) == 0
        accuracy[name] = json.loads(capsys.readouterr().out)["accuracy"]
    return one, two, result.stdout, accuracy


@pytest.mark.parametrize("system", ["text", "additive", "mlp", "pq"])
def test_two_ranks_reading_their_shares_fit_the_whole_split(tmp_path, system, capsys):
    """--rank-data share: each rank reads every other record, yet the checkpoint holds the
    whole manifest's vocabulary (word counts merged, in one process's order) and labels (one
    label only rank 1 reads), its image mean and document frequencies (summed over the ranks),
    and the model learns as one process's does (held-out accuracy; validation gathered)."""
    from safetensors.torch import load_file

    settings = {"text": [], "additive": ["--dim", "16"],
                "mlp": ["--dim", "32", "--epochs", "30"],
                "pq": ["--subvectors", "4", "--centroids", "8"]}[system]
    one, two, printed, accuracy = _one_process_and_two_ranks_reading_shares(
        tmp_path, system, settings, capsys)
    assert two["text"] == one["text"] and "lonely" in two["text"]["vocabulary"]
    valid = one["training"]["valid_items"]
    assert 0 < valid < 200
    assert f"trained {system} on {200 - valid} items (the ranks' shares: " in printed
    weights = [load_file(str(tmp_path / name / "model.safetensors")) for name in ("one", "two")]
    for statistic in ("image_mean", "idf"):
        if statistic in weights[0]:
            torch.testing.assert_close(weights[1][statistic], weights[0][statistic])
    assert min(accuracy.values()) > 0.9, accuracy


@pytest.mark.parametrize("system", ["cacnet", "crossmodal_ae_ii", "ananet"])
def test_two_ranks_reading_their_shares_fit_dense_inputs_on_the_whole_split(tmp_path, system,
                                                                           capsys):
    """--rank-data share for the systems whose inputs are fitted (paper 000's CACNet, paper
    002's autoencoders, paper 004's AnANet): the PCA (scatter matrices summed), the
    standardization (moments summed) and the Word2Vec vocabulary (texts gathered) are one
    process's, the label only rank 1 reads is in the checkpoint, the autoencoder's probes are
    fitted on every rank's features, and the model learns as one process's does."""
    from safetensors.torch import load_file

    settings = {"crossmodal_ae_ii": ["--text-features", "word2vec", "--text-dim", "8",
                                     "--image-dim", "4", "--l2", "1", "--epochs", "20"],
                "ananet": ["--dim", "8", "--text-dim", "4", "--lr", "0.03", "--epochs", "20"],
                "cacnet": ["--dim", "16", "--text-features", "hashed", "--text-dim", "8",
                           "--image-dim", "4", "--epochs", "10"]}[system]
    one, two, _, accuracy = _one_process_and_two_ranks_reading_shares(
        tmp_path, system, settings, capsys)
    fitted = "words.safetensors" if system == "ananet" else "inputs.safetensors"
    inputs = [load_file(str(tmp_path / name / fitted)) for name in ("one", "two")]
    for name in ("pca_mean", "pca_components", "image_mean", "image_std", "text_mean",
                 "text_std"):
        if name in inputs[0]:
            torch.testing.assert_close(inputs[1][name], inputs[0][name], atol=1e-4, rtol=1e-4)
    texts = [config["words"] if system == "ananet" else config["inputs"]["text"]
             for config in (one, two)]
    words = [sorted(text.get("words", [])) for text in texts]
    assert words[0] == words[1]
    if system != "cacnet":  # hashed text features have no vocabulary
        assert "lonely" in words[1]
    assert min(accuracy.values()) >= 0.9, accuracy
