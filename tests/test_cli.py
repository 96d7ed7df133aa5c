"""The mmfast command and the build facts it reports."""

import json
import subprocess
import sys

import pytest

import mmfast
from mmfast.cli import main


def test_info_reports_the_build():
    facts = mmfast.info()
    assert facts["version"] == mmfast.__version__
    assert facts["cpu_isa"] and facts["compiler"] and facts["intra_op_threads"] >= 1
    assert isinstance(facts["cuda_kernels"], bool)
    assert facts["cuda_architectures"] == [] or facts["cuda_kernels"]


def test_info_command(capsys):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == mmfast.info()
    assert main(["info"]) == 0
    assert "cpu_isa" in capsys.readouterr().out


def test_demo_small_run(capsys):
    assert main(["demo", "--pq", "--num-vectors", "3000", "--num-train", "1000", "--dim", "32",
                 "--subvectors", "4", "--centroids", "16", "--iters", "3"]) == 0
    out = capsys.readouterr().out
    assert "PQ   M=4 C=16" in out and "RSPQ M=4 C=16 R=4" in out
    assert "x " in out  # the speed-up column


def test_demo_rejects_a_train_split_larger_than_the_data(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--pq", "--num-vectors", "100", "--num-train", "100"])
    assert "--num-train must be smaller than --num-vectors" in capsys.readouterr().err


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "mmfast.cli", "info"], capture_output=True,
                            text=True, check=True)
    assert "cuda_kernels" in result.stdout
