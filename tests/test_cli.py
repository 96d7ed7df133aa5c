"""The mmfast command and the build facts it reports."""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import mmfast
from mmfast.cli import build_parser, main


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
    result = subprocess.run([sys.executable, "-m", "mmfast", "info"], capture_output=True,
                            text=True, check=True)
    assert "cuda_kernels" in result.stdout


def test_help_version_and_bad_arguments_answer_without_importing_torch():
    """The parser, its help (every recipe default included) and its checks are torch-free, so
    they answer in well under the 1.5 s that importing torch takes."""
    code = """
import sys
from mmfast.cli import main
for argv in (["--version"], ["--help"], ["train", "--help"], ["classify", "--help"],
             ["train", "--train", "t.jsonl", "--store", "s", "--out", "o", "--lr", "-1"],
             ["train", "--model", "nonesuch"]):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code in (0, 2), (argv, exit.code)
heavy = sorted(name for name in ("torch", "numpy", "mmfast._C") if name in sys.modules)
assert not heavy, f"imported {heavy}"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"mmfast {mmfast.__version__}" in result.stdout
    assert "--lr: expected a finite number > 0, got -1.0" in result.stderr
    assert "3.0 for continuous" in " ".join(result.stdout.split())  # --help lists defaults


def test_features_train_classify_eval(tmp_path, capsys):
    from mmfast.data import emoji_dataset, read_manifest, write_manifest

    data = emoji_dataset("group", root=tmp_path / "cache")
    train = tmp_path / "train.jsonl"
    write_manifest(train, read_manifest(data.train)[::40])
    heldout = tmp_path / "heldout.jsonl"
    write_manifest(heldout, read_manifest(data.heldout)[::20])
    store, checkpoint = tmp_path / "store", tmp_path / "ckpt"
    assert main(["features", "--manifest", str(train), "--manifest", str(heldout), "--store",
                 str(store), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
                 "--quiet"]) == 0
    assert main(["train", "--train", str(train), "--store", str(store), "--out", str(checkpoint),
                 "--model", "pq", "--epochs", "2", "--subvectors", "4", "--centroids", "4",
                 "--valid-fraction", "0.3", "--quiet"]) == 0
    assert "valid accuracy" in capsys.readouterr().out
    training = json.loads((checkpoint / "config.json").read_text())["training"]
    assert training["metric"] == "accuracy" and training["best_epoch"] in (1, 2)
    assert len(training["history"]) == 2 and training["valid_items"] > 0
    tuned = tmp_path / "tuned"
    assert main(["train", "--train", str(train), "--store", str(store), "--out", str(tuned),
                 "--model", "text", "--valid-fraction", "0.3", "--autotune",
                 "--autotune-duration", "1", "--quiet"]) == 0
    assert "autotune: " in capsys.readouterr().out
    config = json.loads((tuned / "config.json").read_text())
    assert config["training"]["autotune"]["trials"] >= 1
    # the refit (where it pays) stops the chosen recipe at its kept epoch
    refit = config["training"].get("refit", {"epochs": None})
    assert config["recipe"] == {**config["training"]["autotune"]["recipe"],
                                "stop_epoch": refit["epochs"]}
    searches = []  # a trial budget: the same search, recipe and weights on every run
    for run in range(2):
        assert main(["train", "--train", str(train), "--store", str(store), "--out",
                     str(tmp_path / f"trials{run}"), "--model", "pq", "--subvectors", "4",
                     "--centroids", "4", "--valid-fraction", "0.3", "--autotune",
                     "--autotune-trials", "4", "--autotune-duration", "600", "--quiet"]) == 0
        assert "autotune: 4 trials in " in capsys.readouterr().out
        searches.append((json.loads((tmp_path / f"trials{run}" / "config.json").read_text()),
                         (tmp_path / f"trials{run}" / "model.safetensors").read_bytes()))
    assert searches[0][0]["training"]["autotune"]["recipe"] == \
        searches[1][0]["training"]["autotune"]["recipe"]
    assert searches[0][1] == searches[1][1]
    output = tmp_path / "predictions.jsonl"
    assert main(["classify", "--checkpoint", str(checkpoint), "--input", str(heldout),
                 "--store", str(store), "--output", str(output), "--top-k", "2",
                 "--quiet"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(read_manifest(heldout)) and all(len(r["labels"]) == 2 for r in rows)
    assert "items/s" in capsys.readouterr().out
    # each row: the model's best labels, best first, and their probabilities to 6 decimals
    from mmfast.data import FeatureStore
    from mmfast.features import store_features
    from mmfast.systems import load

    trained = load(checkpoint)
    records = read_manifest(heldout)
    probabilities = trained.probabilities(records, store_features(FeatureStore(store), records))
    for record, row, p in zip(records, rows, probabilities.tolist()):
        best = sorted(range(len(p)), key=lambda i: -p[i])[:2]
        assert row == {"id": record.id, "labels": [trained.labels[i] for i in best],
                       "scores": [round(p[i], 6) for i in best]}
    assert main(["classify", "--checkpoint", str(checkpoint), "--input", str(heldout),
                 "--store", str(store), "--output", str(output), "--threshold", "0.15",
                 "--threads", "1", "--quiet"]) == 0
    for row, p in zip(map(json.loads, output.read_text().splitlines()), probabilities.tolist()):
        chosen = sorted((i for i in range(len(p)) if p[i] >= 0.15), key=lambda i: -p[i])
        assert row["labels"] == [trained.labels[i] for i in chosen]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--input", str(heldout), "--store",
                 str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert 0 <= report["accuracy"] <= 1 and {"f1_macro", "P@3", "Acc@5"} <= set(report)
    confusion, plot = tmp_path / "confusion.csv", tmp_path / "f1.png"
    assert main(["eval", "--checkpoint", str(checkpoint), "--input", str(heldout), "--store",
                 str(store), "--per-class", "--confusion", str(confusion), "--plot",
                 str(plot)]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "Smileys & Emotion" in table  # a row per class
    rows = confusion.read_text().splitlines()
    assert rows[0].startswith("true\\predicted,") and len(rows) == 1 + len(data.labels)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(heldout.read_text() + '{"id": "x"}\n')
    csv_output = tmp_path / "predictions.csv"
    assert main(["classify", "--checkpoint", str(checkpoint), "--input", str(bad), "--store",
                 str(store), "--output", str(csv_output), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert re.fullmatch(r"mmfast classify: \S*bad.jsonl:\d+: missing field\(s\) text; [^\n]*\n",
                        error)
    assert not csv_output.exists()  # no partial output
    assert main(["classify", "--checkpoint", str(checkpoint), "--input", str(bad), "--store",
                 str(store), "--output", str(csv_output), "--skip-bad", "--quiet"]) == 0
    assert "1 bad records and 0 unreadable images skipped" in capsys.readouterr().out
    assert csv_output.read_text().startswith("id,labels,scores")


def test_real_demo_small_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MMFAST_CACHE", str(tmp_path))
    assert main(["demo", "--limit", "80", "--epochs", "1", "--models", "text,additive,rspq"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "rspq" in out and "classify items/s" in out


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--threshold", "nan"], r"--threshold: expected a probability in \[0, 1\], got nan"),
    (["--top-k", "0"], "--top-k: expected an integer >= 1, got 0"),
    (["--output", "SAME"], "--output: expected a file other than --input"),
])
def test_values_that_would_lose_data_are_refused_up_front(tmp_path, capsys, flags, message):
    manifest = tmp_path / "in.jsonl"
    manifest.write_text('{"id": "a", "text": "x"}\n')
    flags = [str(manifest) if flag == "SAME" else flag for flag in flags]
    args = ["classify", "--checkpoint", str(tmp_path / "none"), "--input", str(manifest),
            "--output", str(tmp_path / "out.jsonl"), *flags]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert manifest.read_text() == '{"id": "a", "text": "x"}\n'


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    command = [sys.executable, "-m", "mmfast.cli", "eval", "--checkpoint", str(tmp_path),
               "--input", str(tmp_path / "missing.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("mmfast eval: ") and result.stderr.count("\n") == 1
    assert "is not an mmfast checkpoint" in result.stderr
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "MMFAST_DEBUG": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr


def _checkpoint(tmp_path):
    """A small trained text checkpoint and a manifest to run it on."""
    from mmfast.data import FeatureStore, Record, write_manifest

    records = [Record(f"i{n}", "", f"word{n % 3} other", (f"c{n % 3}",)) for n in range(30)]
    manifest = tmp_path / "items.jsonl"
    write_manifest(manifest, records)
    store = tmp_path / "store"
    FeatureStore.write(store, [r.id for r in records], {"image": np.zeros((30, 4), np.float32)})
    checkpoint = tmp_path / "ckpt"
    assert main(["train", "--train", str(manifest), "--store", str(store), "--out",
                 str(checkpoint), "--model", "text", "--epochs", "2", "--quiet"]) == 0
    return checkpoint, manifest, store


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:50]),
     r"model.safetensors: expected a safetensors file, got one that cannot be read"),
    (lambda c: (c / "config.json").write_text("{not json"),
     r"config.json: expected an mmfast checkpoint's JSON config, got unreadable JSON"),
    (lambda c: (c / "config.json").write_text(json.dumps(
        {**json.loads((c / "config.json").read_text()), "labels": "abc"})),
     r"config.json: labels must be a list of 3 strings"),
    (lambda c: (c / "config.json").write_text(json.dumps(
        {key: value for key, value in json.loads((c / "config.json").read_text()).items()
         if key not in ("labels", "quantizer")})),
     r"config.json: expected a checkpoint of mmfast train .* without \['labels', 'quantizer'\]"),
])
def test_broken_checkpoints_are_one_clear_line(tmp_path, capsys, damage, message):
    checkpoint, manifest, store = _checkpoint(tmp_path)
    capsys.readouterr()
    damage(checkpoint)
    assert main(["eval", "--checkpoint", str(checkpoint), "--input", str(manifest), "--store",
                 str(store)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("mmfast eval: ") and error.count("\n") == 1
    assert re.search(message, error), error


def test_a_folder_in_use_by_another_process_is_refused(tmp_path, capsys):
    """Two `mmfast train` into one --out (or two `features` into one store) silently replaced
    the first one's work: the folder is locked while written, and a second writer stops at
    once naming the holder's pid; a killed holder leaves no stale lock."""
    checkpoint, manifest, store = _checkpoint(tmp_path)
    capsys.readouterr()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mmfast._io import locked\n"
         "with locked(sys.argv[1], 'test'):\n    print('held', flush=True); time.sleep(60)",
         str(checkpoint)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = (checkpoint / "model.safetensors").read_bytes()
        assert main(["train", "--train", str(manifest), "--store", str(store), "--out",
                     str(checkpoint), "--model", "text", "--epochs", "3", "--quiet"]) == 1
        error = capsys.readouterr().err
        assert f"in use by pid {holder.pid}" in error and error.count("\n") == 1
        assert (checkpoint / "model.safetensors").read_bytes() == before
        from mmfast.data import Record
        from mmfast.features import image_store

        with pytest.raises(OSError, match=f"in use by pid {holder.pid}"):
            image_store([Record("new", "x.png", "t")], checkpoint)
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--train", str(manifest), "--store", str(store), "--out",
                 str(checkpoint), "--model", "text", "--epochs", "3", "--quiet"]) == 0


def test_unreadable_images_name_their_manifest_line_or_are_skipped(tmp_path, capsys):
    """A truncated PNG or a record without an image stopped `features` with the image's error
    and no manifest line; `classify` had no way to pass over it."""
    from PIL import Image

    from mmfast.data import FeatureStore, Record, write_manifest

    records = []
    for n in range(4):
        path = tmp_path / f"ok{n}.png"
        Image.new("RGB", (40, 40), (60 * n, 20, 200 - 40 * n)).save(path)
        records.append(Record(f"ok{n}", str(path), f"item {n % 2}", (f"c{n % 2}",)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "ok0.png").read_bytes()[:60])
    records.insert(2, Record("truncated", str(truncated), "item 0", ("c0",)))
    records.append(Record("no-image", "", "item 1", ("c1",)))
    manifest, store = tmp_path / "items.jsonl", tmp_path / "store"
    write_manifest(manifest, records)
    features = ["features", "--manifest", str(manifest), "--store", str(store),
                "--image-size", "32", "--quiet"]
    assert main(features) == 1
    error = capsys.readouterr().err
    assert re.fullmatch(r"mmfast features: \S*items.jsonl:3: id 'truncated': \S*truncated.png: "
                        r"expected an image Pillow can decode, [^\n]*--skip-bad[^\n]*\n", error)
    assert not FeatureStore.exists(store)
    assert main(features + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "4 items in" in out and "0 bad records and 2 unreadable images skipped" in out
    assert re.search(r"skipped \S*items.jsonl:3: image \S*truncated.png", out)
    assert re.search(r"skipped \S*items.jsonl:6: image \n", out + "\n")
    assert sorted(FeatureStore(store).ids) == ["ok0", "ok1", "ok2", "ok3"]

    # classify without --store extracts the images itself, as the checkpoint records
    good = tmp_path / "good.jsonl"
    write_manifest(good, [r for r in records if r.id.startswith("ok")])
    checkpoint, output = tmp_path / "ckpt", tmp_path / "out.jsonl"
    assert main(["train", "--train", str(good), "--store", str(store), "--out", str(checkpoint),
                 "--model", "continuous", "--epochs", "2", "--valid-fraction", "0",
                 "--quiet"]) == 0
    classify = ["classify", "--checkpoint", str(checkpoint), "--input", str(manifest),
                "--output", str(output), "--quiet"]
    capsys.readouterr()
    assert main(classify) == 1
    assert re.fullmatch(r"mmfast classify: \S*items.jsonl:3: \S*truncated.png: expected an "
                        r"image [^\n]*\n", capsys.readouterr().err)
    assert main(classify + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "classified 4 items" in out and "0 bad records and 2 unreadable images skipped" in out
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [
        "ok0", "ok1", "ok2", "ok3"]


def test_bf16_features_are_recorded_and_classify_extracts_new_images_the_same_way(tmp_path,
                                                                                capsys):
    from PIL import Image

    from mmfast.data import FeatureStore, Record, write_manifest
    from mmfast.features import store_features
    from mmfast.systems import load

    records = []
    for n in range(6):
        path = tmp_path / f"{n}.png"
        image = Image.new("RGB", (48, 48), (40 * n, 250 - 40 * n, 90))
        image.paste((255 - 40 * n, 30, 20 * n), (8 * n % 32, 4, 8 * n % 32 + 16, 20))
        image.save(path)
        records.append(Record(str(n), str(path), f"item {n % 2}", (f"c{n % 2}",)))
    manifest, store, checkpoint = tmp_path / "items.jsonl", tmp_path / "store", tmp_path / "ckpt"
    write_manifest(manifest, records)
    features = ["features", "--manifest", str(manifest), "--store", str(store), "--image-size",
                "32", "--quiet"]
    assert main(features + ["--precision", "bf16"]) == 0
    assert FeatureStore(store).meta["extractor"]["precision"] == "bf16"
    write_manifest(tmp_path / "more.jsonl", [Record("7", records[0].image, "x", ("c0",))])
    features[2] = str(tmp_path / "more.jsonl")
    assert main(features) == 1  # fp32 features into a bf16 store
    assert "holds features of" in capsys.readouterr().err
    assert main(["train", "--train", str(manifest), "--store", str(store), "--out",
                 str(checkpoint), "--model", "continuous", "--epochs", "3", "--valid-fraction",
                 "0", "--quiet"]) == 0
    output = tmp_path / "out.jsonl"
    assert main(["classify", "--checkpoint", str(checkpoint), "--input", str(manifest),
                 "--output", str(output), "--top-k", "2", "--quiet"]) == 0
    trained = load(checkpoint)
    expected = trained.probabilities(records, store_features(FeatureStore(store), records))
    for row, p in zip(map(json.loads, output.read_text().splitlines()), expected.tolist()):
        assert row["scores"] == [round(p[trained.labels.index(label)], 6)
                                 for label in row["labels"]]
    assert main(["features", "--manifest", str(manifest), "--store", str(tmp_path / "regions"),
                 "--regions", "detector", "--precision", "bf16", "--quiet"]) == 1
    assert capsys.readouterr().err == ("mmfast features: --precision bf16: expected fp32 with "
                                       "--regions detector (the detector runs in fp32), got "
                                       "another\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_classify_resumes_the_output_of_a_killed_run(tmp_path, capsys, suffix):
    """A SIGKILLed classify left its hidden temporary behind and had to start over."""
    checkpoint, manifest, store = _checkpoint(tmp_path)
    full, output = tmp_path / f"full{suffix}", tmp_path / f"out{suffix}"
    command = ["classify", "--checkpoint", str(checkpoint), "--input", str(manifest), "--store",
               str(store), "--batch-size", "7", "--quiet"]
    assert main(command + ["--output", str(full)]) == 0
    lines = full.read_text().splitlines(keepends=True)
    # what a run killed after 12 items leaves: its temporary, a dead pid, a cut last line
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    header = 1 if suffix == ".csv" else 0
    (tmp_path / f".{output.name}.{dead}.x.tmp").write_text(
        "".join(lines[:header + 12]) + lines[header + 12][:5])
    capsys.readouterr()
    assert main(command + ["--output", str(output), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "classified 30 items" in out and "12 of them resumed from an interrupted run" in out
    assert output.read_text() == full.read_text()
    assert not list(tmp_path.glob(f".{output.name}.*.tmp"))
    # an unfinished output of another input is refused, not mixed in
    (tmp_path / f".{output.name}.{dead}.y.tmp").write_text(
        "".join(lines[:header]) + lines[header].replace("i0", "elsewhere"))
    assert main(command + ["--output", str(output), "--resume"]) == 1
    assert "--resume: the interrupted output of" in capsys.readouterr().err


def test_every_option_says_what_it_is_and_its_default():
    parser = build_parser()
    subcommands = next(action for action in parser._actions
                       if isinstance(action, argparse._SubParsersAction)).choices
    for name, subcommand in subcommands.items():
        formatter = subcommand._get_formatter()
        for action in subcommand._actions:
            if not action.option_strings or action.dest == "help":
                continue
            where = f"mmfast {name} {action.option_strings[0]}"
            assert action.help, f"{where} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), where
    assert "(default: 8192)" in " ".join(subcommands["classify"].format_help().split())


@pytest.mark.parametrize("flags, message", [
    (["--autotune-trials", "3"], "--autotune-trials: expected with --autotune, got it alone"),
    (["--autotune", "--autotune-trials", "0"], "--autotune-trials: expected an integer >= 1"),
])
def test_autotune_trials_are_checked(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--train", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "ckpt"),
              *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command, flags, message", [
    ("eval", ["--confusion", "IN"], "--confusion: expected a file other than --input"),
    ("eval", ["--confusion", "c.csv", "--plot", "c.csv"],
     "--plot: expected a file other than --confusion"),
    ("classify", ["--output", "t.json", "--thresholds", "t.json"],
     "--output: expected a file other than --thresholds"),
    ("classify", ["--output", "FOLDER"], "--output: expected a file to write, got the folder"),
    ("train", ["--buckets", "10000000000000"], r"--buckets: expected at most 4,294,967,296"),
])
def test_outputs_over_inputs_or_folders_are_refused_up_front(tmp_path, capsys, command, flags,
                                                             message):
    """Found by the fuzz (tests/test_robustness.py): each of these replaced a file or failed
    after writing one."""
    manifest = tmp_path / "in.jsonl"
    manifest.write_text('{"id": "a", "text": "x"}\n')
    (tmp_path / "t.json").write_text("{}")
    replace = {"IN": str(manifest), "FOLDER": str(tmp_path)}
    flags = [replace.get(flag, str(tmp_path / flag) if "." in flag and not flag[0].isdigit()
                         else flag) for flag in flags]
    base = {"eval": ["eval", "--checkpoint", str(tmp_path), "--input", str(manifest)],
            "classify": ["classify", "--checkpoint", str(tmp_path), "--input", str(manifest)],
            "train": ["train", "--train", str(manifest), "--store", str(tmp_path), "--out",
                      str(tmp_path / "ckpt")]}[command]
    if command == "classify" and "--output" not in flags:
        base += ["--output", str(tmp_path / "out.jsonl")]
    with pytest.raises(SystemExit) as exit_:
        main(base + flags)
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert manifest.read_text() == '{"id": "a", "text": "x"}\n'
    assert (tmp_path / "t.json").read_text() == "{}"


def test_gpu_figures_script_runs_on_the_cpu(tmp_path):
    """scripts/gpu_figures.py, what scripts/gpu_check.sh runs on a GPU, as a smoke run here:
    every op timed, its roofline fraction and reference timed, one JSON written."""
    out = tmp_path / "figures.json"
    root = os.path.join(os.path.dirname(__file__), "..")
    result = subprocess.run([sys.executable, os.path.join(root, "scripts", "gpu_figures.py"),
                             "--device", "cpu", "--quick", "--no-compile", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["peaks"]["flops_per_s"] > 0 and figures["peaks"]["bytes_per_s"] > 0
    assert set(figures["ops"]) == {
        "pq_encode", "bilinear_fusion forward", "bilinear_fusion forward+backward",
        "cross_attention_cosine forward", "cross_attention_cosine forward+backward",
        "cacnet forward"}
    for row in figures["ops"].values():
        assert row["seconds"] > 0 and 0 < row["roofline_fraction"]
        assert row["reference_eager_seconds"] > 0
