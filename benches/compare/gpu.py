#!/usr/bin/env python3
"""The GPU half of the side-by-side benchmark (issue 24): the Rust models on ``wgpu`` (Vulkan) against
the PyTorch reference on CUDA, in one prepared call of a machine with an NVIDIA GPU.

Two steps, because that machine has no internet, no cargo and no git history:

    python3 benches/compare/gpu.py prepare          # here: build and gather everything into .gpu/
    python3 benches/compare/gpu.py run --out DIR    # there, from the repository root (DIR: the tool's $OUT)

``prepare`` (needs cargo, git, pip and apt-get) puts into ``.gpu/`` (which it adds to
``.git/info/exclude``): ``bench_step`` built with ``--features wgpu`` (stripped), the reference at its
last commit (``git archive 64c6e65 relative_performer benchmarks/bench.py``), the performer-pytorch
wheels (pure Python) and Debian's Vulkan and EGL loader packages, which the GPU machine may lack. It
prints the device tool's call: command ``python3 benches/compare/gpu.py run --out $OUT``, carry
``[".gpu"]``.

``run`` (needs python3 with torch and CUDA, and an NVIDIA driver with Vulkan) unpacks the loaders when
``ldconfig`` has no ``libvulkan``, puts the wheels on ``PYTHONPATH`` of the PyTorch processes, records the
GPU (``nvidia-smi``), then runs the configurations below in interleaved rounds, each in a process of
its own (``examples/bench_step.rs`` and ``torch_step.py``, the CPU comparison's workers), in order of
importance, until ``--budget`` seconds have gone, so that a call cut short still returns the most
important rows:

1. ``Performer`` training step at batch 16 (the issue's first GPU target), then at 64, 256 and 1024
   (the second: "at the batch that fills the GPU best"), Rust on wgpu and the reference on CUDA;
2. ``Performer`` inference at batch 16, and performer-pytorch's train and inference at batch 16;
3. the other four models' training steps at batch 16, both sides;
4. ``Performer`` training at 64x64 and 128x128 (batch 16): time per token.

Each process's GPU memory is sampled from ``nvidia-smi --query-compute-apps`` every 0.2 s (its peak,
``gpu_process_peak_mib``: what the process holds, the allocators' caches included); the reference also
reports ``torch.cuda.max_memory_allocated`` over one step (``gpu_step_peak_bytes``). Output, in DIR:
``gpu.jsonl`` (one line per process, written as each ends), ``gpu.csv`` (medians over rounds),
``gpu-info.txt`` and ``gpu-summary.md`` (the ratios against the issue's targets), also printed.

``run --backend ndarray --device cpu --batches 2 --sizes 8 --rounds 1`` runs the same driver on the CPU
(a test of the driver; ``--bench-step`` then points at a CPU build).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import compare  # the CPU driver beside this file (standard library only): its build, reference and names
from compare import LUCID, MODELS, REFERENCE_COMMIT, ROOT, WORKER
from compare import PEERS_PIP as PEERS

STAGE = ROOT / ".gpu"
LOADERS = ["libvulkan1", "libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sh(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kwargs)


# --------------------------------------------------------------------------- prepare (here)


def prepare(args: argparse.Namespace) -> int:
    for tool in ["git", "apt-get"] + (["cargo"] if args.bench_step is None else []):
        if shutil.which(tool) is None:
            log(f"error: prepare needs {tool} on PATH (it builds and gathers what the GPU machine lacks)")
            return 1
    STAGE.mkdir(exist_ok=True)
    # keep .gpu/ out of git (and so carried to the GPU machine only when named)
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text().split() if exclude.is_file() else []):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")

    # 1. bench_step with the wgpu backend (ndarray stays in, for a CPU check of the same binary)
    exe = compare.build_rust(False, features="wgpu") if args.bench_step is None else args.bench_step
    if not Path(exe).is_file():
        log(f"error: --bench-step {exe} is not a file")
        return 1
    shutil.copy2(exe, STAGE / "bench_step")
    if shutil.which("strip"):
        sh(["strip", str(STAGE / "bench_step")])

    # 2. the reference at its last commit
    reference = STAGE / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    reference.mkdir()
    compare.extract_reference(REFERENCE_COMMIT, reference)

    # 3. performer-pytorch and its two helpers (pure Python; the GPU machine has torch and einops)
    wheels = STAGE / "whl"
    shutil.rmtree(wheels, ignore_errors=True)
    sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *PEERS])

    # 4. the Vulkan/EGL loaders (the device tool's README: x86-64 packages whatever this machine is)
    gl = STAGE / "gl"
    shutil.rmtree(gl, ignore_errors=True)
    gl.mkdir()
    lists = Path("/tmp/relperf-amd64-lists")
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    opts = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64", f"-oDir::State::Lists={lists}"]
    sh(["apt-get", *opts, "-qq", "update"], stdout=subprocess.DEVNULL)
    sh(["apt-get", *opts, "-qq", "download", *LOADERS], cwd=gl)

    size = sum(p.stat().st_size for p in STAGE.rglob("*") if p.is_file())
    log(f"\n.gpu/ holds {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the tree)")
    print('device run: command "python3 benches/compare/gpu.py run --out $OUT", carry [".gpu"], timeout_s 570')
    return 0


# --------------------------------------------------------------------------- run (there)


def setup_machine(out: Path, backend: str) -> dict:
    """Vulkan loaders and driver files (for wgpu), the peers' wheels; the GPU's name and driver."""
    env = dict(os.environ)
    has_vulkan = "libvulkan" in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    debs = sorted((STAGE / "gl").glob("*.deb"))
    if backend == "wgpu" and not has_vulkan and debs:
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), "/"], check=True)
        subprocess.run(["ldconfig"], check=True)
        log(f"unpacked {len(debs)} loader packages from .gpu/gl")
    icd = Path("/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json")
    if icd.is_file() and "VK_DRIVER_FILES" not in env:
        env["VK_DRIVER_FILES"] = str(icd)
    egl = Path("/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json")
    if egl.is_file() and "__EGL_VENDOR_LIBRARY_FILENAMES" not in env:
        env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(egl)
    wheels = sorted((STAGE / "whl").glob("*.whl"))
    if wheels:
        site = Path("/tmp/relperf-site")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], check=False)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    info = {"python": sys.version.split()[0]}
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    info["gpu"] = smi.stdout.strip() if smi and smi.returncode == 0 else None
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    except ImportError:
        info["torch"] = None
    info["vulkan_driver_files"] = env.get("VK_DRIVER_FILES")
    (out / "gpu-info.txt").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    log("".join(f"{k}: {v}\n" for k, v in info.items()).rstrip())
    return env


class GpuSampler:
    """Peak GPU memory (MiB) of one process, from nvidia-smi every 0.2 s."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, None, threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        if shutil.which("nvidia-smi"):
            self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            res = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            for line in res.stdout.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                    self.peak = max(self.peak or 0, int(parts[1]))
            self.stop.wait(0.2)

    def finish(self) -> int | None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        return self.peak


def configs(args: argparse.Namespace) -> list[dict]:
    """In order of importance (see the module's docstring)."""
    rows = []
    side = args.sizes[0]

    def both(model, mode, batch, size):
        for impl in ("rust", "reference"):
            rows.append(dict(impl=impl, model=model, mode=mode, batch=batch, size=size))

    for batch in args.batches:
        both("Performer", "train", batch, side)
    both("Performer", "infer", args.batches[0], side)
    if not args.no_peers:
        for mode in ("train", "infer"):
            rows.append(dict(impl=LUCID, model=LUCID, mode=mode, batch=args.batches[0], size=side))
    for model in MODELS[1:]:
        both(model, "train", args.batches[0], side)
    for size in args.sizes[1:]:
        both("Performer", "train", args.batches[0], size)
    return rows


def command(row: dict, args: argparse.Namespace) -> list[str]:
    common = ["--mode", row["mode"], "--batch", str(row["batch"]), "--size", str(row["size"]),
              "--warmup", str(args.warmup), "--reps", str(args.reps)]
    if row["impl"] == "rust":
        return [str(args.bench_step), "--model", row["model"], "--backend", args.backend, *common]
    return [sys.executable, str(WORKER), "--reference", str(args.reference), "--row", row["model"],
            "--device", args.device, "--compile", "off", *common]


def run_one(row: dict, args: argparse.Namespace, env: dict, deadline: float) -> dict:
    cmd = command(row, args)
    limit = max(10.0, min(args.per_process, deadline - time.monotonic()))
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = GpuSampler(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
        error = None if proc.returncode == 0 else (stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        error = f"timed out after {limit:.0f} s"
    peak = sampler.finish()
    result = dict(row)
    result.update(wall_s=round(time.monotonic() - started, 2), error=error, gpu_process_peak_mib=peak)
    if error is None:
        try:
            measured = json.loads(stdout.strip().splitlines()[-1])
            result.update({k: measured.get(k) for k in ("median_s", "min_s", "images_per_s", "backend",
                                                         "gpu_step_peak_bytes", "params", "tokens")})
        except (json.JSONDecodeError, IndexError) as e:
            result["error"] = f"unreadable output: {e}"
    return result


def summarize(results: list[dict], args: argparse.Namespace, out: Path) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if r.get("error") is None:
            groups.setdefault((r["impl"], r["model"], r["mode"], r["batch"], r["size"]), []).append(r)
    rows = []
    for (impl, model, mode, batch, size), rs in groups.items():
        med = statistics.median(r["median_s"] for r in rs)
        mib = [r["gpu_process_peak_mib"] for r in rs if r["gpu_process_peak_mib"] is not None]
        step = [r["gpu_step_peak_bytes"] for r in rs if r.get("gpu_step_peak_bytes") is not None]
        rows.append(dict(impl=impl, model=model, mode=mode, batch=batch, size=size, tokens=size * size + 1,
                         rounds=len(rs), median_s=med, images_per_s=batch / med,
                         gpu_process_peak_mib=max(mib) if mib else "",
                         gpu_step_peak_mib=round(max(step) / 2**20, 1) if step else ""))
    with (out / "gpu.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["impl"])
        writer.writeheader()
        writer.writerows(rows)
    by = {(r["impl"], r["model"], r["mode"], r["batch"], r["size"]): r for r in rows}
    side = args.sizes[0]
    lines = [f"Rust ({args.backend}) against the PyTorch reference ({args.device}), images per second, "
             f"medians over rounds of the median of {args.reps} steps; side {side}:", "",
             "| model | mode | batch | Rust | reference | ratio | performer-pytorch | Rust GPU MiB | reference GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["impl"] != "rust" or r["size"] != side:
            continue
        key = (r["model"], r["mode"], r["batch"], r["size"])
        ref = by.get(("reference", *key))
        lucid = by.get((LUCID, LUCID, r["mode"], r["batch"], r["size"]))
        cells = [f"`{r['model']}`", r["mode"], str(r["batch"]), f"{r['images_per_s']:.1f}"]
        cells += [f"{ref['images_per_s']:.1f}", f"{r['images_per_s'] / ref['images_per_s']:.2f}x"] if ref else ["–", "–"]
        cells.append(f"{lucid['images_per_s']:.1f}" if lucid and r["model"] == "Performer" else "–")
        cells += [str(r["gpu_process_peak_mib"] or "–"), str((ref or {}).get("gpu_process_peak_mib") or "–")]
        lines.append("| " + " | ".join(cells) + " |")
    train = [(b, by.get(("rust", "Performer", "train", b, side)), by.get(("reference", "Performer", "train", b, side)))
             for b in args.batches]
    ratios = [(b, r["images_per_s"] / p["images_per_s"]) for b, r, p in train if r and p]
    lines.append("")
    if ratios:
        first = dict(ratios).get(args.batches[0])
        best_b = max((b for b, r, p in train if r), key=lambda b: by[("rust", "Performer", "train", b, side)]["images_per_s"])
        best = dict(ratios).get(best_b)
        if first is not None:
            lines.append(f"- Target: Rust `Performer` train >= 0.5x the reference at batch {args.batches[0]}: "
                         f"{first:.2f}x, {'met' if first >= 0.5 else 'missed'}.")
        if best is not None:
            lines.append(f"- Target: >= 1.0x at the batch that fills the GPU best (Rust's fastest in images/s: "
                         f"batch {best_b}): {best:.2f}x, {'met' if best >= 1.0 else 'missed'}.")
    else:
        lines.append("- No pair of Rust and reference `Performer` training rows finished: no ratio.")
    for size in args.sizes[1:]:
        for impl in ("rust", "reference"):
            big = by.get((impl, "Performer", "train", args.batches[0], size))
            small = by.get((impl, "Performer", "train", args.batches[0], side))
            if big and small:
                per = (big["median_s"] / big["tokens"]) / (small["median_s"] / small["tokens"])
                lines.append(f"- {impl} `Performer` train, time per token at {size}x{size} / {side}x{side} "
                             f"(batch {args.batches[0]}): {per:.2f}x")
    failed = [r for r in results if r.get("error")]
    for r in failed:
        lines.append(f"- failed: {r['impl']} {r['model']} {r['mode']} batch {r['batch']} side {r['size']}: {r['error']}")
    text = "\n".join(lines) + "\n"
    (out / "gpu-summary.md").write_text(text)
    return text


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.bench_step).is_file():
        log(f"error: {args.bench_step} is missing: run `python3 benches/compare/gpu.py prepare` first "
            "(or pass --bench-step) and carry .gpu")
        return 1
    if not (args.reference / "benchmarks" / "bench.py").is_file():
        log(f"error: {args.reference} holds no reference checkout: run `python3 benches/compare/gpu.py prepare` first")
        return 1
    started = time.monotonic()
    deadline = started + args.budget
    env = setup_machine(out, args.backend)
    rows = configs(args)
    results = []
    with (out / "gpu.jsonl").open("w") as jsonl:
        for round_ in range(1, args.rounds + 1):
            for i, row in enumerate(rows):
                if time.monotonic() > deadline - 5:
                    log(f"budget of {args.budget:.0f} s spent: stopping in round {round_} before row {i + 1}")
                    break
                result = run_one(row, args, env, deadline)
                result["round"] = round_
                results.append(result)
                jsonl.write(json.dumps(result) + "\n")
                jsonl.flush()
                speed = f"{result['images_per_s']:.1f} img/s" if result.get("error") is None else result["error"]
                log(f"[{time.monotonic() - started:5.0f} s] round {round_} {row['impl']:>17} {row['model']:<24} "
                    f"{row['mode']:<5} batch {row['batch']:<4} side {row['size']}: {speed}")
            else:
                continue
            break
    text = summarize(results, args, out)
    print(text)
    return 0 if any(r.get("error") is None for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: build bench_step with wgpu and gather .gpu/")
    p.add_argument("--bench-step", type=Path, help="copy this bench_step (built with --features wgpu) instead of building")
    r = sub.add_parser("run", help="there: run the GPU comparison")
    r.add_argument("--out", type=Path, required=True, help="folder for gpu.jsonl, gpu.csv, gpu-summary.md")
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--reps", type=int, default=10, help="timed steps per process (GPU steps are short)")
    r.add_argument("--warmup", type=int, default=3, help="untimed steps first (shader compilation, autotune)")
    r.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256, 1024])
    r.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="image sides; the first is the main one")
    r.add_argument("--budget", type=float, default=540, help="seconds; no process starts after them")
    r.add_argument("--per-process", type=float, default=120, help="seconds before a process is killed")
    r.add_argument("--backend", default="wgpu", help="the Rust side's backend")
    r.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="the reference's device")
    r.add_argument("--bench-step", type=Path, default=STAGE / "bench_step")
    r.add_argument("--reference", type=Path, default=STAGE / "reference")
    r.add_argument("--no-peers", action="store_true", help="leave performer-pytorch out")
    args = parser.parse_args()
    if args.step == "prepare":
        return prepare(args)
    for name in ("rounds", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if any(b < 1 for b in args.batches) or any(s < 1 for s in args.sizes):
        parser.error("--batches and --sizes must be positive")
    return run(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        log(f"error: {' '.join(map(str, error.cmd))} failed (exit {error.returncode})")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
