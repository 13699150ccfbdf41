"""The ``relative-performer`` command end to end, on a tiny fake MNIST.

Most tests call ``main(argv)`` in this process (fast); the DDP and kill tests
run the command in subprocesses. One small run is trained once per module and
shared by the evaluation tests; tests that change a run work on a copy.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from relative_performer import cli
from relative_performer.allocator import keep_freed_memory
from relative_performer.checkpoint import RECORD_KEY
from relative_performer.data import sources
from relative_performer.models import MODELS
from relative_performer.training import run as run_module
from relative_performer.training.callbacks import EMA_KEY

from conftest import centred_digits

N_TRAIN, N_TEST, VAL_SIZE, BATCH = 300, 100, 60, 16
STEPS_PER_EPOCH = -(-(N_TRAIN - VAL_SIZE) // BATCH)  # 15
TINY = ["--dim", "16", "--depth", "1", "--heads", "2", "--batch_size", str(BATCH), "--val_size", str(VAL_SIZE),
        "--no_progress_bar", "--num_workers", "0", "--accelerator", "cpu", "--log_every_n_steps", "5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for split, n, seed in (("train", N_TRAIN, 0), ("test", N_TEST, 1)):
        images, labels = centred_digits(n, seed)
        img_file, lbl_file = sources.IDX_FILES[split]
        sources.write_idx(root / "MNIST" / "raw" / img_file, images)
        sources.write_idx(root / "MNIST" / "raw" / lbl_file, labels)
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def train_args(data_dir: Path, log_path: Path, model: str = "RelativePerformer", *extra: str) -> list[str]:
    return ["train", model, "MNIST", *TINY, "--data_dir", data_dir, "--log_path", log_path, "--seed", "1", *extra]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """One finished 2-epoch run: LOG/default/version_0."""
    log = tmp_path_factory.mktemp("runs")
    code = cli.main([str(a) for a in train_args(data_dir, log, "RelativePerformer", "--max_epochs", "2")])
    assert code == 0
    return log / "default" / "version_0"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ==========================================================================
# --help
# ==========================================================================


@pytest.mark.parametrize("command", [[], ["train"], ["test"], ["test-recursive"], ["test-shifted"], ["plot-shifted"], ["export"], ["data"], ["equivariance"]])
def test_every_command_has_help(capsys, command):
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0
    assert "usage: relative-performer" in out


def test_top_level_help_lists_the_commands(capsys):
    _, out, _ = run_cli(capsys, "--help")
    for name in cli.COMMANDS:
        assert name in out


@pytest.mark.parametrize("model", list(MODELS))
def test_train_help_lists_exactly_the_models_own_options(capsys, model):
    code, out, _ = run_cli(capsys, "train", model, "MNIST", "--help")
    assert code == 0
    for option in ("--learning_rate", "--warmup", "--schedule", "--dim", "--depth", "--heads", "--attn_dropout",
                   "--ff_dropout", "--feature_redraw_interval", "--no_projection", "--nb_features", "--kernel",
                   "--log_path", "--exp_name", "--version", "--batch_size", "--embedding_type", "--resume",
                   "--init_from"):
        assert option in out, option
    own = set(MODELS[model].options)
    every = {name for spec in MODELS.values() for name in spec.options}
    for name in own:
        assert f"--{name}" in out
    for name in every - own:
        assert f"--{name}" not in out


def test_relative_performer_help_shows_pos_scales_and_defaults(capsys):
    _, out, _ = run_cli(capsys, "train", "RelativePerformer", "MNIST", "--help")
    assert "--pos_scales" in out and "--content_rel_attn" in out and "(default: 4)" in out
    _, out, _ = run_cli(capsys, "train", "Performer", "MNIST", "--help")
    assert "--pos_scales" not in out and "--clipping_dist" not in out


def test_options_of_another_model_are_rejected(capsys):
    code, _, err = run_cli(capsys, "train", "Performer", "MNIST", "--pos_scales", "2")
    assert_one_line_error(code, err, "--pos_scales")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "NoSuchModel", "MNIST"], "invalid choice"),
        (["train", "Performer", "SVHN"], "invalid choice"),
        (["train", "Performer"], "required"),
        (["frobnicate"], "invalid choice"),
        (["train", "Performer", "MNIST", "--max_time", "5 minutes"], "DD:HH:MM:SS"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, fragment):
    assert_one_line_error(*run_cli(capsys, *argv)[::2], fragment)


# ==========================================================================
# train -> test -> test-recursive -> test-shifted -> plot-shifted
# ==========================================================================


def test_run_folder_layout(trained):
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    config = json.loads((trained / "config.json").read_text())
    for key in ("model", "model_config", "config_version", "dataset", "training", "runtime", "seed", "command",
                "package_version", "parameters", "sessions"):
        assert key in config, key
    assert config["model"] == "RelativePerformer" and config["dataset"] == "MNIST" and config["seed"] == 1
    assert config["model_config"]["dim"] == 16 and config["model_config"]["pos_scales"] == 4
    assert config["training"]["learning_rate"] == 1e-3 and config["training"]["batch_size"] == BATCH
    assert config["command"].startswith("relative-performer train RelativePerformer MNIST")
    machine = config["sessions"][0]["machine"]  # where it trained, for the record
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert machine["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert machine["malloc"] == ("keep" if keep_freed_memory() else "default")
    results = json.loads((trained / "results.json").read_text())
    for key in ("best_val_acc", "best_val_loss", "test_acc", "test_loss", "parameters", "epochs", "train_seconds"):
        assert results[key] is not None, key
    assert results["epochs"] == 2 and results["global_step"] == 2 * STEPS_PER_EPOCH
    metrics = pd.read_csv(trained / "metrics.csv")
    for column in ("train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert column in metrics, column
    assert results["test_acc"] == pytest.approx(metrics["test/acc"].dropna().iloc[-1])


def test_checkpoints_load_weights_only_and_carry_the_model_record(trained):
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(trained / "checkpoints" / name, weights_only=True)
        record = checkpoint[RECORD_KEY]
        assert record["model"] == "RelativePerformer" and record["config"]["dim"] == 16
        assert record["dataset"] == "MNIST"
    last = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH
    counters = [v for k, v in last["state_dict"].items() if k.endswith("_extra_state")]
    assert counters and all(c["steps"] == 2 * STEPS_PER_EPOCH for c in counters)


def test_test_and_test_recursive_write_one_row_per_run(capsys, trained, tmp_path):
    out_csv = tmp_path / "new" / "folder" / "test.csv"  # the folder is created
    code, out, err = run_cli(capsys, "test", trained, "--output", out_csv)
    assert code == 0, err
    row = pd.read_csv(out_csv)
    assert len(row) == 1
    for column in ("run_dir", "model", "dataset", "dim", "depth", "heads", "learning_rate", "batch_size",
                   "embedding_type", "parameters", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert column in row, column
    results = json.loads((trained / "results.json").read_text())
    assert row["test_acc"][0] == pytest.approx(results["test_acc"], abs=1e-6)
    assert row["test_n"][0] == N_TEST and row["val_n"][0] == VAL_SIZE

    second = copy_run(trained, tmp_path / "tree" / "b" / "version_7")
    copy_run(trained, tmp_path / "tree" / "a" / "version_0")
    (tmp_path / "tree" / "not_a_run").mkdir()
    (second / "checkpoints" / "best.ckpt").unlink()  # skipped with a warning
    code, out, err = run_cli(capsys, "test-recursive", tmp_path / "tree", "--output", tmp_path / "all.csv",
                             "--limit_batches", "1", "--batch_size", "32")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "all.csv")
    assert list(rows["run_dir"]) == [str(tmp_path / "tree" / "a" / "version_0")]
    assert rows["test_n"][0] == 32
    assert "warning: skipping" in err and "version_7" in err


def test_test_shifted_and_plot(capsys, trained, tmp_path):
    out_csv = tmp_path / "shift.csv"
    code, out, err = run_cli(capsys, "test-shifted", trained, "--labels", "1", "--min_shift", "8", "--output", out_csv)
    assert code == 0, err
    rows = pd.read_csv(out_csv)
    assert list(rows.columns[:10]) == ["run_dir", "model", "dataset", "axis", "shift", "n_images",
                                       "accuracy_mean", "accuracy_std", "loss_mean", "loss_std"]
    assert list(rows["shift"]) == list(range(-8, 9))
    assert (rows["n_images"] == N_TEST // 10).all()
    assert rows["accuracy_mean"].between(0, 1).all()

    y_csv = tmp_path / "shift_y.csv"
    code, _, err = run_cli(capsys, "test-shifted", trained, "--labels", "all", "--min_shift", "4", "--axis", "y",
                           "--feature_seed", "3", "--output", y_csv)
    assert code == 0, err
    y_rows = pd.read_csv(y_csv)
    assert len(y_rows) == 2 * 9 and set(y_rows["axis"]) == {"y"} and (y_rows["n_images"] == N_TEST).all()
    own, redrawn = y_rows[y_rows["feature_seed"].isna()], y_rows[y_rows["feature_seed"] == 3]
    assert len(own) == len(redrawn) == 9
    # other features change the outputs (a barely trained model: the losses differ in the 5th digit)
    assert not np.allclose(own["loss_mean"].to_numpy(), redrawn["loss_mean"].to_numpy(), rtol=0, atol=1e-9)

    png = tmp_path / "plots" / "shift.png"
    code, _, err = run_cli(capsys, "plot-shifted", out_csv, y_csv, "--output", png, "--title", "tiny")
    assert code == 0, err
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_test_shifted_max_images_takes_the_first_qualifying_images(capsys, trained, tmp_path):
    rows = {}
    for limit in (None, 3):
        extra = [] if limit is None else ["--max_images", str(limit)]
        code, _, err = run_cli(capsys, "test-shifted", trained, "--labels", "all", "--min_shift", "2", *extra,
                               "--output", tmp_path / f"{limit}.csv")
        assert code == 0, err
        rows[limit] = pd.read_csv(tmp_path / f"{limit}.csv")
    assert (rows[3]["n_images"] == 3).all() and (rows[None]["n_images"] == N_TEST).all()
    code, _, err = run_cli(capsys, "test-shifted", trained, "--max_images", "0", "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "--max_images")


def test_redrawn_features_are_fixed_by_the_seed(trained):
    from relative_performer.evaluation.runs import load_run
    from relative_performer.evaluation.shifted import draw_features

    a, b = load_run(trained).model, load_run(trained).model
    assert draw_features(a, 5) == draw_features(b, 5) > 0
    for fa, fb in zip(a.feature_maps(), b.feature_maps()):
        torch.testing.assert_close(fa.projection, fb.projection)


def test_export_writes_a_small_run_that_evaluates_the_same(capsys, trained, tmp_path):
    dest = tmp_path / "shared" / "MNIST" / "RelativePerformer"
    code, out, err = run_cli(capsys, "export", trained, dest, "--check_images", "40")
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoints", "config.json", "metrics.csv", "results.json"]
    assert [p.name for p in (dest / "checkpoints").iterdir()] == ["best.ckpt"]
    slim = torch.load(dest / "checkpoints" / "best.ckpt", weights_only=True)
    full = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=True)
    assert "optimizer_states" in full and "optimizer_states" not in slim and "loops" not in slim
    assert slim[RECORD_KEY] == full[RECORD_KEY] and slim["global_step"] == full["global_step"]
    assert (dest / "checkpoints" / "best.ckpt").stat().st_size < 0.6 * (trained / "checkpoints" / "best.ckpt").stat().st_size
    config, results = (json.loads((dest / name).read_text()) for name in ("config.json", "results.json"))
    original = json.loads((trained / "config.json").read_text())
    assert config["command"] == original["command"] and config["exported_from"] == str(trained)
    assert config["export_command"].startswith("relative-performer export ")
    assert results["check"]["n_images"] == 40 and results["test_acc"] == json.loads((trained / "results.json").read_text())["test_acc"]

    # The exported run evaluates exactly as the original, and its check is what `test` measures on 40 images.
    rows = []
    for run in (trained, dest):
        code, _, err = run_cli(capsys, "test", run, "--output", tmp_path / f"{run.name}.csv")
        assert code == 0, err
        rows.append(pd.read_csv(tmp_path / f"{run.name}.csv"))
    assert rows[0]["test_acc"][0] == rows[1]["test_acc"][0] and rows[0]["val_loss"][0] == rows[1]["val_loss"][0]
    code, _, err = run_cli(capsys, "test", dest, "--output", tmp_path / "check.csv", "--limit_batches", "1", "--batch_size", "40")
    check = pd.read_csv(tmp_path / "check.csv")
    assert check["test_acc"][0] == pytest.approx(results["check"]["accuracy"], abs=1e-9)
    assert check["test_loss"][0] == pytest.approx(results["check"]["loss"], rel=1e-5)
    code, _, err = run_cli(capsys, "test-shifted", dest.parent.parent, "--min_shift", "2", "--output", tmp_path / "s.csv")
    assert code == 0, err

    # Refusals: a non-empty destination (nothing is touched), an unfinished run, resuming an export.
    before = (dest / "results.json").read_text()
    code, _, err = run_cli(capsys, "export", trained, dest)
    assert_one_line_error(code, err, "already exists")
    assert (dest / "results.json").read_text() == before
    unfinished = copy_run(trained, tmp_path / "unfinished")
    (unfinished / "results.json").unlink()
    code, _, err = run_cli(capsys, "export", unfinished, tmp_path / "out")
    assert_one_line_error(code, err, "has not finished", "--resume")
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, "train", "--resume", dest)
    assert code == 2 and "Traceback" not in err


# ==========================================================================
# Existing runs, resume
# ==========================================================================


def test_training_into_an_existing_run_is_refused(capsys, data_dir, trained):
    log = trained.parent.parent
    code, _, err = run_cli(capsys, *train_args(data_dir, log, "RelativePerformer", "--version", "0"))
    assert_one_line_error(code, err, "already exists", "--resume")
    code, _, err = run_cli(capsys, "train", "--resume", trained)
    assert_one_line_error(code, err, "has finished", "--max_epochs")


def test_version_numbers_and_names(capsys, data_dir, tmp_path):
    code, out, err = run_cli(capsys, *train_args(data_dir, tmp_path, "NoposPerformer", "--max_steps", "3",
                                                 "--limit_val_batches", "1", "--limit_test_batches", "1"))
    assert code == 0, err
    code, out, err = run_cli(capsys, *train_args(data_dir, tmp_path, "NoposPerformer", "--max_steps", "3",
                                                 "--version", "mine", "--limit_val_batches", "1",
                                                 "--limit_test_batches", "1", "--schedule", "noam", "--warmup", "2"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["mine", "version_0"]
    # stopped by max_steps before any validation: the final weights are validated and kept as best
    results = json.loads((tmp_path / "default" / "mine" / "results.json").read_text())
    assert results["global_step"] == 3 and results["stopped_by"] == "max_steps" and results["best_val_acc"] is not None


class InterruptAt(L.Callback):
    """Simulates Ctrl-C after ``step`` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_where_it_stopped(capsys, monkeypatch, data_dir, tmp_path):
    k = STEPS_PER_EPOCH + 4  # in the second epoch
    monkeypatch.setattr(run_module, "train", functools.partial(run_module.train, callbacks=[InterruptAt(k)]))
    argv = train_args(data_dir, tmp_path, "RelativePerformer", "--max_epochs", "3", "--feature_redraw_interval", "5",
                      "--checkpoint_every_n_steps", "1000")
    code, out, err = run_cli(capsys, *argv)
    assert code == 130, err
    run = tmp_path / "default" / "version_0"
    assert f"train --resume {run}" in out
    assert not (run / "results.json").exists()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == k
    counters = [v for key, v in last["state_dict"].items() if key.endswith("_extra_state")]
    assert all(c["steps"] == k and c["redraws"] == k // 5 for c in counters)
    monkeypatch.undo()

    code, _, err = run_cli(capsys, "train", "--resume", run, "--dim", "32")  # cannot change the model
    assert_one_line_error(code, err, "--dim 32 differs")
    code, _, err = run_cli(capsys, "train", "--resume", run, "--version", "3")
    assert_one_line_error(code, err, "cannot be combined with --resume")

    code, out, err = run_cli(capsys, "train", "--resume", run, "--no_progress_bar")
    assert code == 0, err
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    total = 3 * STEPS_PER_EPOCH
    assert final["global_step"] == total
    counters = [v for key, v in final["state_dict"].items() if key.endswith("_extra_state")]
    assert all(c["steps"] == total and c["redraws"] == total // 5 for c in counters)
    assert len({c["seed"] for c in counters}) == len(counters)
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 3 and results["global_step"] == total
    config = json.loads((run / "config.json").read_text())
    assert [s.get("resumed_from_step") for s in config["sessions"]] == [None, k]
    metrics = pd.read_csv(run / "metrics.csv")
    val_epochs = metrics.dropna(subset=["val/acc"])["epoch"].tolist()
    assert val_epochs == [0, 1, 2]  # the first session's epoch-0 validation survives, none duplicated
    assert metrics["test/acc"].notna().sum() == 1

    # a finished run may be trained further with a larger budget
    code, out, err = run_cli(capsys, "train", "--resume", run, "--max_epochs", "4", "--no_progress_bar")
    assert code == 0, err
    assert json.loads((run / "results.json").read_text())["epochs"] == 4


class WeightsAtStart(L.Callback):
    """Keeps a copy of the model's state when training starts."""

    def __init__(self):
        self.state = None

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() if torch.is_tensor(v) else v for k, v in pl_module.model.state_dict().items()}


def test_init_from_starts_a_new_run_from_the_best_weights(capsys, monkeypatch, data_dir, trained, tmp_path):
    source = copy_run(trained, tmp_path / "source")
    best = torch.load(source / "checkpoints" / "best.ckpt", weights_only=True)
    expected = {k[len("model."):]: v for k, v in best["state_dict"].items() if k.startswith("model.")}
    start = WeightsAtStart()
    monkeypatch.setattr(run_module, "train", functools.partial(run_module.train, callbacks=[start]))
    code, out, err = run_cli(capsys, "train", "--init_from", source, *TINY, "--data_dir", data_dir,
                             "--log_path", tmp_path, "--exp_name", "ft", "--max_steps", "4", "--learning_rate", "1e-4",
                             "--seed", "7", "--limit_val_batches", "1", "--limit_test_batches", "1")
    assert code == 0, err
    monkeypatch.undo()
    assert set(start.state) == set(expected)
    for key, value in expected.items():  # every weight, random feature and redraw counter
        if torch.is_tensor(value):
            assert torch.equal(start.state[key], value), key
        else:
            assert start.state[key] == value, key
    run = tmp_path / "ft" / "version_0"
    config = json.loads((run / "config.json").read_text())
    source_config = json.loads((source / "config.json").read_text())
    assert config["model"] == "RelativePerformer" and config["dataset"] == "MNIST"
    assert config["model_config"] == source_config["model_config"]  # the source's model, not TINY's defaults
    assert config["seed"] == 7 and config["training"]["learning_rate"] == 1e-4
    record = config["init_from"]
    assert record["run_dir"] == str(source) and record["checkpoint"] == "checkpoints/best.ckpt"
    assert record["global_step"] == best["global_step"] and record["seed"] == source_config["seed"]
    assert record["commands"] == [s["command"] for s in source_config["sessions"]]
    assert json.loads((run / "results.json").read_text())["global_step"] == 4  # a fresh step count
    # the new run resumes like any other, and keeps its record
    code, _, err = run_cli(capsys, "train", "--resume", run, "--max_steps", "6", "--no_progress_bar")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["init_from"] == record


def test_init_from_may_set_the_options_that_change_no_weight(capsys, data_dir, trained, tmp_path):
    # fine-tuning on fixed features, with other dropouts: the source's weights and features, the new options
    source_config = json.loads((Path(trained) / "config.json").read_text())["model_config"]
    assert source_config["feature_redraw_interval"] != 0 and source_config["attn_dropout"] != 0.25
    code, _, err = run_cli(capsys, "train", "--init_from", trained, "--feature_redraw_interval", "0",
                           "--attn_dropout", "0.25", "--ff_dropout", "0", *TINY, "--data_dir", data_dir, "--log_path", tmp_path,
                           "--exp_name", "fixed", "--max_steps", "3", "--limit_val_batches", "1",
                           "--limit_test_batches", "1", "--no_progress_bar")
    assert code == 0, err
    run = tmp_path / "fixed" / "version_0"
    config = json.loads((run / "config.json").read_text())["model_config"]
    assert (config["feature_redraw_interval"], config["attn_dropout"], config["ff_dropout"]) == (0, 0.25, 0)
    assert {k: v for k, v in config.items() if k not in ("feature_redraw_interval", "attn_dropout", "ff_dropout")} \
        == {k: v for k, v in source_config.items() if k not in ("feature_redraw_interval", "attn_dropout", "ff_dropout")}
    source = torch.load(Path(trained) / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    projections = [k for k in source if k.endswith("feature_map.projection")]
    assert projections
    for key in projections:  # never redrawn in the new run
        assert torch.equal(after[key], source[key]), key
        state = key.replace("projection", "_extra_state")
        assert after[state]["redraws"] == source[state]["redraws"]
        assert after[state]["steps"] == source[state]["steps"] + 3


def test_init_from_errors(capsys, data_dir, trained, tmp_path):
    base = ["--data_dir", data_dir, "--log_path", tmp_path, "--max_steps", "1"]
    code, _, err = run_cli(capsys, "train", "--init_from", trained, "--resume", trained, *base)
    assert_one_line_error(code, err, "give one of them")
    code, _, err = run_cli(capsys, "train", "--init_from", trained, "NoposPerformer", "MNIST", *base)
    assert_one_line_error(code, err, "holds a RelativePerformer", "leave MODEL out")
    code, _, err = run_cli(capsys, "train", "--init_from", trained, "--dim", "32", *base)
    assert_one_line_error(code, err, "--dim 32 differs", "keeps its model options", "--feature_redraw_interval")
    code, _, err = run_cli(capsys, "train", "--init_from", tmp_path / "nowhere", *base)
    assert_one_line_error(code, err, "does not exist")
    empty = copy_run(trained, tmp_path / "empty")
    for ckpt in (empty / "checkpoints").iterdir():
        ckpt.unlink()
    code, _, err = run_cli(capsys, "train", "--init_from", empty, *base)
    assert_one_line_error(code, err, "has no checkpoint")
    assert not (tmp_path / "default").exists()  # no run folder was made for any of them


# ==========================================================================
# Errors
# ==========================================================================


def test_run_without_checkpoint(capsys, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.unlink()
    code, _, err = run_cli(capsys, "test", run, "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "no checkpoint")
    code, _, err = run_cli(capsys, "test", tmp_path / "nowhere", "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "does not exist")


def test_checkpoint_of_another_model(capsys, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["model"] = "Performer"
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "test", run, "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "RelativePerformer", "Performer")


def test_checkpoint_of_another_config_version(capsys, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    checkpoint[RECORD_KEY]["config_version"] = 999
    torch.save(checkpoint, best)
    code, _, err = run_cli(capsys, "test", run, "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "config version 999")


def test_corrupt_checkpoint(capsys, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "test", run, "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "corrupt")
    (run / "results.json").unlink()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "train", "--resume", run)
    assert_one_line_error(code, err, "corrupt")


def test_missing_data(capsys, trained, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "test", trained, "--output", tmp_path / "x.csv", "--data_dir", tmp_path / "empty")
    assert_one_line_error(code, err, "relative-performer data fetch MNIST")


def test_shift_test_refuses_cifar_and_bad_labels(capsys, trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    checkpoint[RECORD_KEY]["dataset"] = "CIFAR10"
    torch.save(checkpoint, best)
    config = json.loads((run / "config.json").read_text())
    config["dataset"] = "CIFAR10"
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "test-shifted", run, "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "MNIST and FashionMNIST only")
    code, _, err = run_cli(capsys, "test-shifted", trained, "--labels", "one", "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "--labels")
    code, _, err = run_cli(capsys, "test-shifted", trained, "--min_shift", "20", "--output", tmp_path / "x.csv")
    assert_one_line_error(code, err, "too large")


def test_bad_model_configuration_and_trainer_settings(capsys, data_dir, tmp_path):
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--heads", "3"))
    assert_one_line_error(code, err, "divisible")
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--limit_val_batches", "0"))
    assert_one_line_error(code, err, "validation")
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--accelerator", "tpu_v9"))
    assert_one_line_error(code, err)
    assert not (tmp_path / "default").exists() or not any((tmp_path / "default").iterdir())


def test_data_command_is_wired_to_the_data_layer(capsys, data_dir, tmp_path):
    code, _, err = run_cli(capsys, "data", "verify", "MNIST", "--data_dir", data_dir)  # a fake MNIST: wrong counts
    assert_one_line_error(code, err, "per-class counts")
    code, _, err = run_cli(capsys, "data", "verify", "mnist", "--data_dir", tmp_path)
    assert_one_line_error(code, err, "relative-performer data fetch MNIST")


def test_plot_rejects_other_csvs(capsys, tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    code, _, err = run_cli(capsys, "plot-shifted", tmp_path / "x.csv", "--output", tmp_path / "x.png")
    assert_one_line_error(code, err, "not a test-shifted CSV")


def test_debug_shows_the_traceback(trained, tmp_path):
    from relative_performer.errors import UserError

    with pytest.raises(UserError):
        cli.main(["--debug", "test", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.csv")])


# ==========================================================================
# Subprocesses: DDP, a killed run
# ==========================================================================


def command(*argv) -> list[str]:
    return [sys.executable, "-m", "relative_performer", *map(str, argv)]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(data_dir, tmp_path):
    argv = train_args(data_dir, tmp_path, "Performer", "--devices", "2", "--strategy", "ddp", "--max_steps", "4",
                      "--limit_val_batches", "2", "--limit_test_batches", "2")
    proc = subprocess.run(command(*argv), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "default").iterdir())
    assert runs == ["version_0"]  # the second process joined the first one's run folder
    run = tmp_path / "default" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 4 and results["test_acc"] is not None
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_periodic_checkpoint(data_dir, tmp_path):
    argv = train_args(data_dir, tmp_path, "Performer", "--max_epochs", "1000", "--checkpoint_every_n_steps", "3",
                      "--limit_val_batches", "1")
    proc = subprocess.Popen(command(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "default" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 6:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    step = torch.load(last, weights_only=True)["global_step"]
    resume = subprocess.run(command("train", "--resume", run, "--max_steps", step + 2, "--no_progress_bar"),
                            capture_output=True, text=True, timeout=240)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == step + 2
    assert json.loads((run / "results.json").read_text())["global_step"] == step + 2


def test_max_time_stops_training_and_the_run_is_tested(capsys, data_dir, tmp_path):
    code, out, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--max_time", "00:00:00:01",
                                                 "--max_epochs", "50"))
    assert code == 0, err
    results = json.loads((tmp_path / "default" / "version_0" / "results.json").read_text())
    assert results["stopped_by"] == "max_time", results
    assert results["test_acc"] is not None


# ==========================================================================
# --ema_decay: an exponential moving average of the weights
# ==========================================================================


class WeightTrace(L.Callback):
    """The trainable weights (by state_dict name, float64) at train start, after every optimizer step, and
    what the model holds when each validation starts (after WeightEMA, which comes first, has swapped)."""

    def __init__(self):
        self.start, self.steps, self.validated = None, {}, {}

    @staticmethod
    def _weights(pl_module):
        return {n: p.detach().double().clone() for n, p in pl_module.named_parameters()}

    def on_train_start(self, trainer, pl_module):
        self.start = self._weights(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.steps[trainer.global_step] = self._weights(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated[trainer.global_step] = self._weights(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.buffers = {n: b.clone() for n, b in pl_module.named_buffers()}


def ema_reference(start, steps, decay):
    """The average after each step, by the formula of WeightEMA's docstring, in float64 (one update per
    optimizer step: update n is global step n, on a resumed run too)."""
    average = {n: w.clone() for n, w in start.items()}
    out = {}
    for n_step in sorted(steps):
        d = min(decay, (1 + n_step) / (10 + n_step))
        average = {n: a + (1 - d) * (steps[n_step][n] - a) for n, a in average.items()}
        out[n_step] = average
    return out


def assert_weights_close(actual, expected, what):
    assert set(actual) == set(expected), what
    for name in expected:
        torch.testing.assert_close(actual[name].double(), expected[name], rtol=0, atol=1e-6, msg=f"{what}: {name}")


def test_ema_is_validated_kept_and_tested(capsys, monkeypatch, data_dir, tmp_path):
    decay, k = 0.8, 5
    trace = WeightTrace()
    monkeypatch.setattr(run_module, "train", functools.partial(run_module.train, callbacks=[trace]))
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--ema_decay", str(decay),
                                               "--max_steps", str(3 * k), "--val_check_interval", str(k),
                                               "--learning_rate", "3e-3", "--attn_dropout", "0", "--ff_dropout", "0",
                                               "--feature_redraw_interval", "4"))
    assert code == 0, err
    monkeypatch.undo()
    run = tmp_path / "default" / "version_0"
    reference = ema_reference(trace.start, trace.steps, decay)
    assert set(trace.validated) == {k, 2 * k, 3 * k}  # 3 k: the end of the first epoch
    for step in trace.validated:  # validation sees the average, training goes on with the trained weights
        assert_weights_close(trace.validated[step], reference[step], f"validated at step {step}")
        assert not torch.allclose(trace.validated[step]["model.output_layer.weight"],
                                  trace.steps[step]["model.output_layer.weight"])
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    params = set(trace.start)
    assert_weights_close({n: last["state_dict"][n] for n in params}, reference[3 * k], "last.ckpt state_dict")
    assert_weights_close(last[EMA_KEY]["weights"], trace.steps[3 * k], "last.ckpt trained weights")
    assert last[EMA_KEY]["updates"] == 3 * k and last[EMA_KEY]["decay"] == decay
    projections = [n for n in trace.buffers if n.endswith("projection")]
    assert projections
    for name in projections:  # the random features are the current draw (redrawn 3 times), never averaged
        assert torch.equal(last["state_dict"][name], trace.buffers[name]), name
        assert last["state_dict"][name.replace("projection", "_extra_state")]["redraws"] == 3 * k // 4
    # best.ckpt holds the average of its step, which is what `test` scored
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert_weights_close({n: best["state_dict"][n] for n in params}, reference[best["global_step"]], "best.ckpt")
    results = json.loads((run / "results.json").read_text())
    code, out, err = run_cli(capsys, "test", run, "--output", tmp_path / "test.csv")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "test.csv")["test_acc"].iloc[0] == pytest.approx(results["test_acc"], abs=1e-6)


def test_ema_run_resumes_with_its_trained_weights_and_average(capsys, monkeypatch, data_dir, tmp_path):
    decay, k = 0.9, 7
    trace = WeightTrace()
    monkeypatch.setattr(run_module, "train", functools.partial(run_module.train, callbacks=[trace, InterruptAt(k)]))
    argv = train_args(data_dir, tmp_path, "Performer", "--ema_decay", str(decay), "--max_steps", "12",
                      "--checkpoint_every_n_steps", "1000")
    code, _, err = run_cli(capsys, *argv)
    assert code == 130, err
    run = tmp_path / "default" / "version_0"
    first = ema_reference(trace.start, trace.steps, decay)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == k and last[EMA_KEY]["updates"] == k
    assert_weights_close(last[EMA_KEY]["weights"], trace.steps[k], "trained weights at the interrupt")

    resumed = WeightTrace()
    monkeypatch.setattr(run_module, "train", functools.partial(run_module.train, callbacks=[resumed]))
    code, _, err = run_cli(capsys, "train", "--resume", run, "--no_progress_bar")
    assert code == 0, err
    monkeypatch.undo()
    assert_weights_close(resumed.start, trace.steps[k], "weights the resumed run trains on")
    # the average carries on from the saved one, its update count too
    average = ema_reference(first[k], resumed.steps, decay)[12]
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final[EMA_KEY]["updates"] == 12
    assert_weights_close({n: final["state_dict"][n] for n in average}, average, "average after the resume")


def test_ema_run_whose_checkpoint_lost_its_weights_is_refused_and_kept(capsys, monkeypatch, data_dir, tmp_path):
    monkeypatch.setattr(run_module, "train", functools.partial(run_module.train, callbacks=[InterruptAt(5)]))
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--ema_decay", "0.9", "--max_steps", "12"))
    assert code == 130, err
    monkeypatch.undo()
    last = tmp_path / "default" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint[EMA_KEY]
    torch.save(checkpoint, last)
    before = last.read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", last.parent.parent, "--no_progress_bar")
    assert_one_line_error(code, err, EMA_KEY, "start the run again")
    assert last.read_bytes() == before  # the failed restore did not overwrite it


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_ema_decay_out_of_range_is_a_user_error(capsys, data_dir, tmp_path, value):
    code, _, err = run_cli(capsys, *train_args(data_dir, tmp_path, "Performer", "--ema_decay", value, "--max_steps", "1"))
    assert_one_line_error(code, err, "--ema_decay", "0.999")
    assert not (tmp_path / "default").exists()
