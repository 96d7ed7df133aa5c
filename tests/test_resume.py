"""A killed ``mmfast train`` resumes from its last saved state (``--checkpoint-every``,
``--resume``) and ends with the parameters of an uninterrupted run: in one process and under
two real torchrun processes. The runs are killed for real (SIGKILL right after an epoch's state
is saved: ``MMFAST_KILL_AFTER_EPOCH``), so nothing of the killed run's cleanup helps."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from mmfast.cli import main
from mmfast.data import FeatureStore, Record, write_manifest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]
SETTINGS = {"additive": [], "mlp": ["--dim", "16"], "text": [],
            "cacnet": ["--dim", "16", "--text-features", "hashed", "--text-dim", "8",
                       "--image-dim", "4"],
            "crossmodal_ae_ii": ["--text-features", "hashed", "--text-dim", "8", "--image-dim",
                                 "4", "--l2", "1"],
            "ananet": ["--dim", "8", "--text-dim", "4"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    records = [Record(f"i{n}", "", f"w{n % 3} f{n % 7}", (f"c{n % 3}",)) for n in range(100)]
    write_manifest(root / "items.jsonl", records)
    image = np.eye(8)[np.arange(100) % 3] + 0.3 * np.random.default_rng(0).standard_normal(
        (100, 8))
    ids = [record.id for record in records]
    FeatureStore.write(root / "store", ids, {"image": image.astype(np.float32)},
                       meta={"extractor": None})
    FeatureStore.write(root / "regions", ids, {"image": np.stack([image, image[:, ::-1]], 1)
                                               .astype(np.float32)}, meta={"extractor": None})
    return root


def _args(data, system: str) -> list[str]:
    store = data / ("regions" if system.startswith("ananet") else "store")
    return ["train", "--train", str(data / "items.jsonl"), "--store", str(store), "--model",
            system, "--epochs", "4", "--batch-size", "8", "--threads", "1", "--quiet",
            *SETTINGS[system]]


def _killed(command: list[str], after_epoch: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMFAST_KILL_AFTER_EPOCH": str(after_epoch)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _max_difference(one, two) -> float:
    one, two = (load_file(str(path / "model.safetensors")) for path in (one, two))
    assert one.keys() == two.keys()
    return max(float((one[name] - two[name]).abs().max()) for name in one)


@pytest.mark.parametrize("system", list(SETTINGS))
def test_a_killed_run_resumes_to_the_uninterrupted_runs_parameters(data, tmp_path, system):
    """Killed after epoch 2 of 4, resumed: the same parameters as one run of 4 epochs, exactly
    (the text model's Hogwild SGD too, on one thread). The state is gone once the checkpoint
    is written."""
    args = _args(data, system)
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    killed = _killed([sys.executable, "-m", "mmfast", *args, "--out", str(tmp_path / "resumed"),
                      "--checkpoint-every", "1"], after_epoch=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = tmp_path / "resumed" / "training-state"
    assert sorted(path.name for path in state.glob("*/epoch-*")) == ["epoch-0002"]
    assert main([*args, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert _max_difference(tmp_path / "whole", tmp_path / "resumed") == 0.0
    assert not state.exists()


def test_resume_refuses_another_run_and_a_missing_state(data, tmp_path, capsys):
    args = _args(data, "additive")
    out = str(tmp_path / "out")
    killed = _killed([sys.executable, "-m", "mmfast", *args, "--out", out,
                      "--checkpoint-every", "1"], after_epoch=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert main([*args, "--out", out, "--resume", "--lr", "1", "--seed", "3"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "recipe.lr 3.0 (now 1.0); recipe.seed 0 (now 3)" in error
    (tmp_path / "out" / "training-state" / "run.json").write_text("{")
    assert main([*args, "--out", out, "--resume"]) == 1
    assert "run.json: expected the JSON a run with --checkpoint-every writes, got unreadable" \
        in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "holds no training state" in capsys.readouterr().err
    # with --checkpoint-every too, nothing saved yet means a fresh start (a requeued job)
    assert main([*args, "--out", str(tmp_path / "none"), "--resume", "--checkpoint-every",
                 "2"]) == 0


def test_two_torchrun_processes_killed_resume_to_one_processs_parameters(data, tmp_path):
    """Both ranks killed after epoch 1 (a lost node takes the job down); the job rerun with
    --resume: rank 0 wrote the state, every rank reads it, and the DDP-trained model ends with
    the parameters of one uninterrupted process (float rounding)."""
    args = _args(data, "additive")
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    command = [*TORCHRUN, "-m", "mmfast", *args, "--out", str(tmp_path / "two")]
    killed = _killed([*command, "--checkpoint-every", "1"], after_epoch=1)
    assert killed.returncode != 0
    assert (tmp_path / "two" / "training-state" / "model" / "epoch-0001" / "config.json").is_file()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _max_difference(tmp_path / "one", tmp_path / "two") < 1e-5
    assert not (tmp_path / "two" / "training-state").exists()


@pytest.mark.parametrize("system", ["additive", "cacnet"])
def test_ranks_reading_shares_killed_resume_to_the_uninterrupted_runs_parameters(data,
                                                                                tmp_path,
                                                                                system):
    """--rank-data share: each rank's shuffle of its own share resumes where it stopped (every
    rank's generator moved alike, so rank 0's saved state is theirs): the parameters of the
    same two-rank run uninterrupted (DDP's additive fusion; CACNet, whose inputs' PCA is
    fitted from the ranks' summed scatter matrices)."""
    args = [*_args(data, system), "--rank-data", "share"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*TORCHRUN, "-m", "mmfast", *args, "--out", str(tmp_path / "whole")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    command = [*TORCHRUN, "-m", "mmfast", *args, "--out", str(tmp_path / "resumed")]
    killed = _killed([*command, "--checkpoint-every", "1"], after_epoch=2)
    assert killed.returncode != 0
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _max_difference(tmp_path / "whole", tmp_path / "resumed") < 1e-6
