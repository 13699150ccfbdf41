"""The README's results table, from the CSVs that scripts/results.sh writes in results/.

    python scripts/results_table.py RESULTS_DIR [--readme README.md]

Prints the markdown tables (and writes them to RESULTS_DIR/table.md); with
--readme, also replaces the text between the README's markers
``<!-- results:start -->`` and ``<!-- results:end -->``. Nothing in the tables is
typed by hand except the original work's published numbers below.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

# The original work's results (its results table; DESIGN.md section 2): test accuracy in %.
PAPER_TEST = {
    "Performer": {"MNIST": 98.85, "FashionMNIST": 90.59, "CIFAR10": 69.36},
    "NoposPerformer": {"MNIST": 44.98, "FashionMNIST": 67.25, "CIFAR10": 52.74},
    "RelativePerformer": {"MNIST": 98.77, "FashionMNIST": 90.42, "CIFAR10": 66.45},
    "ClippedRelativePerformer": {"MNIST": 94.70, "FashionMNIST": 86.66, "CIFAR10": 58.28},
}
# Shift test, label 1, accuracy in % at shift -8 / 0 / +8.
PAPER_SHIFT = {
    ("MNIST", "Performer"): (25.8, 99.3, 58.2),
    ("MNIST", "RelativePerformer"): (100.0, 100.0, 99.6),
    ("FashionMNIST", "Performer"): (0.0, 99.1, 0.1),
    ("FashionMNIST", "RelativePerformer"): (89.6, 99.2, 98.4),
}
PAPER_SIZE = "dim 256, depth 6, heads 8, batch 22, lr 5e-5, trained on a GPU until early stopping"
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
MODEL_ORDER = ["Performer", "NoposPerformer", "RelativePerformer", "ClippedRelativePerformer", "ExactRelativePerformer"]


def _order(models) -> list[str]:
    return sorted(set(models), key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))


def _pct(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _earlier_runs(run_dir: Path) -> list[int]:
    """The steps of the runs a run was initialised from (``train --init_from``), newest first; [] if none."""
    config_path = run_dir / "config.json"
    source = json.loads(config_path.read_text()).get("init_from") if config_path.is_file() else None
    steps = []
    while source:
        steps.append(int(source.get("global_step") or 0))
        source = source.get("init_from")
    return steps


def _images(rows: pd.DataFrame) -> str:
    """The number of images behind a run's shift curve (the same at every shift)."""
    return str(int(rows["n_images"].iloc[0])) if "n_images" in rows and not rows["n_images"].isna().all() else "–"


def accuracy_table(test: pd.DataFrame) -> str:
    datasets = [d for d in ("MNIST", "FashionMNIST", "CIFAR10") if d in set(test["dataset"])]
    header = ["model"] + [f"{d} ours" for d in datasets] + [f"{d} paper" for d in datasets] + ["parameters", "training (ours, per run)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in _order(test["model"]):
        rows = test[test["model"] == model].set_index("dataset")
        ours = [_pct(rows["test_acc"].get(d)) for d in datasets]
        paper = [f"{PAPER_TEST[model][d]:.2f}" if model in PAPER_TEST else "–" for d in datasets]
        budgets = []
        for dataset in datasets:
            if dataset not in rows.index:
                continue
            run_dir = Path(rows.loc[dataset, "run_dir"])
            results = json.loads((run_dir / "results.json").read_text())
            budget = f"{dataset}: {results['global_step']} steps, {_duration(results['train_seconds'])}"
            earlier = _earlier_runs(run_dir)
            if earlier:
                runs = "an earlier run" if len(earlier) == 1 else f"{len(earlier)} earlier runs"
                budget += f", from the weights of {runs} (`--init_from`, {sum(earlier)} steps)"
            budgets.append(budget)
        lines.append("| " + " | ".join([f"`{model}`", *ours, *paper, f"{int(rows['parameters'].iloc[0]):,}", "; ".join(budgets)]) + " |")
    return "\n".join(lines)


def shift_table(shifted: pd.DataFrame) -> str:
    own = shifted[shifted["feature_seed"].isna()] if "feature_seed" in shifted else shifted
    edge = int(own["shift"].max())
    lines = [f"| dataset | model | images | ours {-edge} / 0 / +{edge} | worst shift, ours | paper -8 / 0 / +8 |",
             "|---|---|---|---|---|---|"]
    for dataset in [d for d in ("MNIST", "FashionMNIST") if d in set(own["dataset"])]:
        for model in _order(own[own["dataset"] == dataset]["model"]):
            run_rows = own[(own["dataset"] == dataset) & (own["model"] == model)]
            rows = run_rows.set_index("shift")["accuracy_mean"]
            ours = " / ".join(_pct(rows.get(s)) for s in (-edge, 0, edge))
            worst = f"{_pct(rows.min())} at {int(rows.idxmin()):+d}"
            paper = " / ".join(f"{v:.1f}" for v in PAPER_SHIFT[(dataset, model)]) if (dataset, model) in PAPER_SHIFT else "–"
            lines.append(f"| {dataset} | `{model}` | {_images(run_rows)} | {ours} | {worst} | {paper} |")
    return "\n".join(lines)


def flatness_table(frames: dict[str, pd.DataFrame]) -> str:
    """Per dataset, model and axis: unshifted accuracy, worst shift, and the spread (max - min) over shifts."""
    lines = ["| dataset | model | axis | shifts | images | unshifted | worst | spread (points) |", "|---|---|---|---|---|---|---|---|"]
    for axis, frame in frames.items():
        own = frame[frame["feature_seed"].isna()] if "feature_seed" in frame else frame
        for dataset in [d for d in ("MNIST", "FashionMNIST") if d in set(own["dataset"])]:
            for model in _order(own[own["dataset"] == dataset]["model"]):
                run_rows = own[(own["dataset"] == dataset) & (own["model"] == model)]
                rows = run_rows.set_index("shift")["accuracy_mean"]
                edge = int(rows.index.max())
                lines.append(
                    f"| {dataset} | `{model}` | {axis} | -{edge}..{edge} | {_images(run_rows)} | {_pct(rows.get(0))} | "
                    f"{_pct(rows.min())} at {int(rows.idxmin()):+d} | {100 * (rows.max() - rows.min()):.1f} |"
                )
    return "\n".join(lines)


def draws_table(draws: pd.DataFrame) -> str:
    """Per model: with its own features and over fresh draws, unshifted accuracy and spread over shifts."""
    lines = ["| model | features | images | unshifted | worst shift | spread over shifts (points) |", "|---|---|---|---|---|---|"]
    for model in _order(draws["model"]):
        frame = draws[draws["model"] == model]
        for seed, rows in frame.groupby(frame["feature_seed"].fillna(-1), sort=True):
            acc = rows.set_index("shift")["accuracy_mean"]
            label = "its own" if seed == -1 else f"fresh draw, seed {int(seed)}"
            lines.append(f"| `{model}` | {label} | {_images(rows)} | {_pct(acc.get(0))} | {_pct(acc.min())} at {int(acc.idxmin()):+d} | "
                         f"{100 * (acc.max() - acc.min()):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args()
    test = pd.read_csv(args.results / "test.csv")
    shifted = pd.read_csv(args.results / "shifted-label1-x.csv")
    text = (
        "Test accuracy (%), ours on the full test split with `test-recursive`; the paper's from its results table. "
        f"Ours are much smaller and trained far shorter (dim {int(test['dim'].iloc[0])}, depth {int(test['depth'].iloc[0])}, "
        f"heads {int(test['heads'].iloc[0])}; each run's steps and training time in the last column) than the paper's "
        f"({PAPER_SIZE}), so they may score less.\n\n"
        + accuracy_table(test)
        + "\n\nShift test (label 1, test images with at least 8 empty columns on each side, the first `images` of them, "
        "shifted along x), accuracy in %:\n\n"
        + shift_table(shifted)
        + "\n"
    )
    frames = {axis: pd.read_csv(args.results / f"shifted-all-{axis}.csv") for axis in ("x", "y")
              if (args.results / f"shifted-all-{axis}.csv").is_file()}
    if frames:
        text += "\nAll ten labels (images with enough empty columns, or rows, on each side), accuracy in %:\n\n"
        text += flatness_table(frames) + "\n"
    if (args.results / "feature-draws-x.csv").is_file():
        text += ("\nThe same MNIST runs with their own random features and with 5 fresh draws "
                 "(all labels, x, -8..8), accuracy in %:\n\n")
        text += draws_table(pd.read_csv(args.results / "feature-draws-x.csv")) + "\n"
    (args.results / "table.md").write_text(text)
    print(text)
    if args.readme:
        readme = args.readme.read_text()
        pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.S)
        if not pattern.search(readme):
            raise SystemExit(f"{args.readme} has no {MARKERS[0]} ... {MARKERS[1]} block")
        args.readme.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{text}{MARKERS[1]}", readme))
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
