#!/usr/bin/env python
"""Does mixed precision learn as well as float32? Short training runs side by side.

    python benchmarks/precision_parity.py [--model Performer] [--dataset MNIST] [--steps 1500]
        [--seeds 1 2] [--precisions 32-true bf16-mixed] [--out benchmarks/out/parity]

For every seed, the same run (model, data, split, seed, schedule, budget in steps) is trained once
per precision with the project's own ``relative-performer train`` command; the best validation
accuracy (on the whole validation split) and the test accuracy of the best checkpoint are read
back from each run's ``results.json``. The table prints them with each precision's difference from
float32 at the same seed, and the spread between seeds at the same precision: a difference is only
meaningful next to that spread. Writes ``parity.csv`` and keeps the run folders under ``--out``.

Run on an idle machine or with ``--threads``: the runs are sequential, one at a time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "parity"


def train_command(args: argparse.Namespace, precision: str, seed: int) -> list[str]:
    return [
        sys.executable, "-m", "relative_performer", "train", args.model, args.dataset,
        "--dim", str(args.dim), "--depth", str(args.depth), "--heads", str(args.heads),
        "--batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--schedule", "noam", "--warmup", str(args.warmup), "--max_steps", str(args.steps),
        "--val_check_interval", str(args.val_check_interval), "--patience", "1000",
        "--precision", precision, "--seed", str(seed), "--accelerator", args.accelerator,
        "--log_path", str(args.out), "--exp_name", f"{args.model}-{args.dataset}", "--version", f"{precision}-seed{seed}",
        "--no_progress_bar", *args.extra,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Performer")
    parser.add_argument("--dataset", default="MNIST")
    parser.add_argument("--steps", type=int, default=1500, help="Training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--val_check_interval", type=int, default=500)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("extra", nargs="*", help="More train options, after --")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for seed in args.seeds:
        for precision in args.precisions:
            run = args.out / f"{args.model}-{args.dataset}" / f"{precision}-seed{seed}"
            if not (run / "results.json").is_file():
                command = train_command(args, precision, seed)
                print("$", shlex.join(command[1:]), flush=True)
                start = time.monotonic()
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return done.returncode
                print(f"  {time.monotonic() - start:.0f} s", flush=True)
            results = json.loads((run / "results.json").read_text())
            rows.append({
                "seed": seed, "precision": precision, "steps": results["global_step"],
                "best_val_acc": results["best_val_acc"], "test_acc": results["test_acc"],
                "train_seconds": results["train_seconds"],
            })

    base = {r["seed"]: r for r in rows if r["precision"] == args.precisions[0]}
    for r in rows:
        r["val_diff_points"] = 100 * (r["best_val_acc"] - base[r["seed"]]["best_val_acc"])
        r["test_diff_points"] = 100 * (r["test_acc"] - base[r["seed"]]["test_acc"])
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "parity.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    print(f"\n{args.model} on {args.dataset}, dim {args.dim} depth {args.depth} heads {args.heads}, batch "
          f"{args.batch_size}, {args.steps} steps; differences from {args.precisions[0]} at the same seed, in points")
    print(f"{'seed':>4}  {'precision':<11} {'val acc':>8} {'test acc':>8} {'val diff':>8} {'test diff':>9} {'train s':>8}")
    for r in rows:
        print(f"{r['seed']:>4}  {r['precision']:<11} {100 * r['best_val_acc']:8.2f} {100 * r['test_acc']:8.2f} "
              f"{r['val_diff_points']:+8.2f} {r['test_diff_points']:+9.2f} {r['train_seconds']:8.0f}")
    for precision in args.precisions:
        vals = [100 * r["best_val_acc"] for r in rows if r["precision"] == precision]
        mean = sum(vals) / len(vals)
        print(f"{precision}: mean best val acc {mean:.2f}, spread over seeds {max(vals) - min(vals):.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
