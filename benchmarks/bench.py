#!/usr/bin/env python
"""Throughput and memory of every registered model against three baselines.

    python benchmarks/bench.py [--quick] [--device cpu|cuda] [--out benchmarks/out]

Rows (all at the original defaults: dim 128, depth 4, heads 4, batch 16, 32 x 32 = 1025 tokens):

* every model in the registry (``relative_performer.models.MODELS``), so new models appear here;
* ``softmax-SDPA``: our classifier with ``no_projection=True``, i.e. exact softmax attention
  through ``torch.nn.functional.scaled_dot_product_attention`` (fused, quadratic time);
* ``floor``: our ``Performer`` with the attention *core* removed (no features, no products, no
  normaliser: the layer returns its values). It keeps the q/k/v and output projections, dropout,
  norms, feed-forward, embedding and head: the cost of everything that is not attention;
* ``performer-pytorch``: lucidrains' ``performer_pytorch.Performer`` 1.1.4 (if importable; a
  benchmark-only extra) inside the same embedding / class token / sinusoid encoding / head.

Each row is timed in float32 and under bf16 autocast (CPU and CUDA). A training step is
zero_grad + forward + cross-entropy + backward + Adam step with dropout on; inference is an eval-mode
forward under ``torch.inference_mode``. Rows are interleaved in every repeat (in a shuffled order)
so that noise from other processes hits all of them alike; the table gives medians over the
repeats after warm-up steps.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one step above what was allocated
before it. On the CPU torch keeps no allocation statistics, so every (row, mode) runs in a fresh
subprocess that reports how far one warm-up step and one measured step raised the process's
peak resident set size above where it stood after building the model, optimizer and batch
(``VmHWM`` minus ``VmRSS``): activations, gradients, optimizer state and allocator overhead included.

On the CPU our models train with the ``torch.compile``'d FAVOR+ core, as ``relative-performer
train`` does (``--compile-attention off``: eager); its compile happens in the warm-up steps. The
memory subprocesses run the eager core (compiling there would count the compiler's own memory);
the compiled core keeps the same tensors for its backward (``tests/test_compiled.py``).

A scaling sweep runs each registered model, softmax-SDPA and the floor at image sides 16, 32, 64,
128 with the batch shrunk so that every step sees ~16.4k tokens, and reports time and memory per
image and per token, plus a log-log plot. Results go to ``--out`` as CSV, JSON and PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from relative_performer.allocator import ENV as ALLOCATOR_ENV
from relative_performer.allocator import keep_freed_memory, malloc_policy
from relative_performer.attention import compiled
from relative_performer.models import MODELS, create_model
from relative_performer.models.blocks import SelfAttention
from relative_performer.positional.sinusoid import LearnableSinusoidEncoding

DIM, DEPTH, HEADS, BATCH, SIDE = 128, 4, 4, 16, 32
SOFTMAX, FLOOR, LUCIDRAINS = "softmax-SDPA", "floor", "performer-pytorch"
REFERENCE = "Performer"  # the row every ratio is taken against
NB_FEATURES: int | None = None  # --nb_features: random features per head of every registered model (None: each model's default)


# --------------------------------------------------------------------------- rows


class PerformerPytorchClassifier(nn.Module):
    """performer-pytorch's ``Performer`` trunk in our classifier's embedding, class token and head."""

    def __init__(self, dim: int = DIM, depth: int = DEPTH, heads: int = HEADS, num_classes: int = 10):
        super().__init__()
        from performer_pytorch import Performer

        self.embedding = nn.Linear(1, dim)
        self.encoding = LearnableSinusoidEncoding(dim)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.trunk = Performer(dim=dim, depth=depth, heads=heads, dim_head=dim // heads, ff_mult=4,
                               attn_dropout=0.1, ff_dropout=0.1, feature_redraw_interval=1000)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, height, width = images.shape
        pixels = self.embedding(images.flatten(2).transpose(1, 2)) + self.encoding(height, width)
        x = torch.cat((self.class_token.expand(b, -1, -1), pixels), dim=1)
        return self.head(self.norm(self.trunk(x)[:, 0]))


def lucidrains_available() -> bool:
    try:
        import performer_pytorch  # noqa: F401
    except Exception:  # not installed, or its own imports fail
        return False
    return True


def _values_only(self, qkv, x, ctx):
    """The floor's attention: the values, split into heads as ``SelfAttention.attend_qkv`` splits them."""
    return self.split(qkv)[2]


def build(row: str) -> nn.Module:
    """A fresh model for a row name (seeded, so every run benchmarks the same weights)."""
    torch.manual_seed(0)
    size = dict(dim=DIM, depth=DEPTH, heads=HEADS)
    if row == SOFTMAX:
        return create_model(model=REFERENCE, no_projection=True, **size)
    if row == FLOOR:
        model = create_model(model=REFERENCE, **size)
        for module in model.modules():
            if isinstance(module, SelfAttention):
                module.attend_qkv = types.MethodType(_values_only, module)
        return model
    if row == LUCIDRAINS:
        return PerformerPytorchClassifier()
    if NB_FEATURES is not None:
        size["nb_features"] = NB_FEATURES
    return create_model(model=row, **size)


# --------------------------------------------------------------------------- timing


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """One model with its optimizer and a fixed batch; times single steps."""

    row: str
    side: int
    batch: int
    device: torch.device
    model: nn.Module = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self):
        self.model = build(self.row).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, betas=(0.9, 0.98))
        generator = torch.Generator().manual_seed(1)
        self.images = torch.rand(self.batch, 1, self.side, self.side, generator=generator).to(self.device)
        self.labels = torch.randint(0, 10, (self.batch,), generator=generator).to(self.device)

    def train_step(self, precision: str) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(precision, self.device):
            loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()

    def infer(self, precision: str) -> None:
        self.model.eval()
        with torch.inference_mode(), autocast(precision, self.device):
            self.model(self.images)

    def time(self, mode: str, precision: str) -> float:
        fn = self.train_step if mode == "train" else self.infer
        sync(self.device)
        start = time.perf_counter()
        fn(precision)
        sync(self.device)
        return time.perf_counter() - start

    def cuda_peak_mb(self, mode: str, precision: str) -> float:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        (self.train_step if mode == "train" else self.infer)(precision)
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20


def working_runners(keys: list, make, precisions: list[str]) -> dict:
    """Build a runner per key and try one step of each kind; a row that fails is reported and left out."""
    runners = {}
    for key in keys:
        try:
            runner = make(key)
            for precision in precisions:
                runner.train_step(precision)
                runner.infer(precision)
            runners[key] = runner
        except Exception as error:  # a broken or unsupported model must not sink the whole benchmark
            print(f"  left out {key}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    return runners


def interleaved(jobs: dict, warmup: int, repeats: int, seed: int = 0) -> dict:
    """jobs: key -> callable that runs once and returns its seconds. Warm-up rounds, then `repeats`
    rounds in a freshly shuffled order each; the seconds of every round per key."""
    for _ in range(warmup):
        for job in jobs.values():
            job()
    times = {key: [] for key in jobs}
    rng = random.Random(seed)
    for _ in range(repeats):
        order = list(jobs)
        rng.shuffle(order)
        for key in order:
            times[key].append(jobs[key]())
    return times


def interleaved_times(runners: dict, jobs: list[tuple], warmup: int, repeats: int, seed: int = 0) -> dict:
    """jobs: (key, runner key, mode, precision); :func:`interleaved` over the runners' timed steps."""
    return interleaved({key: functools.partial(runners[runner].time, mode, precision)
                        for key, runner, mode, precision in jobs}, warmup, repeats, seed)


# --------------------------------------------------------------------------- CPU memory probe


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux). VmHWM, unlike ``ru_maxrss``, is not inherited
    from the parent across fork + exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def probe_main(spec: str) -> None:
    """Subprocess entry: one (row, side, batch, mode, precision); prints the peak RSS increase in MB."""
    global NB_FEATURES
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    NB_FEATURES = args["nb_features"]
    runner = Runner(args["row"], args["side"], args["batch"], torch.device("cpu"))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    except OSError:
        pass
    before = _status_mb("VmRSS")
    for _ in range(2):
        (runner.train_step if args["mode"] == "train" else runner.infer)(args["precision"])
    print(json.dumps({"peak_mb": _status_mb("VmHWM") - before}))


def cpu_peak_mb(row: str, side: int, batch: int, mode: str, precision: str, threads: int) -> float:
    spec = json.dumps(dict(row=row, side=side, batch=batch, mode=mode, precision=precision, threads=threads,
                           nb_features=NB_FEATURES))
    result = subprocess.run([sys.executable, __file__, "--_probe", spec], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  memory probe failed for {row} {side} {mode} {precision}: {result.stderr.strip()[-300:]}")
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def peak_mb(runner: Runner, mode: str, precision: str, threads: int) -> float:
    if runner.device.type == "cuda":
        return runner.cuda_peak_mb(mode, precision)
    return cpu_peak_mb(runner.row, runner.side, runner.batch, mode, precision, threads)


# --------------------------------------------------------------------------- reporting


def fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> None:
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        cells.append([row[key] if isinstance(row[key], str) else fmt(row[key], digits) for _, key, digits in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for i, line in enumerate(cells):
        print("  ".join(cell.rjust(width) if j else cell.ljust(width) for j, (cell, width) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * width for width in widths))


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def environment(device: torch.device, threads: int) -> dict:
    from relative_performer.training.run import machine_info

    info = dict(torch=torch.__version__, python=platform.python_version(), device=str(device), threads=threads,
                cpu=machine_info()["cpu"], malloc=malloc_policy(),
                time=time.strftime("%Y-%m-%d %H:%M:%S"))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import version

        info["performer_pytorch"] = version("performer-pytorch") if lucidrains_available() else None
    except Exception:
        info["performer_pytorch"] = None
    return info


# --------------------------------------------------------------------------- main parts


def throughput_table(rows: list[str], precisions: list[str], device, warmup, repeats, threads, memory: str) -> list[dict]:
    runners = working_runners(rows, lambda row: Runner(row, SIDE, BATCH, device), precisions)
    rows = [row for row in rows if row in runners]
    jobs = [((row, mode, precision), row, mode, precision) for row in rows for precision in precisions
            for mode in ("train", "infer")]
    times = interleaved_times(runners, jobs, warmup, repeats)
    results = []
    for row in rows:
        for precision in precisions:
            train, infer = (statistics.median(times[(row, mode, precision)]) for mode in ("train", "infer"))
            result = dict(row=row, precision=precision, train_img_s=BATCH / train, infer_img_s=BATCH / infer,
                          train_ms=1000 * train, infer_ms=1000 * infer,
                          train_ms_min=1000 * min(times[(row, "train", precision)]),
                          infer_ms_min=1000 * min(times[(row, "infer", precision)]),
                          train_peak_mb=float("nan"), infer_peak_mb=float("nan"))
            if memory != "none" and (precision == "fp32" or device.type == "cuda"):
                result["train_peak_mb"] = peak_mb(runners[row], "train", precision, threads)
                if memory == "all":
                    result["infer_peak_mb"] = peak_mb(runners[row], "infer", precision, threads)
            results.append(result)
    by_key = {(r["row"], r["precision"]): r for r in results}
    for r in results:
        ref, floor = by_key.get((REFERENCE, r["precision"])), by_key.get((FLOOR, r["precision"]))
        lucid, fp32 = by_key.get((LUCIDRAINS, r["precision"])), by_key[(r["row"], "fp32")]
        for suffix in ("", "_min"):  # ratios of medians (the table) and of best-of-rounds times (CSV, targets)

            def speed(other, mode):  # throughput ratio r / other = time ratio other / r
                return other[f"{mode}_ms{suffix}"] / r[f"{mode}_ms{suffix}"] if other else float("nan")

            best = "_best" if suffix else ""
            r[f"train_vs_performer{best}"] = speed(ref, "train")
            r[f"infer_vs_performer{best}"] = speed(ref, "infer")
            r[f"train_time_vs_floor{best}"] = 1 / speed(floor, "train") if floor else float("nan")
            r[f"train_vs_lucidrains{best}"] = speed(lucid, "train")
            r[f"infer_vs_lucidrains{best}"] = speed(lucid, "infer")
            r[f"train_speedup_vs_fp32{best}"] = speed(fp32, "train")
            r[f"infer_speedup_vs_fp32{best}"] = speed(fp32, "infer")
    return results


def scaling_sweep(rows: list[str], sides: list[int], device, warmup, repeats, threads, memory: bool) -> list[dict]:
    tokens_per_step = BATCH * (SIDE * SIDE + 1)
    batches = {side: max(1, round(tokens_per_step / (side * side + 1))) for side in sides}
    runners = working_runners([(row, side) for row in rows for side in sides],
                              lambda key: Runner(key[0], key[1], batches[key[1]], device), [])
    rows = [row for row in rows if all((row, side) in runners for side in sides)]
    jobs = [((row, side), (row, side), "train", "fp32") for row in rows for side in sides]
    times = interleaved_times(runners, jobs, warmup, repeats, seed=1)
    results = []
    for row in rows:
        for side in sides:
            batch, tokens = batches[side], side * side + 1
            seconds = statistics.median(times[(row, side)])
            mem = peak_mb(runners[(row, side)], "train", "fp32", threads) if memory else float("nan")
            results.append(dict(row=row, side=side, tokens=tokens, batch=batch, train_ms=1000 * seconds,
                                ms_per_image=1000 * seconds / batch, us_per_token=1e6 * seconds / (batch * tokens),
                                peak_mb=mem, mb_per_image=mem / batch, kb_per_token=1024 * mem / (batch * tokens)))
        del_runners = [key for key in runners if key[0] == row]
        for key in del_runners:
            del runners[key]
    base = {r["row"]: r for r in results if r["side"] == SIDE}

    def ratio(a: float, b: float) -> float:
        return a / b if b and not math.isnan(b) else float("nan")

    for r in results:
        ref = base.get(r["row"], {})
        r["time_per_token_vs_32"] = ratio(r["us_per_token"], ref.get("us_per_token", float("nan")))
        r["mem_per_token_vs_32"] = ratio(r["kb_per_token"], ref.get("kb_per_token", float("nan")))
    return results


def plot_scaling(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in dict.fromkeys(r["row"] for r in results):
        points = [r for r in results if r["row"] == row]
        tokens = [r["tokens"] for r in points]
        style = "--" if row in (SOFTMAX, FLOOR) else "-"
        axes[0].plot(tokens, [r["ms_per_image"] for r in points], style, marker="o", label=row)
        if not all(math.isnan(r["mb_per_image"]) for r in points):
            axes[1].plot(tokens, [r["mb_per_image"] for r in points], style, marker="o", label=row)
    for ax, title in zip(axes, ("training step time per image (ms)", "peak memory per image (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens per image (1 + side^2)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def targets(table: list[dict], scaling: list[dict]) -> list[tuple]:
    """(description, value from medians, value from best-of-rounds times, target, met) for the issue's
    targets that the run measured; ``met`` judges the medians."""
    by_key = {(r["row"], r["precision"]): r for r in table}
    checks = []

    def add(text, row, key, target, test):
        value, best = row[key], row.get(key + "_best", float("nan"))
        if not math.isnan(value):
            checks.append((text, value, best, target, test(value)))

    at_least = lambda bound: (f">= {bound}x", lambda x: x >= bound)  # noqa: E731
    at_most = lambda bound: (f"<= {bound}x", lambda x: x <= bound)  # noqa: E731
    ref = by_key.get((REFERENCE, "fp32"))
    if ref:
        add("Performer train vs performer-pytorch (fp32)", ref, "train_vs_lucidrains", *at_least(1.3))
        add("Performer infer vs performer-pytorch (fp32)", ref, "infer_vs_lucidrains", *at_least(1.5))
        add("Performer train step time vs floor (fp32)", ref, "train_time_vs_floor", *at_most(1.4))
    for name, bound in (("RelativePerformer", 0.8), ("ClippedRelativePerformer", 0.6)):
        r = by_key.get((name, "fp32"))
        if r:
            add(f"{name} train vs Performer (fp32)", r, "train_vs_performer", *at_least(bound))
            add(f"{name} infer vs Performer (fp32)", r, "infer_vs_performer", *at_least(bound))
    exact = by_key.get(("ExactRelativePerformer", "fp32"))  # the exact-equivariance issue's target
    if exact:
        add("ExactRelativePerformer train vs Performer (fp32)", exact, "train_vs_performer", *at_least(0.5))
    for r in table:
        if r["precision"] != "fp32" and r["row"] in MODELS:
            add(f"{r['row']} train {r['precision']} vs fp32", r, "train_speedup_vs_fp32", *at_least(1.6))
    largest = max((r["side"] for r in scaling), default=None)
    for r in scaling:
        if r["side"] == largest and largest != SIDE:
            if r["row"] == SOFTMAX:
                add(f"{SOFTMAX} time per token {largest}^2 vs 32^2 (quadratic: grows)", r, "time_per_token_vs_32",
                    "grows", lambda x: x > 2)
                continue
            add(f"{r['row']} time per token {largest}^2 vs 32^2", r, "time_per_token_vs_32", *at_most(1.3))
            add(f"{r['row']} memory per token {largest}^2 vs 32^2", r, "mem_per_token_vs_32", *at_most(1.3))
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 timed rounds, training memory only, sweep at sides 32 and 128 only (~4 min on 2 quiet CPU cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 3 quick, 7 full)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 1 quick, 2 full)")
    parser.add_argument("--rows", nargs="+", help="subset of rows (model names, softmax-SDPA, floor, performer-pytorch)")
    parser.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default fp32 bf16 (fp16 only makes sense on CUDA)")
    parser.add_argument("--sides", nargs="+", type=int, help="scaling sweep image sides (default 16 32 64 128)")
    parser.add_argument("--memory", choices=("none", "train", "all"), help="peak-memory measurements (default: train "
                        "with --quick, else all)")
    parser.add_argument("--no-memory", action="store_true", help="same as --memory none")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling sweep")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory, as the relative-performer command does (default); "
                        "default: glibc's own policy (fresh pages for every large tensor)")
    parser.add_argument("--compile-attention", choices=("on", "off"), default="on",
                        help="on: our models train with the torch.compile'd FAVOR+ core on the CPU, as "
                        "`relative-performer train` does (default); off: eager")
    parser.add_argument("--nb_features", type=int, help="random features per attention head for every registered "
                        "model (default: each model's own, int(d ln d) of its attention head dim d; RelativePerformer's "
                        "heads are widened by its position features)")
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global NB_FEATURES
    if args.nb_features is not None and args.nb_features < 1:
        parser.error("--nb_features must be a positive number of random features")
    NB_FEATURES = args.nb_features
    if args.malloc == "keep":
        keep_freed_memory()
    else:
        os.environ[ALLOCATOR_ENV] = "default"  # the memory probes' subprocesses too
    if args._probe:
        return probe_main(args._probe)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    repeats = args.repeats or (3 if args.quick else 7)
    memory = "none" if args.no_memory else args.memory or ("train" if args.quick else "all")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    precisions = args.precisions or ["fp32", "bf16"]
    rows = args.rows or [*MODELS, SOFTMAX, FLOOR] + ([LUCIDRAINS] if lucidrains_available() else [])
    if args.quick and not args.rows:
        rows = [name for name in rows if name != "NoposPerformer"]  # same cost as Performer
    sides = args.sides or ([32, 128] if args.quick else [16, 32, 64, 128])
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(device, args.threads)
    env["compiled_attention"] = args.compile_attention == "on" and device.type == "cpu" and compiled.enable()
    if NB_FEATURES is not None:
        env["nb_features"] = NB_FEATURES
    if args.compile_attention == "on" and device.type == "cpu" and not env["compiled_attention"]:
        print(f"note: torch.compile does not work here ({compiled.unavailable_reason()}): eager attention")
    print(f"relative-performer benchmark: {json.dumps(env)}")
    if device.type == "cpu" and hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print(f"note: load average {os.getloadavg()[0]:.1f} before starting: other processes share the CPU, so "
              "single steps can be several times slower; compare ratios, and rerun when the machine is quiet")
    print(f"rows: {rows}; {repeats} timed rounds after {warmup} warm-up; dim {DIM} depth {DEPTH} heads {HEADS}, "
          f"batch {BATCH}, {SIDE}x{SIDE} images ({SIDE * SIDE + 1} tokens)\n")

    started = time.perf_counter()
    table = throughput_table(rows, precisions, device, warmup, repeats, args.threads, memory)
    print_table(table, [("row", "row", 0), ("prec", "precision", 0), ("train img/s", "train_img_s", 1),
                        ("infer img/s", "infer_img_s", 1), ("train ms", "train_ms", 0), ("train MB", "train_peak_mb", 0),
                        ("infer MB", "infer_peak_mb", 0), ("train/Perf", "train_vs_performer", 2),
                        ("infer/Perf", "infer_vs_performer", 2), ("time/floor", "train_time_vs_floor", 2),
                        ("train/lucid", "train_vs_lucidrains", 2), ("infer/lucid", "infer_vs_lucidrains", 2),
                        ("train x fp32", "train_speedup_vs_fp32", 2), ("infer x fp32", "infer_speedup_vs_fp32", 2)])
    write_csv(args.out / "throughput.csv", table)
    print(f"\n({time.perf_counter() - started:.0f} s)")

    scaling = []
    if not args.no_scaling:
        scaling_rows = [row for row in rows if row in MODELS or row in (SOFTMAX, FLOOR)]
        if args.quick and not args.rows:
            scaling_rows = [row for row in scaling_rows if row != FLOOR]
        print(f"\nscaling sweep (fp32 training step, ~{BATCH * (SIDE * SIDE + 1)} tokens per step):")
        scaling = scaling_sweep(scaling_rows, sides, device, 1, 1 if args.quick else max(2, repeats // 2), args.threads,
                                memory != "none")
        print_table(scaling, [("row", "row", 0), ("side", "side", 0), ("tokens", "tokens", 0), ("batch", "batch", 0),
                              ("ms/step", "train_ms", 0), ("ms/image", "ms_per_image", 1), ("us/token", "us_per_token", 2),
                              ("peak MB", "peak_mb", 0), ("KB/token", "kb_per_token", 2),
                              ("time/token vs 32", "time_per_token_vs_32", 2), ("mem/token vs 32", "mem_per_token_vs_32", 2)])
        write_csv(args.out / "scaling.csv", scaling)
        plot_scaling(scaling, args.out / "scaling.png")

    checks = targets(table, scaling)
    print("\ntargets (judged on medians; 'best' = the same ratio from each row's fastest round):")
    if NB_FEATURES is not None:
        print(f"  (--nb_features {NB_FEATURES}: the models are not the defaults the targets are about)")
    for text, value, best, target, ok in checks:
        best_text = "" if math.isnan(best) else f", best {best:.2f}"
        print(f"  [{'met' if ok else 'MISSED'}] {text}: {value:.2f}{best_text} (target {target})")
    (args.out / "results.json").write_text(json.dumps(dict(environment=env, throughput=table, scaling=scaling,
                                                           targets=[dict(zip(("check", "value", "value_best", "target", "met"), c)) for c in checks]),
                                                      indent=1, default=float))
    print(f"\nwrote {args.out}/throughput.csv, scaling.csv, scaling.png, results.json "
          f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
