"""The ``relative-performer`` command: train, test, test-recursive, test-shifted, plot-shifted, export, data.

Errors the user can fix are printed as one line ``error: ...`` on stderr with
exit status 2, without a traceback; set ``RELATIVE_PERFORMER_DEBUG=1`` or pass
``--debug`` to get the traceback instead.

``train`` parses its arguments in two stages, as the original ``train.py``:
the model name is found first, then the full parser is built with the options
that model reads (``MODELS[name].options`` in the registry), so
``relative-performer train RelativePerformer MNIST --help`` lists them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable, Sequence

from relative_performer import __version__
from relative_performer.allocator import keep_freed_memory
from relative_performer.errors import UserError

PROG = "relative-performer"
DEBUG_ENV = "RELATIVE_PERFORMER_DEBUG"
DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")  # the choices of the original CLI

# Help of the ModelConfig fields. A field without an entry still becomes an option.
MODEL_HELP = {
    "embedding_type": "Embedding used for the pixel values (lookup: a table row per uint8 value)",
    "dim": "Model width",
    "depth": "Number of transformer blocks",
    "heads": "Attention heads",
    "ff_mult": "Feed-forward width as a multiple of dim",
    "attn_dropout": "Dropout on the attention output",
    "ff_dropout": "Dropout in the feed-forward block",
    "feature_redraw_interval": "Redraw the random features every this many training steps (0: never)",
    "no_projection": "Exact softmax attention instead of random features (quadratic; the reference)",
    "nb_features": "Random features per attention head (default: int(d ln d), d the attention head dim)",
    "kernel": "Attention kernel of the random features",
    "pos_scales": "Frequency scales per axis of the relative position features",
    "content_rel_attn": "Add relative positional attention whose weights depend on the query's content",
    "clipping_dist": "Relative distances (Manhattan) above this share one embedding",
}
GENERAL_MODEL_GROUP = "model (all models)"


# ==========================================================================
# Small parsing helpers
# ==========================================================================


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(" ".join(text.split()), width=88)


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor a number") from None


def _max_time(value: str) -> str:
    parts = value.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected DD:HH:MM:SS, e.g. 00:00:05:00 for five minutes (got {value!r})")
    return value


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _labels(values: list[str] | None) -> list[int] | None:
    if values is None:
        return [1]  # the original's choice: the label that allows the largest shifts
    if [v.lower() for v in values] == ["all"]:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UserError(f"--labels takes class numbers or 'all', got {' '.join(values)}") from None


def _field_type(cls, name: str) -> type:
    """The type of a dataclass field, ``int | None`` -> ``int``."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _default(cls, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations the user actually gave on the command line."""
    saved = [(action, action.default) for action in parser._actions if action.option_strings]
    for action, _ in saved:
        action.default = argparse.SUPPRESS
    try:  # positionals keep their None default (argparse checks it against their choices)
        return {name for name, value in vars(parser.parse_args(argv)).items() if value is not None}
    finally:
        for action, default in saved:
            action.default = default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the epilog's line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        if isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Reports usage errors as one line: ``error: <prog>: <message> (see <prog> --help)``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.foreign_options: dict[str, str] = {}  # option -> why this parser lacks it

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            words = [w.split("=")[0] for w in message.split(":", 1)[1].split()]
            known = [self.foreign_options[w] for w in words if w in self.foreign_options]
            if known:
                message = known[0]
        print(f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# ==========================================================================
# train
# ==========================================================================

TRAIN_DESCRIPTION = "Train a model on a dataset; the run is saved in LOG_PATH/EXP_NAME/VERSION."
TRAIN_EPILOG = """\
Run folder: LOG_PATH/EXP_NAME/VERSION/ holds config.json, checkpoints/best.ckpt (best val/acc),
checkpoints/last.ckpt (latest state), metrics.csv (and TensorBoard events) and, when the run has
finished, results.json.

Resume an interrupted run (Ctrl-C, killed, crashed) from its last.ckpt with
    relative-performer train --resume LOG_PATH/EXP_NAME/VERSION
It keeps the run's model, data and training settings; trainer options (--max_epochs, --max_steps,
--accelerator, --devices, --strategy, --precision, --num_workers, --limit_*, --data_dir, ...) may be
given again to change them. An existing run folder is never overwritten.

Start a new run from the best weights of another run (continued training with a fresh optimizer
and schedule, or fine-tuning on another dataset with the same channels and classes) with
    relative-performer train --init_from RUN_DIR [MODEL DATASET] [training options]
The model and its options are RUN_DIR's, except those that change no weight (--feature_redraw_interval,
--attn_dropout, --ff_dropout), which may be given anew; config.json records where the weights came from.

Model-specific options are listed by `relative-performer train MODEL DATASET --help`."""


def _model_option_names() -> tuple[list[str], set[str]]:
    """(options common to all models, options some model reads) from ModelConfig and the registry."""
    from relative_performer.models import MODELS, ModelConfig
    from relative_performer.training.run import DATA_DERIVED

    specific = {name for spec in MODELS.values() for name in spec.options}
    common = [f.name for f in fields(ModelConfig) if f.name not in DATA_DERIVED and f.name not in specific]
    return common, specific


def _add_model_option(group, name: str) -> None:
    from relative_performer.models import ModelConfig
    from relative_performer.models.config import EMBEDDING_TYPES, KERNELS

    kind = _field_type(ModelConfig, name)
    default = _default(ModelConfig, name)
    help_text = MODEL_HELP.get(name, f"model option {name}")
    if kind is bool:
        group.add_argument(f"--{name}", action="store_true", default=bool(default), help=help_text)
        return
    choices = {"embedding_type": EMBEDDING_TYPES, "kernel": KERNELS}.get(name)
    group.add_argument(f"--{name}", type=kind, default=default, choices=choices, help=help_text)


def _find_model(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """(model, resume run) from a partial parse; the model is then looked for among all words."""
    from relative_performer.models import MODELS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("model", nargs="?")
    pre.add_argument("dataset", nargs="?")
    pre.add_argument("--resume")
    pre.add_argument("--init_from")
    known, _ = pre.parse_known_args(argv)
    model = known.model if known.model in MODELS else next((w for w in argv if w in MODELS), None)
    return model, known.resume or known.init_from


def train_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    from relative_performer.models import MODELS
    from relative_performer.training.run import RuntimeConfig, TrainingConfig
    from relative_performer.training.schedules import SCHEDULES

    model, resume = _find_model(argv)
    if model is None and resume:
        from pathlib import Path

        from relative_performer.run_folder import RunFolder

        model = RunFolder(Path(resume)).read_config().get("model")
    parser = Parser(
        prog=f"{PROG} train", description=TRAIN_DESCRIPTION, epilog=TRAIN_EPILOG,
        usage=f"%(prog)s MODEL DATASET [options]\n       %(prog)s --resume RUN_DIR [trainer options]"
              f"\n       %(prog)s --init_from RUN_DIR [MODEL DATASET] [options]",
    )
    parser.add_argument("model", nargs="?", choices=list(MODELS), metavar="MODEL",
                        help=f"The model to train: {', '.join(MODELS)}")
    parser.add_argument("dataset", nargs="?", choices=DATASETS, metavar="DATASET",
                        help=f"The dataset to train on: {', '.join(DATASETS)}")

    run = parser.add_argument_group("run folder")
    run.add_argument("--log_path", default="lightning_logs", help="Logging path")
    run.add_argument("--exp_name", default="default", help="Experiment name")
    run.add_argument("--version", default=None,
                     help="Version of experiment: a folder name, N means version_N (default: the next free version_N)")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="Continue the interrupted run in RUN_DIR from its checkpoints/last.ckpt")
    run.add_argument("--init_from", metavar="RUN_DIR", default=None,
                     help="Start a new run from RUN_DIR's best weights (its model and model options, but for "
                          "--feature_redraw_interval and the dropouts; fresh optimizer, schedule and step count)")

    t = lambda name: _default(TrainingConfig, name)  # noqa: E731
    r = lambda name: _default(RuntimeConfig, name)  # noqa: E731
    data = parser.add_argument_group("data")
    data.add_argument("--batch_size", type=int, default=t("batch_size"), help="Batch size used for training.")
    _add_model_option(data, "embedding_type")
    data.add_argument("--data_dir", default=None,
                      help="Data folder (torchvision layout; default: $RELATIVE_PERFORMER_DATA or ./data); "
                           "missing datasets are fetched into it")
    data.add_argument("--val_size", type=int, default=t("val_size"), help="Training images held out for validation")
    data.add_argument("--split_seed", type=int, default=t("split_seed"), help="Seed of the train/val split")
    data.add_argument("--num_workers", type=int, default=r("num_workers"), help="DataLoader worker processes")

    optim = parser.add_argument_group("optimisation (Adam, betas 0.9 0.98)")
    optim.add_argument("--learning_rate", type=float, default=t("learning_rate"), help="Peak learning rate")
    optim.add_argument("--warmup", type=int, default=t("warmup"), help="Linear warm-up steps")
    optim.add_argument("--schedule", choices=SCHEDULES, default=t("schedule"),
                       help="constant: lr after warm-up; noam: warm-up to lr, then lr*sqrt(warmup/step)")
    optim.add_argument("--gradient_clip_val", type=float, default=t("gradient_clip_val"), help="Gradient norm clipping")
    optim.add_argument("--ema_decay", type=float, default=t("ema_decay"),
                       help="Validate, keep and test an exponential moving average of the weights with this decay "
                            "per step, such as 0.999 (0: off, the trained weights)")
    optim.add_argument("--patience", type=int, default=t("patience"),
                       help="Early stopping: validations without a better val/acc")
    optim.add_argument("--seed", type=int, default=None, help="Random seed (default: drawn at random, printed and saved)")

    common, _ = _model_option_names()
    general = parser.add_argument_group(GENERAL_MODEL_GROUP)
    for name in common:
        if name != "embedding_type":
            _add_model_option(general, name)
    if model is not None and MODELS[model].options:
        own = parser.add_argument_group(f"{model} options")
        for name in MODELS[model].options:
            _add_model_option(own, name)
    for name in sorted(_model_option_names()[1] - set(MODELS[model].options if model else ())):
        owners = " and ".join(m for m, spec in MODELS.items() if name in spec.options)
        parser.foreign_options[f"--{name}"] = f"--{name} is an option of {owners}" + (f", not of {model}" if model else "")

    trainer = parser.add_argument_group("trainer (may change on --resume)")
    trainer.add_argument("--max_epochs", type=int, default=r("max_epochs"), help="Early stopping usually ends runs first")
    trainer.add_argument("--max_steps", type=int, default=r("max_steps"), help="Stop after this many steps (-1: no limit)")
    trainer.add_argument("--max_time", type=_max_time, default=r("max_time"),
                         help="Stop training after this wall time, DD:HH:MM:SS (then test the best checkpoint)")
    trainer.add_argument("--accelerator", default=r("accelerator"), help="auto, cpu, gpu, cuda, mps")
    trainer.add_argument("--devices", type=_devices, default=r("devices"), help="auto, a number, or a list such as 0,1")
    trainer.add_argument("--strategy", default=r("strategy"), help="auto, ddp (Lightning starts one process per device), ...")
    trainer.add_argument("--precision", default=r("precision"), choices=("32-true", "bf16-mixed", "16-mixed"),
                         help="Floating point precision of training")
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        trainer.add_argument(f"--{name}", type=_int_or_float, default=None,
                             help="Batches per epoch: a number, or a fraction of the split")
    trainer.add_argument("--val_check_interval", type=_int_or_float, default=None,
                         help="Validate every this many training batches (or fraction of an epoch)")
    trainer.add_argument("--checkpoint_every_n_steps", type=int, default=r("checkpoint_every_n_steps"),
                         help="Save last.ckpt every this many steps (also after every validation and on Ctrl-C)")
    trainer.add_argument("--log_every_n_steps", type=int, default=r("log_every_n_steps"),
                         help="Write train metrics to metrics.csv every this many steps")
    trainer.add_argument("--no_progress_bar", dest="progress_bar", action="store_false", default=True,
                         help="No progress bar (for log files)")
    trainer.add_argument("--no_compile_attention", dest="compile_attention", action="store_false", default=True,
                         help="On the CPU, train with the uncompiled attention (default: torch.compile its FAVOR+ "
                              "core, a few seconds per new input shape; also RELATIVE_PERFORMER_COMPILE=0)")
    return parser


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from relative_performer.models import ModelConfig
    from relative_performer.training.run import (
        DATA_DERIVED, RuntimeConfig, TrainingConfig, TrainRequest, request_from_run, request_from_source,
        runtime_fields, train,
    )

    command = " ".join([PROG, "train", *map(shlex.quote, argv)])
    runtime = {name: getattr(args, name) for name in runtime_fields()}
    training = {f.name: getattr(args, f.name) for f in fields(TrainingConfig)}
    model_fields = [f.name for f in fields(ModelConfig) if f.name not in DATA_DERIVED]
    if args.resume and args.init_from:
        raise UserError("--resume continues a run and --init_from starts a new one: give one of them")
    if args.resume:
        explicit = _explicit_options(parser, argv) - {"resume"}
        misplaced = sorted(explicit & {"log_path", "exp_name", "version"})
        if misplaced:
            raise UserError(f"--{misplaced[0]} cannot be combined with --resume: the run folder is {args.resume}")
        fixed = {n: getattr(args, n) for n in explicit if n in {"model", "dataset", *model_fields, *training}}
        given_runtime = {n: runtime[n] for n in explicit if n in runtime}
        request = request_from_run(args.resume, fixed, given_runtime, command)
    elif args.init_from:
        explicit = _explicit_options(parser, argv)
        given = {n: getattr(args, n) for n in explicit if n in model_fields}
        request = request_from_source(
            args.init_from, args.model, args.dataset, given,
            training=TrainingConfig(**training), runtime=RuntimeConfig(**runtime),
            log_path=args.log_path, exp_name=args.exp_name, version=args.version, command=command,
        )
    else:
        if args.model is None or args.dataset is None:
            parser.error("the following arguments are required: model, dataset (or --resume RUN_DIR)")
        options = {n: getattr(args, n) for n in model_fields if hasattr(args, n)}  # this model's options
        request = TrainRequest(
            model=args.model, dataset=args.dataset, model_options=options,
            training=TrainingConfig(**training), runtime=RuntimeConfig(**runtime),
            log_path=args.log_path, exp_name=args.exp_name, version=args.version, command=command,
        )
    strategy = str(request.runtime.strategy)
    if "ddp" in strategy and "spawn" not in strategy and not _argv_is_the_command_line(argv):
        raise UserError(
            f"--strategy {strategy} starts its further processes by running this process's command line again; "
            "run it as a command (relative-performer train ...), not through main(argv) with other arguments"
        )
    return train(request)


# ==========================================================================
# test, test-recursive, test-shifted, plot-shifted, data
# ==========================================================================


def _eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_dir", default=None,
                        help="Data folder (default: the run's own if it still exists, else $RELATIVE_PERFORMER_DATA or ./data)")
    parser.add_argument("--batch_size", type=int, default=64, help="Evaluation batch size")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")


def test_parser(argv: Sequence[str], recursive: bool = False) -> argparse.ArgumentParser:
    what = "every run folder below the given folders" if recursive else "one run"
    parser = Parser(
        prog=f"{PROG} {'test-recursive' if recursive else 'test'}",
        description=_wrap(f"Evaluate {what} on the val and test splits with its best checkpoint; one CSV row per run "
                    "(hyperparameters, parameters, val_loss, val_acc, test_loss, test_acc; accuracy as a fraction)."),
    )
    if recursive:
        parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Folders to search for runs")
    else:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="The run folder (LOG_PATH/EXP_NAME/VERSION)")
    parser.add_argument("--output", required=True, help="CSV file to write (its folder is created)")
    parser.add_argument("--limit_batches", type=int, default=None,
                        help="Evaluate only this many batches of each split (quick check)")
    _eval_options(parser)
    return parser


def run_test(args: argparse.Namespace, parser, argv) -> int:
    from relative_performer.evaluation.runs import test_many, write_csv

    recursive = hasattr(args, "run_dirs")
    limit = args.limit_batches * args.batch_size if args.limit_batches is not None else None
    rows = test_many(args.run_dirs if recursive else [args.run_dir], recursive, args.data_dir, args.batch_size, limit, args.device)
    path = write_csv(rows, args.output)
    print(f"Wrote {len(rows)} row{'s' * (len(rows) != 1)} to {path}")
    return 0


def test_shifted_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog=f"{PROG} test-shifted",
        description=_wrap("Accuracy on shifted test images (MNIST and FashionMNIST): test split, only the given labels, "
                    "only images with at least MIN_SHIFT empty columns (rows for --axis y) on both sides, shifted "
                    "by -MIN_SHIFT..MIN_SHIFT pixels. One CSV row per run and shift: run_dir, model, dataset, axis, "
                    "shift, n_images, accuracy_mean, accuracy_std (fractions), loss_mean, loss_std (std over images)."),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Run folders, or folders to search for runs")
    parser.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                        help="Class labels to shift, or 'all' (default: 1)")
    parser.add_argument("--min_shift", type=int, default=10, help="Largest shift in pixels, in both directions")
    parser.add_argument("--axis", choices=("x", "y"), default="x", help="Shift columns (x) or rows (y)")
    parser.add_argument("--output", required=True, help="CSV file to write (its folder is created)")
    parser.add_argument("--feature_seed", type=int, nargs="+", default=None, metavar="SEED",
                        help="Also evaluate with random features redrawn from each SEED (rows get feature_seed)")
    parser.add_argument("--max_images", type=int, default=None,
                        help="Use only the first MAX_IMAGES qualifying test images, in file order (quicker)")
    parser.add_argument("--redraw_features", action="store_true",
                        help="Evaluate with one fresh random draw of the features (seed printed and saved) "
                             "instead of the checkpoint's")
    _eval_options(parser)
    return parser


def run_test_shifted(args: argparse.Namespace, parser, argv) -> int:
    import random

    from relative_performer.evaluation.runs import write_csv
    from relative_performer.evaluation.shifted import test_shifted

    seeds: list[int | None] = list(args.feature_seed) if args.feature_seed else []
    if args.redraw_features and not seeds:
        seeds = [random.SystemRandom().randrange(0, 2**31 - 1)]
        print(f"Redrawing the random features with seed {seeds[0]}")
    if args.feature_seed and not args.redraw_features:
        seeds = [None, *seeds]  # the checkpoint's own features, then each redraw
    if args.min_shift < 0:
        raise UserError(f"--min_shift must be >= 0 (got {args.min_shift})")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max_images must be at least 1 (got {args.max_images})")
    rows = test_shifted(
        args.run_dirs, _labels(args.labels), args.min_shift, args.axis, args.data_dir, args.batch_size, args.device,
        seeds or [None], args.max_images,
    )
    path = write_csv(rows, args.output)
    print(f"Wrote {len(rows)} rows to {path}")
    return 0


def plot_shifted_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog=f"{PROG} plot-shifted",
        description=_wrap("Plot accuracy against shift from test-shifted CSV files: one panel per dataset and axis, "
                    "one line per run, labelled by model."),
    )
    parser.add_argument("csvs", nargs="+", metavar="CSV", help="Files written by test-shifted")
    parser.add_argument("--output", required=True, help="Image file to write (.png, .pdf, .svg); its folder is created")
    parser.add_argument("--title", default=None, help="Figure title")
    return parser


def run_plot_shifted(args: argparse.Namespace, parser, argv) -> int:
    from relative_performer.plots import plot_shifted

    path = plot_shifted(args.csvs, args.output, args.title)
    print(f"Wrote {path}")
    return 0


def export_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog=f"{PROG} export",
        description=_wrap("Copy a finished run into a new, small run folder to share (as in pretrained/): config.json, "
                    "results.json, metrics.csv and checkpoints/best.ckpt with the weights and model record only "
                    "(no optimizer state). Records the loss and accuracy on the first CHECK_IMAGES test images in "
                    "results.json ('check'), so a later load can be verified."),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="The finished run folder")
    parser.add_argument("dest", metavar="DEST", help="The new folder (must not exist or be empty)")
    parser.add_argument("--check_images", type=int, default=1000, help="Test images of the recorded check")
    parser.add_argument("--data_dir", default=None,
                        help="Data folder (default: the run's own if it still exists, else $RELATIVE_PERFORMER_DATA or ./data)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu, the reference)")
    return parser


def run_export(args: argparse.Namespace, parser, argv) -> int:
    from relative_performer.export import export_run

    command = shlex.join([PROG, "export", *argv])
    check = export_run(args.run_dir, args.dest, args.check_images, args.data_dir, args.device, command)
    print(f"Exported {args.run_dir} to {args.dest}: accuracy {check['accuracy']:.4f} on the first "
          f"{check['n_images']} test images")
    return 0


def data_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog=f"{PROG} data",
        description=_wrap("fetch: put the raw files of the datasets in the data folder (then verify them); "
                    "verify: check image counts per class and the checksums of the official releases."),
    )
    parser.add_argument("action", choices=("fetch", "verify"))
    parser.add_argument("names", nargs="*", metavar="DATASET", help=f"Datasets ({', '.join(DATASETS)}; default: all)")
    parser.add_argument("--data_dir", default=None, help="Data folder (default: $RELATIVE_PERFORMER_DATA or ./data)")
    return parser


def run_data(args: argparse.Namespace, parser, argv) -> int:
    from pathlib import Path

    from relative_performer.data.sources import data_command

    return data_command(args.action, args.names, Path(args.data_dir) if args.data_dir else None)


def equivariance_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    from relative_performer.models import MODELS

    parser = Parser(
        prog=f"{PROG} equivariance",
        description=_wrap("Measure how far each model's class logits move under cyclic shifts of the image, with exact "
                    "attention and with several draws of the random features (random weights, periodic positions, "
                    "float64). An exactly relative model moves by ~1e-15."),
    )
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS), help="Models (default: all)")
    parser.add_argument("--side", type=int, default=16, help="Image side in pixels")
    parser.add_argument("--draws", type=int, default=3, help="Random-feature draws per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="Also write the table as CSV")
    return parser


def run_equivariance(args: argparse.Namespace, parser, argv) -> int:
    from dataclasses import asdict

    import pandas as pd

    from relative_performer.evaluation.equivariance import measure

    table = pd.DataFrame(asdict(r) for r in measure(args.models, side=args.side, draws=args.draws, seed=args.seed))
    summary = table.groupby(["model", "attention"], sort=False)["max_relative_logit_change"].max().unstack()
    print(summary.to_string(float_format=lambda v: f"{v:.1e}"))
    if args.output:
        from relative_performer.evaluation.runs import write_csv

        print(f"Wrote {write_csv(table.to_dict('records'), args.output)}")
    return 0


# ==========================================================================
# Dispatch
# ==========================================================================

Command = tuple[str, Callable[[Sequence[str]], argparse.ArgumentParser], Callable[..., int]]
COMMANDS: dict[str, Command] = {
    "train": ("train a model (see `train MODEL DATASET --help` for a model's own options)", train_parser, run_train),
    "test": ("evaluate one run on val and test: a CSV row", lambda argv: test_parser(argv), run_test),
    "test-recursive": ("evaluate every run below folders: a CSV row each", lambda argv: test_parser(argv, True), run_test),
    "test-shifted": ("accuracy on shifted test images: a CSV row per run and shift", test_shifted_parser, run_test_shifted),
    "plot-shifted": ("plot test-shifted CSVs: accuracy against shift", plot_shifted_parser, run_plot_shifted),
    "export": ("copy a finished run into a small run folder to share (weights only)", export_parser, run_export),
    "data": ("fetch or verify datasets", data_parser, run_data),
    "equivariance": ("measure cyclic-shift invariance: exact attention vs random features", equivariance_parser,
                     run_equivariance),
}


def top_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Translation-equivariant Performer (FAVOR+) attention on images (Horn et al., arXiv 2102.07680).",
        epilog=f"`{PROG} COMMAND --help` shows a command's options. --debug (or {DEBUG_ENV}=1) shows tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (summary, _, _) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        parser = top_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        parser.parse_args(argv[:1])  # prints help, the version, or "invalid choice"
        return 2
    name, rest = argv[0], argv[1:]
    _, build, run = COMMANDS[name]
    parser = build(rest)
    args = parser.parse_args(rest)
    return run(args, parser, rest)


def _argv_is_the_command_line(argv: Sequence[str]) -> bool:
    return [a for a in sys.argv[1:] if a != "--debug"][1:] == list(argv)


def _error(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relative-performer`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    keep_freed_memory()  # large tensors stop costing page faults (glibc; see relative_performer.allocator)
    try:
        return _dispatch(argv)
    except SystemExit as exc:  # argparse (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else _error(exc.code))
    except UserError as exc:
        if debug:
            raise
        return _error(str(exc))
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if isinstance(exc, MisconfigurationException) and not debug:
            return _error(str(exc))
        raise


if __name__ == "__main__":
    sys.exit(main())
