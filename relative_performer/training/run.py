"""One training run: settings, run folder, Lightning trainer, resume, results.

``train(request)`` does, in order: seed everything; load the data (fetching it
if missing); build the model from the registry and push one batch through it
(so a size or data problem is reported before anything is written); create the
run folder and its ``config.json``; fit with early stopping on ``val/acc``;
test the best checkpoint; write ``results.json``.

Resume: ``request_from_run`` rebuilds the request of an existing run from its
``config.json``; only :class:`RuntimeConfig` settings may change. Lightning
restores weights, optimizer, schedule, loop counters, early stopping and the
best-checkpoint state from ``last.ckpt`` (loaded with ``weights_only=True``);
the feature-redraw counters are part of the model's state_dict.

Initialise from another run (``--init_from RUN_DIR``): a new run whose model
and model options are those of RUN_DIR (but for :data:`TUNABLE_ON_INIT`, which
change no weight and may be given anew) and whose weights (random features and
redraw counters included) start as RUN_DIR's ``best.ckpt``; optimizer, schedule,
step count, seed and data are the new run's own (continued training with a fresh
optimizer, or fine-tuning on another dataset with the same channels and classes).
``config.json`` records where the weights came from under ``init_from``.

Multi-process training (``--strategy ddp``): Lightning starts the other
processes by running the same command line again. They find the run folder in
the environment variable :data:`RUN_ENV` set by the first process and read
their settings from its ``config.json``, so all processes agree on the folder
and the seed.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import logging
import os
import platform
import random
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from relative_performer import __version__
from relative_performer.allocator import keep_freed_memory, malloc_policy
from relative_performer.errors import UserError
from relative_performer.run_folder import BEST_NAME, RunFolder, next_version, version_name

RUN_ENV = "RELATIVE_PERFORMER_RUN"
CONFIG_FORMAT = 1
# ModelConfig fields that the data determines (not user options)
DATA_DERIVED = ("model", "in_channels", "num_classes")


@dataclass
class TrainingConfig:
    """What defines a run's result: fixed for its whole life (resume cannot change it)."""

    learning_rate: float = 1e-3
    warmup: int = 0
    schedule: str = "constant"
    batch_size: int = 16
    gradient_clip_val: float = 0.5
    patience: int = 20
    val_size: int = 5000
    split_seed: int = 42
    seed: int | None = None
    ema_decay: float = 0.0  # 0: off; else validate, keep and test an exponential moving average of the weights


@dataclass
class RuntimeConfig:
    """How and how long to run: may change when a run is resumed."""

    max_epochs: int = 1000
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS", Lightning's format
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    val_check_interval: int | float | None = None
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 50
    data_dir: str | None = None
    progress_bar: bool = True
    compile_attention: bool = True  # CPU only: torch.compile the FAVOR+ core (relative_performer.attention.compiled)


@dataclass
class TrainRequest:
    model: str
    dataset: str
    model_options: dict[str, Any]  # ModelConfig fields except DATA_DERIVED
    training: TrainingConfig = field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log_path: str = "lightning_logs"
    exp_name: str = "default"
    version: str | None = None
    command: str = ""
    run_dir: str | None = None  # set: resume this existing run
    init_from: str | None = None  # set: a new run starting from this finished run's best weights


def training_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainingConfig))


def runtime_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(RuntimeConfig))


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _rank_zero_print(*args: Any) -> None:
    if os.environ.get(RUN_ENV) is None or os.environ.get("LOCAL_RANK", "0") == "0":
        print(*args, flush=True)


# ==========================================================================
# Resume
# ==========================================================================


def request_from_config(config: dict[str, Any], run: RunFolder) -> TrainRequest:
    """The request a run's ``config.json`` describes."""
    try:
        return TrainRequest(
            model=config["model"],
            dataset=config["dataset"],
            model_options={k: v for k, v in config["model_config"].items() if k not in DATA_DERIVED},
            training=TrainingConfig(**config["training"]),
            runtime=RuntimeConfig(**config["runtime"]),
            command=config.get("command", ""),
            run_dir=str(run.path),
            init_from=(config.get("init_from") or {}).get("run_dir"),
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{run.config_path} is not a config.json of this relative-performer ({exc})") from None


def request_from_run(
    run_dir: str | os.PathLike,
    fixed_given: dict[str, Any],
    runtime_given: dict[str, Any],
    command: str,
) -> TrainRequest:
    """The request that resumes ``run_dir``.

    ``fixed_given``: options the user gave that define the run (model, dataset,
    model options, training hyperparameters): each must equal the run's value.
    ``runtime_given``: :class:`RuntimeConfig` settings that replace the run's.
    """
    run = RunFolder(Path(run_dir))
    config = run.read_config()
    request = request_from_config(config, run)
    stored = {"model": request.model, "dataset": request.dataset, **request.model_options, **asdict(request.training)}
    for name, value in fixed_given.items():
        if name in stored and stored[name] != value:
            raise UserError(
                f"--{name} {value} differs from the run's {stored[name]}: a resumed run keeps its model, data and "
                f"training settings (only {', '.join('--' + f for f in runtime_fields())} may change)"
            )
    if not run.last.is_file():
        raise UserError(
            f"{run.path} has no {run.last.relative_to(run.path)}: it stopped before its first checkpoint; "
            f"delete the folder and start the run again"
        )
    if run.is_finished() and not ({"max_epochs", "max_steps", "max_time"} & set(runtime_given)):
        raise UserError(
            f"{run.path} has finished ({run.results_path.name} exists): to train it further, resume it with a "
            "larger --max_epochs or --max_steps"
        )
    request.runtime = RuntimeConfig(**{**asdict(request.runtime), **runtime_given})
    request.command = command
    return request


# Model options that change no weight: a run initialised from another run may set them anew
# (e.g. --feature_redraw_interval 0 to fine-tune on the features it will be evaluated with).
TUNABLE_ON_INIT = ("feature_redraw_interval", "attn_dropout", "ff_dropout")


def request_from_source(
    source_dir: str | os.PathLike,
    model: str | None,
    dataset: str | None,
    model_options_given: dict[str, Any],
    **request: Any,
) -> TrainRequest:
    """The request of a new run initialised from ``source_dir``'s best checkpoint.

    ``model``, ``dataset``: as given (None: the source's); a model other than the
    source's is an error. ``model_options_given``: options the user gave; each must
    equal the source's, except those of :data:`TUNABLE_ON_INIT`, which replace it.
    ``request``: the remaining :class:`TrainRequest` fields.
    """
    source = RunFolder(Path(source_dir))
    config = request_from_config(source.read_config(), source)
    if model is not None and model != config.model:
        raise UserError(f"--init_from {source.path} holds a {config.model}, not a {model}: leave MODEL out or name {config.model}")
    options = dict(config.model_options)
    for name, value in model_options_given.items():
        if name in TUNABLE_ON_INIT:
            options[name] = value
            continue
        stored = config.model_options.get(name)
        if stored != value:
            raise UserError(
                f"--{name} {value} differs from {source.path}'s {stored}: a run initialised from another run keeps "
                f"its model options (only {', '.join('--' + n for n in TUNABLE_ON_INIT)} may change)"
            )
    source.best_checkpoint()  # fails early, with the folder's name, when there is none
    return TrainRequest(
        model=config.model, dataset=dataset or config.dataset, model_options=options,
        init_from=str(source.path), **request,
    )


def _initial_weights(model, source_dir: str, model_name: str) -> dict[str, Any]:
    """Load ``source_dir``'s best weights into ``model``; returns the record for config.json."""
    from relative_performer.checkpoint import checked_checkpoint, load_model_weights

    source = RunFolder(Path(source_dir))
    path = source.best_checkpoint()
    checkpoint, record = checked_checkpoint(path, expect_model=model_name)
    load_model_weights(
        model, checkpoint, path, "this run's model",
        "initialising from another run needs the same image channels and number of classes",
    )
    config = source.read_config()
    results = source.read_results() or {}
    return {
        "run_dir": str(source.path),
        "checkpoint": str(path.relative_to(source.path)),
        "model": record["model"],
        "dataset": record.get("dataset"),
        "global_step": int(checkpoint.get("global_step", 0)),
        "test_acc": results.get("test_acc"),
        "seed": config.get("seed"),
        "commands": [s.get("command") for s in config.get("sessions", [])] or [config.get("command")],
        "init_from": config.get("init_from"),  # the chain, when the source was itself initialised from a run
    }


# ==========================================================================
# Helpers
# ==========================================================================


def _new_run_folder(request: TrainRequest) -> RunFolder:
    parent = Path(request.log_path) / request.exp_name
    if request.version is not None:
        run = RunFolder(parent / version_name(request.version))
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(
                f"{run.path} already exists: resume it with `relative-performer train --resume {run.path}` "
                "or choose another --version"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        return run
    parent.mkdir(parents=True, exist_ok=True)
    while True:  # another run may take the same number at the same time
        run = RunFolder(parent / next_version(parent))
        try:
            run.path.mkdir()
            return run
        except FileExistsError:
            continue


def _check_model_takes(model, info, embedding_type: str, model_name: str) -> None:
    """One forward pass on a blank image, in eval mode (no feature-redraw step counted)."""
    import torch

    shape = (1, info.channels, info.height, info.width)
    images = torch.zeros(shape, dtype=torch.uint8) if embedding_type == "lookup" else torch.zeros(shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    except UserError:
        raise
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{model_name} cannot take {info.name} images of {info.channels}x{info.height}x{info.width} ({first})"
        ) from None
    finally:
        model.train(was_training)


def machine_info() -> dict:
    """Where a session ran, for the run's record: torch, CPU, threads and the GPU torch sees (if any)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = None
    try:
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # a broken driver must not stop a CPU run
        pass
    return {"torch": torch.__version__, "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "malloc": malloc_policy()}


def _restore_metrics(logger, rows: list[dict[str, str]], header: list[str]) -> None:
    """Put the metrics of earlier sessions back into a resumed run's metrics.csv.

    Lightning's CSVLogger deletes an existing metrics.csv when it opens its
    folder; this writes the kept rows back and tells the writer about their
    columns so that it appends (it rewrites the header when new columns appear).
    """
    import csv

    writer = logger.experiment  # opening it deletes the old file
    if not rows or not hasattr(writer, "metrics_keys"):
        return
    with open(writer.metrics_file_path, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=header)
        out.writeheader()
        out.writerows(rows)
    writer.metrics_keys = sorted(header)


def _read_metrics(run: RunFolder, up_to_step: int) -> tuple[list[dict[str, str]], list[str]]:
    import csv

    if not run.metrics_path.is_file():
        return [], []
    with open(run.metrics_path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= up_to_step]
    return rows, header


def _best_validation(run: RunFolder) -> dict[str, Any]:
    """Val metrics of the best epoch (first maximum of val/acc, as ModelCheckpoint keeps it)."""
    import pandas as pd

    if not run.metrics_path.is_file():
        return {}
    frame = pd.read_csv(run.metrics_path)
    if "val/acc" not in frame:
        return {}
    val = frame.dropna(subset=["val/acc"])
    if val.empty:
        return {}
    row = val.loc[val["val/acc"].idxmax()]
    out = {"best_val_acc": float(row["val/acc"])}
    if "val/loss" in row and not pd.isna(row["val/loss"]):
        out["best_val_loss"] = float(row["val/loss"])
    for key in ("epoch", "step"):
        if key in row and not pd.isna(row[key]):
            out[f"best_{key}"] = int(row[key])
    return out


def _resolve_seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(0, 2**31 - 1)


def _trainer_limits(runtime: RuntimeConfig) -> dict[str, Any]:
    limits = {}
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "val_check_interval"):
        value = getattr(runtime, name)
        if value is not None:
            limits[name] = value
    if runtime.limit_val_batches == 0:
        raise UserError("--limit_val_batches 0 disables validation, which early stopping and the best checkpoint need")
    return limits


def _trainer_settings(runtime: RuntimeConfig, quiet: bool = False, **kwargs: Any):
    """A Trainer with the run's accelerator, devices, strategy and precision (bad values: UserError).

    ``quiet``: without Lightning's "GPU available" lines (for the check before the real one).
    """
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_log.level
    if quiet:
        lightning_log.setLevel(logging.WARNING)
    try:
        return L.Trainer(
            accelerator=runtime.accelerator, devices=runtime.devices, strategy=runtime.strategy,
            precision=runtime.precision, **kwargs,
        )
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    finally:
        lightning_log.setLevel(level)


class _NoAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_warnings() -> None:
    for pattern in (
        r".*does not have many workers.*",
        r".*smaller than the logging interval.*",
        r".*Experiment logs directory .* exists and is not empty.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*that ended before the epoch ended.*",  # mid-epoch resume: see LastCheckpoint
        r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*could not find the monitored key.*",  # stopped by max_steps before any validation: handled
        # DDP: train/loss_epoch is the first process's mean (a sync per step would cost more than it tells);
        # val/test accuracy and loss are synced; `relative-performer test` evaluates each image exactly once
        r".*when logging on epoch level in distributed setting.*",
        r".*Using `DistributedSampler` with the dataloaders.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertising) for f in lightning_log.filters):
        lightning_log.addFilter(_NoAdvertising())


# ==========================================================================
# Training
# ==========================================================================


def _compile_attention(runtime: RuntimeConfig, device) -> bool:
    """Turn on the compiled FAVOR+ core for training on the CPU (see relative_performer.attention.compiled).

    Off with ``--no_compile_attention``, ``RELATIVE_PERFORMER_COMPILE=0``, on other devices, and where
    ``torch.compile`` does not work here (then one line says why and training goes on eagerly).
    """
    from relative_performer.attention import compiled

    if not runtime.compile_attention or not compiled.allowed_by_environment() or device.type != "cpu":
        compiled.disable()
        return False
    if compiled.enable():
        return True
    _rank_zero_print(f"note: torch.compile does not work here ({compiled.unavailable_reason()}); "
                     "the attention runs uncompiled (--no_compile_attention skips the attempt)")
    return False


def train(request: TrainRequest, callbacks: Sequence[Any] = ()) -> int:
    """Run (or resume, when ``request.run_dir`` is set) one training run; returns the exit status.

    ``callbacks``: extra Lightning callbacks (tests use them to interrupt a run).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from relative_performer.checkpoint import make_record, read_record, load_checkpoint
    from relative_performer.data.datasets import ImageDataModule
    from relative_performer.models import ModelConfig, count_parameters, create_model
    from relative_performer.models.config import CONFIG_VERSION
    from relative_performer.training.callbacks import LastCheckpoint, ProgressBar, TrainingClock, WeightEMA
    from relative_performer.training.module import ClassifierModule

    _quiet_warnings()
    keep_freed_memory()  # as the command line does, for callers of this function from Python too
    resume = request.run_dir is not None
    child = os.environ.get(RUN_ENV)
    if child:  # a further DDP process: everything comes from the first process's run folder
        info = json.loads(child)
        run = RunFolder(Path(info["run_dir"]))
        request = request_from_config(run.read_config(), run)
        resume = bool(info["resume"])

    training, runtime = request.training, request.runtime
    if not 0.0 <= training.ema_decay < 1.0:
        raise UserError(f"--ema_decay must be 0 (off) or in (0, 1), such as 0.999 (got {training.ema_decay})")
    if resume and not child:
        run = RunFolder(Path(request.run_dir))
        resume_checkpoint = load_checkpoint(run.last)
        record = read_record(resume_checkpoint, run.last)
        if record["model"] != request.model or record["dataset"] != request.dataset:
            raise UserError(f"{run.last} holds a {record['model']} on {record['dataset']}, but the run's config.json "
                            f"says {request.model} on {request.dataset}: the run folder is inconsistent")
        resume_step = int(resume_checkpoint.get("global_step", 0))
        del resume_checkpoint
    seed = _resolve_seed(training.seed)
    training.seed = seed
    L.seed_everything(seed, workers=True, verbose=False)

    data = ImageDataModule(
        request.dataset,
        data_dir=runtime.data_dir,
        batch_size=training.batch_size,
        num_workers=runtime.num_workers,
        embedding_type=request.model_options.get("embedding_type", "linear"),
        val_size=training.val_size,
        split_seed=training.split_seed,
    )
    if not child:
        data.prepare_data()
    data.setup("fit")
    info = data.info
    config = ModelConfig.from_dict(
        {**request.model_options, "model": request.model, "in_channels": info.channels, "num_classes": info.num_classes}
    )
    model = create_model(config)
    initial = None
    if request.init_from and not resume:  # DDP's further processes load them too (DDP would also broadcast them)
        initial = _initial_weights(model, request.init_from, request.model)
    _check_model_takes(model, info, config.embedding_type, request.model)
    parameters = count_parameters(model)
    limits = _trainer_limits(runtime)
    check = _trainer_settings(runtime, quiet=True, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False)  # reported before the run folder is made
    compiled_attention = _compile_attention(runtime, check.strategy.root_device)

    data_settings = {
        "data_dir": str(Path(runtime.data_dir).resolve()) if runtime.data_dir else None,
        "embedding_type": config.embedding_type,
        "val_size": training.val_size,
        "split_seed": training.split_seed,
    }
    session = {"started": _now(), "command": request.command, "runtime": asdict(runtime),
               "machine": {**machine_info(), "compiled_attention": compiled_attention}}
    if child:
        pass
    elif resume:
        stored = run.read_config()
        session["resumed_from_step"] = resume_step
        stored["runtime"] = asdict(runtime)
        stored.setdefault("sessions", []).append(session)
        run.write_config(stored)
    else:
        run = _new_run_folder(request)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.write_config({
            "format": CONFIG_FORMAT,
            "package_version": __version__,
            "model": request.model,
            "dataset": info.name,
            "config_version": CONFIG_VERSION,
            "model_config": config.to_dict(),
            "training": asdict(training),
            "runtime": asdict(runtime),
            "data": data_settings,
            "seed": seed,
            "parameters": parameters,
            "command": request.command,
            "created": session["started"],
            "sessions": [session],
            **({"init_from": initial} if initial else {}),
        })

    _rank_zero_print(
        f"{'Resuming' if resume else 'Training'} {request.model} on {info.name}: {parameters:,} parameters, "
        f"seed {seed}, run folder {run.path}" + (f", initial weights from {initial['run_dir']}" if initial else "")
    )
    record = make_record(request.model, config, info.name, data_settings, asdict(training))
    module = ClassifierModule(
        model, record, info.num_classes, training.learning_rate, training.warmup, training.schedule
    )

    csv_logger = CSVLogger(save_dir=str(run.path.parent), name="", version=run.path.name)
    if resume and not child:
        _restore_metrics(csv_logger, *_read_metrics(run, resume_step))
    loggers = [csv_logger]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(save_dir=str(run.path.parent), name="", version=run.path.name, default_hp_metric=False))

    best = ModelCheckpoint(
        dirpath=str(run.checkpoints), filename=BEST_NAME, monitor="val/acc", mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    last = LastCheckpoint(run.last, runtime.checkpoint_every_n_steps)
    clock = TrainingClock()
    all_callbacks = [
        *([WeightEMA(training.ema_decay)] if training.ema_decay else []),
        best, last, clock,
        EarlyStopping(monitor="val/acc", mode="max", patience=training.patience, check_on_train_epoch_end=False),
        LearningRateMonitor(logging_interval="step"),
        *callbacks,
    ]
    if runtime.progress_bar:
        all_callbacks.append(ProgressBar())
    trainer = _trainer_settings(
        runtime,
        max_epochs=runtime.max_epochs,
        max_steps=runtime.max_steps,
        max_time=runtime.max_time,
        gradient_clip_val=training.gradient_clip_val,
        gradient_clip_algorithm="norm",
        logger=loggers,
        callbacks=all_callbacks,
        default_root_dir=str(run.path),
        log_every_n_steps=runtime.log_every_n_steps,
        enable_progress_bar=runtime.progress_bar,
        **limits,
    )

    if not child:
        os.environ[RUN_ENV] = json.dumps({"run_dir": str(run.path.resolve()), "resume": resume})
    sigint = signal.getsignal(signal.SIGINT)
    start = time.monotonic()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(run.last) if resume else None, weights_only=True)
        if not trainer.interrupted and not run.best.is_file():
            # stopped (max_steps) before any validation: validate the final weights, they are the best seen
            trainer.validate(module, datamodule=data, verbose=False)
            trainer.save_checkpoint(run.best, weights_only=False)
        tested = [] if trainer.interrupted else trainer.test(
            module, datamodule=data, ckpt_path=str(run.best), weights_only=True, verbose=False
        )
    except (KeyboardInterrupt, SystemExit) as exc:
        if not trainer.interrupted:
            raise
        return _interrupted(run, trainer, exc)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C after an interrupt
        if not child:
            os.environ.pop(RUN_ENV, None)
    if trainer.interrupted:
        return _interrupted(run, trainer, None)
    if not trainer.is_global_zero:
        return 0

    csv_logger.save()
    test = tested[0] if tested else {}
    stopped = trainer.early_stopping_callback.stopped_epoch if trainer.early_stopping_callback else 0
    results = {
        "model": request.model,
        "dataset": info.name,
        "run_dir": str(run.path),
        **_best_validation(run),
        "test_acc": float(test["test/acc"]) if "test/acc" in test else None,
        "test_loss": float(test["test/loss"]) if "test/loss" in test else None,
        "parameters": parameters,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "stopped_by": "early_stopping" if stopped else (
            "max_steps" if runtime.max_steps not in (-1, None) and trainer.global_step >= runtime.max_steps
            else "max_epochs" if trainer.current_epoch >= runtime.max_epochs else "max_time"),
        "train_seconds": round(clock.seconds, 1),
        "session_seconds": round(time.monotonic() - start, 1),
        "best_checkpoint": str(run.best.relative_to(run.path)),
        "finished": _now(),
    }
    run.write_results(results)
    acc = results.get("test_acc")
    print(
        f"Done: best val/acc {results.get('best_val_acc', float('nan')):.4f}, test/acc "
        f"{acc if acc is None else format(acc, '.4f')}, {results['epochs']} epochs, {results['global_step']} steps, "
        f"{results['train_seconds']:.0f} s; results in {run.results_path}",
        flush=True,
    )
    return 0


def _interrupted(run: RunFolder, trainer, exc: BaseException | None) -> int:
    step = trainer.global_step
    saved = run.last.is_file()
    _rank_zero_print(
        f"\nInterrupted at step {step}. "
        + (f"Progress is saved in {run.last}; continue with: relative-performer train --resume {run.path}"
           if saved else "No checkpoint was written yet; start the run again.")
    )
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return 143 if isinstance(exc, SIGTERMException) else 130

