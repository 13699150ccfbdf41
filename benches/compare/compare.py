#!/usr/bin/env python
"""Side-by-side benchmark of issue 24: the Rust models against performer-pytorch and the PyTorch reference.

    python benches/compare/compare.py [--quick] [--rounds 3] [--out results/benchmarks] ...

Run it with a Python that has torch and einops (here: the torch venv). It

1. builds the Rust example once (``cargo build --release --example bench_step --features flex``);
2. extracts the PyTorch reference at its last commit (``git archive 64c6e65``) into a temporary folder
   (put on PYTHONPATH of its processes only) and checks that performer-pytorch 1.1.4 imports
   (``--install-peers`` pip-installs it, else the command is printed and its rows are left out);
3. runs every configuration in a process of its own (``examples/bench_step.rs`` for Rust,
   ``benches/compare/torch_step.py`` for PyTorch, which uses the reference's ``benchmarks/bench.py``
   to build the peers and take their steps), in interleaved rounds: round r runs every configuration
   once, in a fixed order; each process times ``--reps`` steps after ``--warmup``, and the tables give
   the median over the rounds of each process's median;
4. writes ``throughput.csv``, ``scaling.csv``, ``scaling.svg``, ``raw.jsonl`` (every process's JSON
   line) and ``summary.md`` (the issue's targets, met or missed, with the ratios) to ``--out``.

Throughput: the five Rust models on ndarray and flex, performer-pytorch's ``Performer`` and the
reference's five models; train step and inference; dim 128, depth 4, heads 4, batch 16, 1x32x32,
float32, 2 threads. Scaling: the training step of the five Rust models (default backend), the
reference's five and exact softmax attention (the reference's ``softmax-SDPA``; the Rust models'
``--exact-softmax`` where its n x n matrices fit in memory) at sides 32, 64, 128 with the batch
shrunk to keep ~16.4k tokens per step (16, 4, 1 images), per token.
See benches/compare/README.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "torch_step.py"
REFERENCE_COMMIT = "64c6e65"
PEERS_PIP = ["performer-pytorch==1.1.4", "local-attention==1.4.4", "axial-positional-embedding==0.3.12"]
MODELS = ["Performer", "NoposPerformer", "RelativePerformer", "ClippedRelativePerformer", "ExactRelativePerformer"]
LUCID = "performer-pytorch"
SDPA = "softmax-SDPA"
DIM, DEPTH, HEADS, BATCH, SIDE = 128, 4, 4, 16, 32
TOKENS_PER_STEP = BATCH * (SIDE * SIDE + 1)


def log(message: str = "") -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- configurations


@dataclass
class Config:
    """One process to run: a Rust or PyTorch model, backend, mode, size."""

    impl: str  # rust | reference | performer-pytorch
    model: str
    backend: str  # ndarray | flex | torch
    mode: str  # train | infer
    size: int
    batch: int
    exact_softmax: bool = False
    groups: set = field(default_factory=set)  # throughput and/or scaling

    @property
    def key(self) -> tuple:
        return (self.impl, self.model, self.backend, self.mode, self.size, self.batch, self.exact_softmax)

    @property
    def label(self) -> str:
        model = self.model + (" (exact softmax)" if self.exact_softmax else "")
        return f"{self.impl}/{self.backend} {model} {self.mode} {self.size}x{self.size} b{self.batch}"

    @property
    def tokens(self) -> int:
        return self.size * self.size + 1


def scaling_batch(side: int) -> int:
    return max(1, round(TOKENS_PER_STEP / (side * side + 1)))


def softmax_batch(side: int, batch: int, memory_bytes: int) -> int | None:
    """The largest batch, at most `batch` and halving, at which the Rust exact softmax's training step
    holds its n x n float32 matrices in 60% of the memory; None if not even one image fits. About 16 of
    them per (image, head) at the peak: measured 4.4 GB above the start for batch 16 at 32x32."""
    n = side * side + 1
    while batch >= 1:
        if 4 * batch * HEADS * n * n * 16 < 0.6 * memory_bytes:
            return batch
        batch //= 2
    return None


def configurations(args, default_backend: str, have_lucid: bool, notes: list[str]) -> list[Config]:
    by_key: dict[tuple, Config] = {}

    def add(config: Config, group: str) -> None:
        config = by_key.setdefault(config.key, config)
        config.groups.add(group)

    for mode in ("train", "infer"):
        for model in MODELS:
            for backend in args.backends:
                add(Config("rust", model, backend, mode, SIDE, BATCH), "throughput")
            add(Config("reference", model, "torch", mode, SIDE, BATCH), "throughput")
        if have_lucid:
            add(Config(LUCID, LUCID, "torch", mode, SIDE, BATCH), "throughput")
    memory = physical_memory()
    for side in args.sizes:
        batch = scaling_batch(side)
        for model in MODELS:
            add(Config("rust", model, default_backend, "train", side, batch), "scaling")
            add(Config("reference", model, "torch", "train", side, batch), "scaling")
        softmax = softmax_batch(side, batch, memory)
        if softmax is None:
            notes.append(f"the Rust exact softmax is left out at {side}x{side}: its {side * side + 1}² attention "
                         f"matrices would not fit in {memory / 2**30:.0f} GiB")
            log(f"note: {notes[-1]}")
        else:
            add(Config("rust", "Performer", default_backend, "train", side, softmax, exact_softmax=True), "scaling")
        add(Config("reference", SDPA, "torch", "train", side, batch), "scaling")
    configs = list(by_key.values())
    if args.only:
        configs = [c for c in configs if any(word.lower() in c.label.lower() for word in args.only)]
    return configs


# --------------------------------------------------------------------------- set-up


def run_text(cmd: list[str], **kwargs) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs).stdout.strip()


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        for line in run_text(["lscpu"]).splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            elif key.strip() == "CPU(s)":
                info["cores"] = int(value.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    info["memory_gib"] = round(physical_memory() / 2**30, 1)
    return info


def git_commit() -> str:
    try:
        commit = run_text(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT)
        # what the measured code is made of: results/ and the README (the
        # outputs of this driver and of results/make.sh) do not count, as in make.sh
        dirty = run_text(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                          ":!results", ":!README.md"], cwd=ROOT)
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_backend() -> str:
    """The facade's default CPU backend: the first of its `default` cargo features."""
    import tomllib

    features = tomllib.loads((ROOT / "Cargo.toml").read_text()).get("features", {})
    for feature in features.get("default", []):
        if feature in ("ndarray", "flex"):
            return feature
    return "ndarray"


def build_rust(skip: bool, features: str = "flex") -> Path:
    """Builds the example with `features` (or only finds it with --no-build) and returns the executable's path."""
    cmd = ["cargo", "build", "--release", "--example", "bench_step", "--features", features,
           "--message-format=json-render-diagnostics"]
    log(f"$ {' '.join(cmd[:-1])}" + (" (--no-build: only finding the executable)" if skip else ""))
    if skip:
        cmd.append("--offline")
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: cargo build failed (exit {result.returncode}); see its messages above")
    exe = None
    for line in result.stdout.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") == "compiler-artifact" and message.get("target", {}).get("name") == "bench_step":
            exe = message.get("executable") or exe
    if not exe or not Path(exe).is_file():
        raise SystemExit("error: cargo did not report the bench_step executable")
    log(f"  {exe} ({time.perf_counter() - started:.0f} s)")
    return Path(exe)


def extract_reference(commit: str, into: Path) -> Path:
    """The reference's package and benchmark script at `commit`, from git history, in `into`."""
    try:
        subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"error: commit {commit} (the PyTorch reference's last) is not in this repository's "
                         "history: fetch the full history (git fetch --unshallow)")
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "relative_performer", "benchmarks/bench.py"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    log(f"reference: git archive {commit} relative_performer benchmarks/bench.py -> {into}")
    return into


def peers_available(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import performer_pytorch"], capture_output=True)
    return probe.returncode == 0


def setup_peers(python: str, install: bool) -> tuple[bool, str | None]:
    """(performer-pytorch importable, its version)."""
    if not peers_available(python) and install:
        cmd = [python, "-m", "pip", "install", "--no-deps", *PEERS_PIP]
        log(f"$ {' '.join(cmd)}")
        subprocess.run(cmd, check=False)
    if not peers_available(python):
        log("note: performer-pytorch is not importable; its rows are left out. Install it (without touching torch):\n"
            f"  {python} -m pip install --no-deps {' '.join(PEERS_PIP)}\n  or rerun with --install-peers")
        return False, None
    version = run_text([python, "-c", "from importlib.metadata import version; print(version('performer-pytorch'))"])
    if version != "1.1.4":
        log(f"note: performer-pytorch {version} is installed; the issue names 1.1.4")
    return True, version


# --------------------------------------------------------------------------- running


def command_for(config: Config, exe: Path, reference: Path, args, reps: int, warmup: int, compile_on: bool = True) -> list[str]:
    if config.impl == "rust":
        cmd = [str(exe), "--model", config.model, "--backend", config.backend, "--mode", config.mode,
               "--batch", str(config.batch), "--size", str(config.size), "--dim", str(DIM), "--depth", str(DEPTH),
               "--heads", str(HEADS), "--warmup", str(warmup), "--reps", str(reps)]
        return cmd + (["--exact-softmax"] if config.exact_softmax else [])
    return [sys.executable, str(WORKER), "--reference", str(reference), "--row", config.model, "--mode", config.mode,
            "--batch", str(config.batch), "--size", str(config.size), "--warmup", str(warmup), "--reps", str(reps),
            "--threads", str(args.threads), "--compile", "on" if compile_on else "off", "--malloc", args.malloc]


def run_one(cmd: list[str], env: dict, timeout: float) -> tuple[dict | None, str]:
    """(the JSON line, '') or (None, why it failed)."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else ""
        if result.returncode < 0:
            why = f"killed by signal {-result.returncode} (out of memory?) {why}".strip()
        return None, f"exit {result.returncode}: {why[:300]}"
    for line in reversed(result.stdout.strip().splitlines()):
        try:
            return json.loads(line), ""
        except json.JSONDecodeError:
            continue
    return None, "no JSON line in its output"


def median_or_nan(values: list) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- results


def aggregate(configs: list[Config], records: dict, probes: dict) -> dict:
    """Per configuration key: median seconds over rounds, best seconds, memory."""
    out = {}
    for c in configs:
        runs = records.get(c.key, [])
        if not runs:
            continue
        memory = probes.get(c.key)
        out[c.key] = dict(
            median_s=median_or_nan([r["median_s"] for r in runs]),
            min_s=min(r["min_s"] for r in runs),
            rounds=len(runs),
            step_peak_bytes=memory["step_peak_bytes"] if memory else median_or_nan([r["step_peak_bytes"] for r in runs]),
            peak_rss_bytes=median_or_nan([r["peak_rss_bytes"] for r in runs]),
            memory_from="eager probe" if memory else "same process",
            compiled=any(r.get("compiled") for r in runs),
        )
    return out


def mb(x: float) -> float:
    return x / 2**20 if x is not None and not math.isnan(x) else float("nan")


def throughput_rows(configs: list[Config], agg: dict) -> list[dict]:
    rows = {}
    for c in configs:
        if "throughput" not in c.groups or c.key not in agg:
            continue
        a = agg[c.key]
        row = rows.setdefault((c.impl, c.model, c.backend), dict(
            impl=c.impl, model=c.model, backend=c.backend, batch=c.batch, size=c.size, tokens=c.tokens,
            train_img_s=float("nan"), infer_img_s=float("nan"), train_s=float("nan"), infer_s=float("nan"),
            train_s_min=float("nan"), infer_s_min=float("nan"), train_step_peak_mb=float("nan"),
            infer_step_peak_mb=float("nan"), train_peak_rss_mb=float("nan"), infer_peak_rss_mb=float("nan"),
            train_memory_from="", rounds=0))
        m = c.mode
        row[f"{m}_s"] = a["median_s"]
        row[f"{m}_s_min"] = a["min_s"]
        row[f"{m}_img_s"] = c.batch / a["median_s"]
        row[f"{m}_step_peak_mb"] = mb(a["step_peak_bytes"])
        row[f"{m}_peak_rss_mb"] = mb(a["peak_rss_bytes"])
        if m == "train":
            row["train_memory_from"] = a["memory_from"] + (", compiled core timed" if a["compiled"] else "")
        row["rounds"] = max(row["rounds"], a["rounds"])
    return list(rows.values())


def scaling_rows(configs: list[Config], agg: dict) -> list[dict]:
    rows = []
    for c in configs:
        if "scaling" not in c.groups or c.key not in agg:
            continue
        a = agg[c.key]
        model = c.model + (" (exact softmax)" if c.exact_softmax else "")
        step_mb = mb(a["step_peak_bytes"])
        rows.append(dict(impl=c.impl, model=model, backend=c.backend, size=c.size, tokens=c.tokens, batch=c.batch,
                         train_s=a["median_s"], train_s_min=a["min_s"],
                         us_per_token=1e6 * a["median_s"] / (c.batch * c.tokens),
                         step_peak_mb=step_mb, kb_per_token=1024 * step_mb / (c.batch * c.tokens),
                         memory_from=a["memory_from"], rounds=a["rounds"]))
    base = {(r["impl"], r["model"]): r for r in rows if r["size"] == SIDE}
    for r in rows:
        b = base.get((r["impl"], r["model"]))
        r["time_per_token_vs_32"] = r["us_per_token"] / b["us_per_token"] if b else float("nan")
        r["time_per_token_vs_32_best"] = (r["train_s_min"] / (r["batch"] * r["tokens"])) / (
            b["train_s_min"] / (b["batch"] * b["tokens"])) if b else float("nan")
        r["mem_per_token_vs_32"] = r["kb_per_token"] / b["kb_per_token"] if b and b["kb_per_token"] else float("nan")
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_scaling(rows: list[dict], path: Path) -> str | None:
    """The scaling figure as SVG; None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: smaller, searchable
        matplotlib.rcParams["svg.hashsalt"] = "relperf"  # stable ids: the file changes only with the data
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed ({sys.executable} -m pip install matplotlib): no figure"
    if not rows:
        return "no scaling rows: no figure"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate([*MODELS, "softmax"])}
    for impl, model in dict.fromkeys((r["impl"], r["model"]) for r in rows):
        points = sorted((r for r in rows if (r["impl"], r["model"]) == (impl, model)), key=lambda r: r["tokens"])
        style = "-" if impl == "rust" else "--"
        label = f"{'Rust' if impl == 'rust' else 'reference'} {model}"
        colour = colours["softmax" if "softmax" in model else model]
        tokens = [r["tokens"] for r in points]
        for ax, key in zip(axes, ("us_per_token", "kb_per_token")):
            ax.plot(tokens, [r[key] for r in points], style, color=colour, marker="o" if impl == "rust" else "s",
                    label=label)
    for ax, title in zip(axes, ("training step time per token (µs)", "peak memory of the step per token (KB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens per image (side² + 1)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"~{TOKENS_PER_STEP} tokens per step (batch 16 / 4 / 1 at 32 / 64 / 128; Rust exact softmax: "
                 f"smaller where its n x n matrices need it), dim {DIM}, depth {DEPTH}, heads {HEADS}, fp32; "
                 "solid: Rust, dashed: PyTorch reference", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return None


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def targets(through: list[dict], scaling: list[dict], default: str, backends: list[str]) -> list[dict]:
    """The issue's targets the run measured: what, ratio of medians, ratio of best rounds, bound, met."""
    t = {(r["impl"], r["model"], r["backend"]): r for r in through}
    checks = []

    def speed(a, b, mode):  # throughput of a over b = time of b over a
        if not a or not b:
            return float("nan"), float("nan")
        return b[f"{mode}_s"] / a[f"{mode}_s"], b[f"{mode}_s_min"] / a[f"{mode}_s_min"]

    def add(what, pair, bound, kind=">="):
        value, best = pair
        if math.isnan(value):
            return
        met = value >= bound if kind == ">=" else value <= bound
        checks.append(dict(target=what, ratio=value, best=best, bound=f"{kind} {bound}", met=met))

    lucid = t.get((LUCID, LUCID, "torch"))
    ref = t.get(("reference", "Performer", "torch"))
    ordered = [default] + [b for b in backends if b != default]
    for backend in ordered:
        perf = t.get(("rust", "Performer", backend))
        add(f"Rust Performer ({backend}) train vs performer-pytorch", speed(perf, lucid, "train"), 1.0)
        add(f"Rust Performer ({backend}) train vs reference Performer", speed(perf, ref, "train"), 0.75)
        add(f"Rust Performer ({backend}) infer vs performer-pytorch", speed(perf, lucid, "infer"), 1.2)
    for backend in ordered:
        perf = t.get(("rust", "Performer", backend))
        for model, bound in (("RelativePerformer", 0.8), ("ClippedRelativePerformer", 0.6), ("ExactRelativePerformer", 0.5)):
            for mode in ("train", "infer"):
                add(f"Rust {model} ({backend}) {mode} vs Rust Performer", speed(t.get(("rust", model, backend)), perf, mode), bound)
    sides = sorted({r["size"] for r in scaling})
    if sides and sides[-1] != SIDE:
        largest = sides[-1]
        for r in scaling:
            if r["impl"] == "rust" and r["size"] == largest and "softmax" not in r["model"]:
                add(f"Rust {r['model']} ({r['backend']}) time per token {largest}² vs 32²",
                    (r["time_per_token_vs_32"], r["time_per_token_vs_32_best"]), 1.3, "<=")
                add(f"Rust {r['model']} ({r['backend']}) memory per token {largest}² vs 32²",
                    (r["mem_per_token_vs_32"], float("nan")), 1.3, "<=")
        for r in scaling:  # exact softmax: quadratic, so its time per token must grow
            if "softmax" in r["model"] or r["model"] == SDPA:
                if r["size"] == max(s["size"] for s in scaling if s["model"] == r["model"]) and r["size"] != SIDE:
                    add(f"{'Rust' if r['impl'] == 'rust' else 'reference'} {r['model']} time per token "
                        f"{r['size']}² vs 32² grows (quadratic)", (r["time_per_token_vs_32"], r["time_per_token_vs_32_best"]), 1.3)
    if default in backends:
        for model in MODELS:
            others = [b for b in backends if b != default]
            for other in others:
                add(f"{model} train: default backend {default} vs {other}",
                    speed(t.get(("rust", model, default)), t.get(("rust", model, other)), "train"), 1.0)
    return checks


def summary_markdown(env: dict, checks: list[dict], through: list[dict], scaling: list[dict], failures: list[str],
                     notes: list[str]) -> str:
    lines = ["# Side-by-side benchmark: Rust against performer-pytorch and the PyTorch reference", ""]
    if env["quick"]:
        lines += [f"**A `--quick` run** ({env['rounds']} round(s), {env['reps']} timed step(s) per process, sides "
                  f"{', '.join(map(str, env['sizes']))}): a test of the driver, not figures of record.", ""]
    lines += [
        f"- machine: {env['machine']['cpu']}, {env['machine']['cores']} cores, {env['machine']['memory_gib']} GiB; "
        f"load average {env['load_start']} at the start, {env['load_end']} at the end",
        f"- date: {env['date']} (took {env['duration_min']:.1f} min)",
        f"- git commit: {env['commit']}; PyTorch reference: commit {REFERENCE_COMMIT} (git archive)",
        f"- command: `{env['command']}`",
        f"- {env['rounds']} interleaved round(s), each process {env['warmup']} warm-up + {env['reps']} timed step(s); "
        f"medians over rounds of each process's median; 'best' = the ratio of the fastest single steps",
        f"- float32, {env['threads']} threads (torch.set_num_threads, RAYON_NUM_THREADS); torch {env['torch']}, "
        f"performer-pytorch {env['performer_pytorch'] or 'not installed'}; glibc malloc for the PyTorch rows: "
        f"{env['malloc']}; Rust default backend: {env['default_backend']}, its GEMMs on rayon's threads "
        f"(`MATMUL_NUM_THREADS=1`, set by the Rust binary: `relative_performer::threads`)",
        "",
        "## Targets (issue 24)",
        "",
        "| target | ratio | best | bound | |",
        "|---|---|---|---|---|",
    ]
    for c in checks:
        lines.append(f"| {c['target']} | {c['ratio']:.2f} | {fmt(c['best'])} | {c['bound']} | "
                     f"{'met' if c['met'] else '**missed**'} |")
    if not checks:
        lines.append("| (nothing measured) | | | | |")
    lines += ["", "## Throughput (batch 16, 1x32x32, 1025 tokens, dim 128, depth 4, heads 4)", "",
              "| impl | model | backend | train img/s | infer img/s | train s/step | infer s/step | "
              "train peak MB | infer peak MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in through:
        lines.append(f"| {r['impl']} | {r['model']} | {r['backend']} | {fmt(r['train_img_s'])} | {fmt(r['infer_img_s'])} | "
                     f"{fmt(r['train_s'], 3)} | {fmt(r['infer_s'], 3)} | {fmt(r['train_step_peak_mb'], 0)} | "
                     f"{fmt(r['infer_step_peak_mb'], 0)} |")
    lines += ["", "Peak MB: how far the steps raised the process's peak resident set above what it held after "
              "building the model, optimizer and batch (VmHWM - VmRSS). The reference's training rows time its "
              "compiled attention core and take memory from a separate eager process, as its bench.py does.", ""]
    lines += ["## Scaling (training step, ~16.4k tokens per step)", "",
              "| impl | model | backend | side | tokens | batch | s/step | µs/token | KB/token | time/token vs 32² | "
              "mem/token vs 32² |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in scaling:
        lines.append(f"| {r['impl']} | {r['model']} | {r['backend']} | {r['size']} | {r['tokens']} | {r['batch']} | "
                     f"{fmt(r['train_s'], 3)} | {fmt(r['us_per_token'])} | {fmt(r['kb_per_token'])} | "
                     f"{fmt(r['time_per_token_vs_32'])} | {fmt(r['mem_per_token_vs_32'])} |")
    if notes or failures:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [f"- failed: {f}" for f in failures]
    lines += ["", "Files: `throughput.csv`, `scaling.csv`, `targets.csv`, `run.json` (machine, date, commit, "
              "command), `scaling.svg`, `raw.jsonl` (every process's JSON line). "
              "Made by `benches/compare/compare.py` (see `benches/compare/README.md`).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round, 1 timed step per process, side 32 only: "
                        "a test of the driver (a few minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--reps", type=int, help="timed steps per process (default 3; 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per process first (default 1)")
    parser.add_argument("--sizes", type=int, nargs="+", help="scaling sweep sides (default 32 64 128; 32 with --quick); "
                        "the batch keeps ~16.4k tokens per step")
    parser.add_argument("--backends", nargs="+", default=["ndarray", "flex"], choices=("ndarray", "flex"),
                        help="Rust CPU backends of the throughput table")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and RAYON_NUM_THREADS")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="glibc malloc policy of the PyTorch processes (the reference bench's default: keep)")
    parser.add_argument("--memory-probe", choices=("eager", "same"), default="eager",
                        help="eager: the reference's training memory from a separate process with its eager "
                        "attention core, once (as its bench.py); same: from the timed (compiled) process")
    parser.add_argument("--only", nargs="+", help="run only configurations whose label contains one of these words "
                        "(e.g. Performer, flex, reference); for testing")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks", help="output folder")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per process")
    parser.add_argument("--install-peers", action="store_true",
                        help=f"pip install --no-deps {' '.join(PEERS_PIP)} (and matplotlib) if missing")
    parser.add_argument("--no-build", action="store_true", help="use the example as built (cargo --offline, no rebuild "
                        "unless needed)")
    parser.add_argument("--keep-reference", action="store_true", help="keep the extracted reference (path printed)")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.sizes is None:
        args.sizes = [32] if args.quick else [32, 64, 128]
    if any(side < 1 for side in args.sizes):
        parser.error("--sizes must be positive image sides")
    for name in ("rounds", "reps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if SIDE not in args.sizes:
        args.sizes = [SIDE, *args.sizes]  # the per-token ratios are taken against 32x32
    args.sizes = sorted(set(args.sizes))
    try:
        import torch
    except ImportError:
        parser.error(f"{sys.executable} has no torch: run this with the torch venv's python")

    started = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in [sys.executable, os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    env_info = dict(machine=machine(), commit=git_commit(), command=command, quick=args.quick,
                    date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                    load_start=f"{os.getloadavg()[0]:.2f}", rounds=args.rounds, reps=args.reps,
                    warmup=args.warmup, threads=args.threads, torch=torch.__version__, malloc=args.malloc,
                    sizes=args.sizes)
    log(f"side-by-side benchmark: {json.dumps(env_info)}")
    if os.getloadavg()[0] > 0.5:
        log(f"note: load average {os.getloadavg()[0]:.1f} at the start: other processes share the CPU; "
            "rerun on a quiet machine for figures of record")

    exe = build_rust(args.no_build)
    have_lucid, lucid_version = setup_peers(sys.executable, args.install_peers)
    env_info["performer_pytorch"] = lucid_version
    notes = []
    if not have_lucid:
        notes.append("performer-pytorch was not importable: its rows and the targets against it are missing")
    backend = default_backend()
    env_info["default_backend"] = backend
    tmp = Path(tempfile.mkdtemp(prefix="relperf-reference-"))
    try:
        reference = extract_reference(REFERENCE_COMMIT, tmp)
        configs = configurations(args, backend, have_lucid, notes)
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads),
                   PYTHONPATH=os.pathsep.join([str(reference), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        log(f"{len(configs)} configurations x {args.rounds} round(s), {args.warmup} warm-up + {args.reps} timed step(s) "
            f"each; scaling sides {args.sizes}\n")
        records: dict[tuple, list] = {}
        probes: dict[tuple, dict] = {}
        failures: dict[tuple, str] = {}
        args.out.mkdir(parents=True, exist_ok=True)
        raw = (args.out / "raw.jsonl").open("w")
        for round_index in range(args.rounds):
            log(f"round {round_index + 1}/{args.rounds}")
            for i, c in enumerate(configs):
                if c.key in failures:
                    continue
                t0 = time.perf_counter()
                result, why = run_one(command_for(c, exe, reference, args, args.reps, args.warmup), env, args.timeout)
                took = time.perf_counter() - t0
                if result is None:
                    failures[c.key] = f"{c.label}: {why}"
                    log(f"  [{i + 1}/{len(configs)}] {c.label}: FAILED ({why}) [{took:.0f} s]")
                    continue
                result["round"] = round_index
                raw.write(json.dumps(result) + "\n")
                raw.flush()
                records.setdefault(c.key, []).append(result)
                memory = mb(result["step_peak_bytes"]) if result.get("step_peak_bytes") is not None else float("nan")
                log(f"  [{i + 1}/{len(configs)}] {c.label}: {result['median_s']:.3f} s/step, "
                    f"{result['images_per_s']:.2f} img/s, step peak {memory:.0f} MB [{took:.0f} s]")
            if round_index == 0 and args.memory_probe == "eager":
                probe_configs = [c for c in configs if c.impl == "reference" and c.mode == "train"
                                 and c.key in records and records[c.key][0].get("compiled")]
                if probe_configs:
                    log("memory of the reference's training steps, eager attention core (once)")
                for c in probe_configs:
                    t0 = time.perf_counter()
                    result, why = run_one(command_for(c, exe, reference, args, 1, 1, compile_on=False), env, args.timeout)
                    if result is None:
                        log(f"  {c.label}: memory probe FAILED ({why}); memory from the timed process")
                        continue
                    result["round"] = "memory-probe"
                    raw.write(json.dumps(result) + "\n")
                    probes[c.key] = result
                    log(f"  {c.label}: step peak {mb(result['step_peak_bytes']):.0f} MB "
                        f"[{time.perf_counter() - t0:.0f} s]")
        raw.close()
    finally:
        if args.keep_reference:
            log(f"reference kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    agg = aggregate(configs, records, probes)
    through = throughput_rows(configs, agg)
    scaling = scaling_rows(configs, agg)
    write_csv(args.out / "throughput.csv", through)
    write_csv(args.out / "scaling.csv", scaling)
    why_no_figure = plot_scaling(scaling, args.out / "scaling.svg")
    if why_no_figure:
        notes.append(why_no_figure)
        log(f"note: {why_no_figure}")
    checks = targets(through, scaling, backend, args.backends)
    env_info["load_end"] = f"{os.getloadavg()[0]:.2f}"
    env_info["duration_min"] = (time.perf_counter() - started) / 60
    summary = summary_markdown(env_info, checks, through, scaling, list(failures.values()), notes)
    (args.out / "summary.md").write_text(summary)
    write_csv(args.out / "targets.csv", checks)
    (args.out / "run.json").write_text(json.dumps(dict(env_info, failures=list(failures.values()), notes=notes),
                                                  indent=1, default=str) + "\n")
    log("")
    log(summary)
    log(f"wrote {args.out}/summary.md, throughput.csv, scaling.csv, targets.csv, run.json, scaling.svg, raw.jsonl "
        f"({env_info['duration_min']:.1f} min in all)")
    return 1 if failures and not records else 0


if __name__ == "__main__":
    sys.exit(main())
