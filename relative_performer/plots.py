"""Figures from the CSV files the evaluation commands write.

``plot_shifted``: accuracy against shift (the original work's figure), one
panel per (dataset, axis), one colour per run (solid: its own random features,
dashed/dotted: redrawn features). A line is labelled by its model, plus its run
folder when several runs of the same model share a panel.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from relative_performer.errors import UserError

SHIFT_COLUMNS = ("run_dir", "model", "dataset", "axis", "shift", "accuracy_mean")
LINESTYLES = ("-", "--", ":", "-.")


def read_shift_csvs(paths: Sequence[str | os.PathLike]):
    import pandas as pd

    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} does not exist")
        try:
            frame = pd.read_csv(path)
        except Exception as exc:
            raise UserError(f"{path} is not a readable CSV file ({' '.join(str(exc).split())})") from None
        missing = [c for c in SHIFT_COLUMNS if c not in frame.columns]
        if missing:
            raise UserError(f"{path} is not a test-shifted CSV: columns {missing} are missing")
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if "feature_seed" not in frame:
        frame["feature_seed"] = float("nan")
    return frame


def _run_name(run_dir: str, all_dirs: Sequence[str]) -> str:
    """The shortest tail of ``run_dir``'s path that tells it apart from the others."""
    parts = Path(run_dir).parts
    for n in range(1, len(parts) + 1):
        tail = "/".join(parts[-n:])
        if sum("/".join(Path(d).parts[-n:]) == tail for d in all_dirs) == 1:
            return tail
    return run_dir


def plot_shifted(paths: Sequence[str | os.PathLike], output: str | os.PathLike, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = read_shift_csvs(paths)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    panels = sorted(frame.groupby(["dataset", "axis"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 6.4 * len(panels)), 4.6), squeeze=False, sharey=True)
    for ax, (dataset, axis) in zip(axes[0], panels):
        panel = frame[(frame["dataset"] == dataset) & (frame["axis"] == axis)]
        runs = sorted(panel.groupby(["model", "run_dir"]).groups)  # one colour per run
        all_dirs = list(panel["run_dir"].unique())
        runs_per_model = panel.groupby("model")["run_dir"].nunique()
        for colour, (model, run_dir) in enumerate(runs):
            lines = panel[panel["run_dir"] == run_dir]
            draws = sorted(lines.groupby("feature_seed", dropna=False).groups, key=lambda s: -1 if pd.isna(s) else s)
            for k, seed in enumerate(draws):  # the run's own features solid, each redraw dashed/dotted
                line = lines[lines["feature_seed"].isna()] if pd.isna(seed) else lines[lines["feature_seed"] == seed]
                line = line.sort_values("shift")
                label = model
                if runs_per_model[model] > 1:
                    label += f" ({_run_name(run_dir, all_dirs)})"
                if len(draws) > 1 or not pd.isna(seed):
                    label += " [own features]" if pd.isna(seed) else f" [features {int(seed)}]"
                ax.plot(
                    line["shift"], line["accuracy_mean"], LINESTYLES[k % len(LINESTYLES)], marker="o",
                    markersize=3.5, color=plt.get_cmap("tab10")(colour % 10), label=label, linewidth=1.6,
                )
        shifts = sorted(panel["shift"].unique())
        step = max(1, math.ceil(len(shifts) / 9))
        ax.set_xticks([s for s in shifts if s % step == 0])  # at most about 9 ticks, 0 among them
        ax.axvline(0, color="0.75", linewidth=0.8, zorder=0)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(f"shift along {axis} (pixels)")
        n = panel["n_images"].iloc[0] if "n_images" in panel else None
        labels = panel["labels"].iloc[0] if "labels" in panel else None
        details = ", ".join(x for x in (f"labels: {labels}" if labels is not None else "", f"{n} images" if n else "") if x)
        ax.set_title(f"{dataset}" + (f" ({details})" if details else ""))
        if len(ax.get_lines()) > 4:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        else:
            ax.legend(fontsize="small", loc="best", framealpha=0.85)
    axes[0][0].set_ylabel("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return output
