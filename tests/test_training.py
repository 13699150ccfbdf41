"""Training pieces without the command line: schedules, run folders, checkpoint records, the LightningModule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relative_performer.checkpoint import RECORD_KEY, STATE_PREFIX, load_checkpoint, make_record, model_from_checkpoint, read_record
from relative_performer.errors import UserError
from relative_performer.models import MODELS, ModelConfig, create_model
from relative_performer.models.config import CONFIG_VERSION
from relative_performer.run_folder import RunFolder, find_runs, next_version, version_name
from relative_performer.training.module import ADAM_BETAS, ClassifierModule
from relative_performer.training.run import _check_model_takes
from relative_performer.training.schedules import lr_factor, make_scheduler

TINY = dict(dim=16, depth=1, heads=2)


# ---------------------------------------------------------------- schedules


def test_constant_schedule_warms_up_linearly_then_stays():
    f = lr_factor("constant", 4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor("constant", 0)(0) == 1.0


def test_noam_schedule_peaks_at_warmup_then_decays_as_inverse_sqrt():
    f = lr_factor("noam", 100)
    assert f(0) == pytest.approx(0.01)
    assert f(99) == pytest.approx(1.0)  # t = W
    assert f(399) == pytest.approx(0.5)  # t = 4 W
    assert max(f(s) for s in range(1000)) == pytest.approx(1.0)
    g = lr_factor("noam", 0)  # taken as W = 1
    assert [g(s) for s in (0, 3, 8)] == pytest.approx([1.0, 0.5, 1 / 3])


def test_scheduler_steps_per_optimizer_step_and_its_state_is_plain():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = make_scheduler(opt, "constant", 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None]  # no function pickled into checkpoints


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="unknown schedule"):
        lr_factor("cosine", 0)


# ---------------------------------------------------------------- run folders


def test_version_names_follow_lightning():
    assert version_name("3") == "version_3"
    assert version_name(3) == "version_3"
    assert version_name("baseline") == "baseline"
    with pytest.raises(UserError):
        version_name("a/b")


def test_next_version_is_one_above_the_highest(tmp_path):
    assert next_version(tmp_path / "missing") == "version_0"
    for name in ("version_0", "version_4", "version_x", "other"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == "version_5"


def test_run_files_are_written_with_the_umask_not_0600(tmp_path):
    from relative_performer.run_folder import write_json

    write_json(tmp_path / "config.json", {"a": 1})
    (tmp_path / "plain").write_text("{}")
    assert (tmp_path / "config.json").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_find_runs_needs_config_and_checkpoints(tmp_path):
    for name, config, ckpts in (("a/version_0", True, True), ("a/version_1", True, False), ("b/x/run", True, True), ("c", False, True)):
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True) if ckpts else folder.mkdir(parents=True)
        if config:
            (folder / "config.json").write_text("{}")
    found = [r.path.relative_to(tmp_path).as_posix() for r in find_runs([tmp_path])]
    assert found == ["a/version_0", "b/x/run"]
    assert [r.path for r in find_runs([tmp_path / "a" / "version_0", tmp_path / "a"])] == [tmp_path / "a" / "version_0"]
    with pytest.raises(UserError, match="not a folder"):
        find_runs([tmp_path / "nope"])


def test_best_checkpoint_missing_is_a_user_error(tmp_path):
    run = RunFolder(tmp_path)
    run.checkpoints.mkdir()
    with pytest.raises(UserError, match="no checkpoint"):
        run.best_checkpoint()


# ---------------------------------------------------------------- checkpoint records


def _write_checkpoint(path: Path, model_name: str = "RelativePerformer", **record_changes) -> torch.nn.Module:
    config = ModelConfig(model=model_name, **TINY)
    model = create_model(config)
    record = make_record(model_name, config, "MNIST", {"embedding_type": "linear"}, {"learning_rate": 1e-3})
    record.update(record_changes)
    state = {STATE_PREFIX + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, RECORD_KEY: record, "global_step": 0}, path)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_is_rebuilt_from_its_checkpoint_alone(tmp_path, name):
    original = _write_checkpoint(tmp_path / "m.ckpt", name)
    model, record, _ = model_from_checkpoint(tmp_path / "m.ckpt")
    assert record["model"] == name and record["config_version"] == CONFIG_VERSION
    assert not model.training
    images = torch.rand(2, 1, 8, 8)
    original.eval()
    torch.testing.assert_close(model(images), original(images))
    for a, b in zip(model.feature_maps(), original.feature_maps()):  # redraw state travels too
        assert (a.seed, a.steps, a.redraws) == (b.seed, b.steps, b.redraws)


def test_checkpoint_record_is_plain_and_loads_weights_only(tmp_path):
    _write_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert read_record(checkpoint, "m.ckpt")["dataset"] == "MNIST"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"config_version": CONFIG_VERSION + 1}, "config version"),
        ({"model": "NoSuchPerformer"}, "does not know"),
        ({"model": "Performer"}, "inconsistent"),
    ],
)
def test_bad_records_are_user_errors(tmp_path, changes, message):
    _write_checkpoint(tmp_path / "m.ckpt", **changes)
    with pytest.raises(UserError, match=message):
        model_from_checkpoint(tmp_path / "m.ckpt")


def test_checkpoint_of_another_model_than_expected(tmp_path):
    _write_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(UserError, match="holds a RelativePerformer"):
        model_from_checkpoint(tmp_path / "m.ckpt", expect_model="Performer")


def test_corrupt_and_foreign_checkpoints_are_user_errors(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="not written by"):
        model_from_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_weights_that_do_not_fit_the_config_are_a_user_error(tmp_path):
    _write_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    checkpoint[RECORD_KEY]["config"]["dim"] = 32
    torch.save(checkpoint, tmp_path / "m.ckpt")
    with pytest.raises(UserError, match="do not fit"):
        model_from_checkpoint(tmp_path / "m.ckpt")


# ---------------------------------------------------------------- LightningModule


def test_module_uses_adam_with_the_original_betas_and_a_step_schedule():
    model = create_model(ModelConfig(model="Performer", **TINY))
    module = ClassifierModule(model, {"model": "Performer"}, 10, learning_rate=2e-3, warmup=10, schedule="noam")
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert conf["optimizer"].defaults["betas"] == ADAM_BETAS
    assert conf["lr_scheduler"]["interval"] == "step"
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[RECORD_KEY] == {"model": "Performer"}
    assert all(k.startswith(STATE_PREFIX) for k in module.state_dict())


def test_model_check_turns_shape_errors_into_one_line():
    class Picky(torch.nn.Module):
        def forward(self, images):
            raise RuntimeError("shape mismatch\nsecond line")

    from relative_performer.data.datasets import dataset_info

    with pytest.raises(UserError) as excinfo:
        _check_model_takes(Picky(), dataset_info("MNIST"), "linear", "Picky")
    assert "cannot take MNIST images of 1x32x32 (shape mismatch)" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
