"""scripts/results_table.py: the README's results tables come from the results/ CSVs, nothing typed in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def write_results(folder: Path) -> None:
    runs = []
    for i, (model, acc) in enumerate((("Performer", 0.9812), ("RelativePerformer", 0.9734), ("ExactRelativePerformer", 0.9701))):
        run = folder / "pretrained" / "MNIST" / model
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"global_step": 1000 * (i + 1), "train_seconds": 3600.0 * 2 ** i}))
        if model == "ExactRelativePerformer":  # continued twice with train --init_from: the chain is in config.json
            chain = {"global_step": 4816, "init_from": {"global_step": 3080, "init_from": None}}
            (run / "config.json").write_text(json.dumps({"model": model, "init_from": chain}))
        runs.append({"run_dir": str(run), "model": model, "dataset": "MNIST", "dim": 32, "depth": 2, "heads": 4,
                     "parameters": 25_000 + i, "test_acc": acc})
    pd.DataFrame(runs).to_csv(folder / "test.csv", index=False)
    rows = []
    for run in runs:
        for shift in range(-8, 9):
            drop = 0.5 * abs(shift) / 8 if run["model"] == "Performer" else 0.0
            for seed in (None, 1):
                rows.append({"run_dir": run["run_dir"], "model": run["model"], "dataset": "MNIST", "axis": "x",
                             "shift": shift, "n_images": 300, "accuracy_mean": 0.99 - drop - (0.1 if seed else 0.0), "feature_seed": seed})
    pd.DataFrame(rows).to_csv(folder / "shifted-label1-x.csv", index=False)
    pd.DataFrame(rows).to_csv(folder / "shifted-all-x.csv", index=False)
    pd.DataFrame(rows).to_csv(folder / "feature-draws-x.csv", index=False)


def make_tables(folder: Path, readme: Path) -> subprocess.CompletedProcess:
    script = ROOT / "scripts" / "results_table.py"
    return subprocess.run([sys.executable, str(script), str(folder), "--readme", str(readme)], capture_output=True, text=True)


def test_tables_are_made_from_the_csvs_and_put_between_the_readme_markers(tmp_path):
    write_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- results:start -->\nold table\n<!-- results:end -->\nafter\n")
    done = make_tables(tmp_path, readme)
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title\n\nbefore\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\nafter\n")
    assert (tmp_path / "table.md").read_text() in text
    # clean accuracy beside the paper's, with the run's budget
    assert "| `Performer` | 98.1 | 98.85 | 25,000 | MNIST: 1000 steps, 60 min |" in text
    assert ("| `ExactRelativePerformer` | 97.0 | – | 25,002 | MNIST: 3000 steps, 4.0 h, from the weights of 2 earlier runs "
            "(`--init_from`, 7896 steps) |") in text
    # the shift table uses the runs' own features only, the paper's numbers beside ours
    assert "| MNIST | `Performer` | 300 | 49.0 / 99.0 / 49.0 | 49.0 at -8 | 25.8 / 99.3 / 58.2 |" in text
    assert "| MNIST | `RelativePerformer` | 300 | 99.0 / 99.0 / 99.0 | 99.0 at -8 | 100.0 / 100.0 / 99.6 |" in text
    # feature draws: one line per draw
    assert "| `RelativePerformer` | fresh draw, seed 1 | 300 | 89.0 | 89.0 at -8 | 0.0 |" in text
    assert "| MNIST | `Performer` | x | -8..8 | 300 | 99.0 | 49.0 at -8 | 50.0 |" in text


def test_a_readme_without_markers_is_refused(tmp_path):
    write_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    done = make_tables(tmp_path, readme)
    assert done.returncode != 0 and "no <!-- results:start -->" in done.stderr
    assert readme.read_text() == "# no markers\n"
