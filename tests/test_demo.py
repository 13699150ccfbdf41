"""The README's main command, ``scripts/demo.sh``, end to end on a tiny budget.

The real demo reads the shipped pretrained runs and MNIST and trains for
minutes; here it reads a tiny exported run and a tiny fake MNIST, and trains a
few steps, through the same script and the same commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from relative_performer import cli
from relative_performer.data import sources

from conftest import centred_digits

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dim", "16", "--depth", "1", "--heads", "2", "--batch_size", "16", "--val_size", "60", "--no_progress_bar",
        "--accelerator", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> tuple[Path, Path]:
    """A fake MNIST and a pretrained/ folder with exported tiny runs of the demo's three models."""
    root = tmp_path_factory.mktemp("demo")
    data = root / "data"
    for split, n, seed in (("train", 300, 0), ("test", 100, 1)):
        images, labels = centred_digits(n, seed)
        img_file, lbl_file = sources.IDX_FILES[split]
        sources.write_idx(data / "MNIST" / "raw" / img_file, images)
        sources.write_idx(data / "MNIST" / "raw" / lbl_file, labels)
    for model in ("Performer", "RelativePerformer", "ExactRelativePerformer"):
        argv = ["train", model, "MNIST", *TINY, "--data_dir", data, "--log_path", root / "runs", "--exp_name", "MNIST",
                "--version", model, "--max_steps", "10"]
        assert cli.main([str(a) for a in argv]) == 0
        assert cli.main(["export", str(root / "runs" / "MNIST" / model), str(root / "pretrained" / "MNIST" / model),
                         "--check_images", "20"]) == 0
    return data, root / "pretrained"


def test_demo_runs_end_to_end_on_a_tiny_budget(tiny_world, tmp_path):
    data, pretrained = tiny_world
    out = tmp_path / "demo"
    venv = Path(sys.executable).parent.parent
    env = {
        **os.environ, "VENV": str(venv), "RELATIVE_PERFORMER_DATA": str(data), "PRETRAINED": str(pretrained),
        "DEMO_OUT": str(out), "DEMO_TEST_BATCHES": "1",
        "DEMO_MINUTES": "60",  # --max_steps ends the training, not the clock (a loaded machine is slow)
        "DEMO_TRAIN_ARGS": "--max_steps 12 --val_check_interval 6 --val_size 60 --no_progress_bar --accelerator cpu",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    shifted = pd.read_csv(out / "pretrained-shifted.csv")
    assert sorted(set(shifted["model"])) == ["ExactRelativePerformer", "Performer", "RelativePerformer"]
    assert len(shifted) == 3 * 17 and set(shifted["shift"]) == set(range(-8, 9))
    assert (out / "pretrained-shifted.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy (%) on shifted digits:" in done.stdout and "ExactRelativePerformer" in done.stdout

    run = out / "scratch" / "RelativePerformer" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 12
    assert "from scratch: 12 steps" in done.stdout
    assert pd.read_csv(out / "scratch-test.csv")["test_n"][0] == 64

    # Run again: the demo replaces its own previous from-scratch run instead of refusing.
    again = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]


def test_results_script_runs_end_to_end_on_the_tiny_runs(tiny_world, tmp_path):
    """scripts/results.sh (make results): every CSV, both figures and the README block, from tiny runs."""
    data, pretrained = tiny_world
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    env = {**os.environ, "PYTHON": sys.executable, "RELATIVE_PERFORMER_DATA": str(data), "PRETRAINED": str(pretrained),
           "RESULTS": str(out), "README": str(readme), "SHIFT_IMAGES": "6", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "results.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    test = pd.read_csv(out / "test.csv")
    assert sorted(test["model"]) == ["ExactRelativePerformer", "Performer", "RelativePerformer"]
    for name, axis_shifts in (("shifted-label1-x", 17), ("shifted-all-x", 17), ("shifted-all-y", 9)):
        frame = pd.read_csv(out / f"{name}.csv")
        assert len(frame) == 3 * axis_shifts, name
        assert (frame["n_images"] <= 6).all() and (frame["n_images"] > 0).all(), name  # SHIFT_IMAGES caps every test
    draws = pd.read_csv(out / "feature-draws-x.csv")
    assert sorted(set(draws["model"])) == ["ExactRelativePerformer", "RelativePerformer"]
    assert sorted(set(draws["feature_seed"].dropna())) == [1, 2, 3, 4, 5] and len(draws) == 2 * 6 * 17
    for figure in ("shifted.png", "shifted-all.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    text = readme.read_text()
    assert "old" not in text and "| `ExactRelativePerformer` |" in text and (out / "table.md").read_text() in text
