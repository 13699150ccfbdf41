"""The shipped pretrained runs: complete, small, made by the project's commands, and scoring as recorded.

Each run in ``pretrained/`` was exported with ``relative-performer export``,
which recorded its loss and accuracy on the first ``n`` test images
(``results.json`` -> ``check``). Here every run is loaded as ``test`` loads it
and evaluated on the same images: a change to the models, the checkpoint
format or the data pipeline that alters what a shipped model computes fails
here. Needs the real MNIST / FashionMNIST (``make data``; CI has them).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from relative_performer.data.datasets import make_dataset
from relative_performer.errors import UserError
from relative_performer.evaluation.runs import load_run
from relative_performer.evaluation.runs import test_run as evaluate_run  # (not collected as a test)
from relative_performer.run_folder import find_runs

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"
RUNS = [run.path for run in find_runs([PRETRAINED])] if PRETRAINED.is_dir() else []
DEMO_RUNS = [PRETRAINED / "MNIST" / model for model in ("Performer", "RelativePerformer", "ExactRelativePerformer")]
MAX_CHECKPOINT_MB, MAX_FOLDER_MB = 5, 60


def _name(path: Path) -> str:
    return str(path.relative_to(PRETRAINED))


def test_the_demo_models_are_shipped():
    for run in DEMO_RUNS:
        assert (run / "checkpoints" / "best.ckpt").is_file(), f"{run} is missing: the demo needs it"


def test_the_folder_is_small():
    total = sum(f.stat().st_size for f in PRETRAINED.rglob("*") if f.is_file())
    assert total <= MAX_FOLDER_MB * 2**20, f"pretrained/ holds {total / 2**20:.1f} MB"


@pytest.mark.parametrize("run", RUNS, ids=_name)
def test_run_is_complete_and_made_by_the_train_command(run: Path):
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.csv", "results.json"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["best.ckpt"]
    assert (run / "checkpoints" / "best.ckpt").stat().st_size <= MAX_CHECKPOINT_MB * 2**20
    config = json.loads((run / "config.json").read_text())
    argv = shlex.split(config["command"])
    assert "--seed" in argv and int(argv[argv.index("--seed") + 1]) == config["seed"]
    # a run continued with `train --init_from` records its sources, back to one trained from scratch
    source = config.get("init_from")
    while source:
        assert argv[:3] == ["relative-performer", "train", "--init_from"]
        assert (source["model"], source["dataset"]) == (config["model"], config["dataset"])
        assert source["global_step"] > 0 and source["seed"] is not None
        argv = shlex.split(source["commands"][0])
        source = source["init_from"]
    assert argv[:4] == ["relative-performer", "train", config["model"], config["dataset"]]
    assert (run.parent.name, run.name) == (config["dataset"], config["model"])
    assert shlex.split(config["export_command"])[:2] == ["relative-performer", "export"]
    results = json.loads((run / "results.json").read_text())
    assert results["test_acc"] is not None and results["check"]["n_images"] >= 500


@pytest.mark.parametrize("run", RUNS, ids=_name)
def test_run_scores_its_recorded_accuracy(run: Path):
    loaded = load_run(run)
    try:
        make_dataset(loaded.dataset, "test", loaded.data_dir(None), loaded.embedding_type)
    except UserError as exc:
        pytest.skip(f"{loaded.dataset} is not available here ({exc}); `make data` fetches it")
    check = json.loads((run / "results.json").read_text())["check"]
    row = evaluate_run(loaded, splits=(check["split"],), limit=check["n_images"])
    assert row[f"{check['split']}_n"] == check["n_images"]
    assert abs(row[f"{check['split']}_acc"] - check["accuracy"]) <= 0.005
    assert row[f"{check['split']}_loss"] == pytest.approx(check["loss"], rel=1e-3)
