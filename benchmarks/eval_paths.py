"""What each evaluation path (autograd off, CPU) contributes to inference speed.

    python benchmarks/eval_paths.py [--rows Performer RelativePerformer] [--repeats 15]

Times fp32 inference (eval mode, ``torch.inference_mode``, batch 16, 32 x 32 images,
the benchmark's model size) of each row with the chunked FAVOR+ attention
(``attention/favor.py``: ``attend_in_chunks``) and the fused oneDNN linear layers
(``models/fused.py``) each on or off, interleaved in shuffled rounds so that machine
noise hits every variant alike, and prints medians and the speed-up over "neither".
performer-pytorch (when installed) is timed in the same rounds for the ratio the
issue asks about.

``--training-core`` also times one layer's FAVOR+ core for training (the benchmark's sizes:
16 samples, 4 heads, 1025 tokens, head dim 32), forward and backward (every variant ends with the
gradient of the packed q/k/v projection): eager on the whole batch, eager in chunks of 8, 4, 2
and 1 samples (why training does not chunk), the ``torch.compile``'d core on the split heads, and
the compiled core from the packed projection that ``relative-performer train`` uses on the CPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from relative_performer.allocator import keep_freed_memory  # noqa: E402
from relative_performer.attention import favor  # noqa: E402
from relative_performer.models import fused  # noqa: E402

VARIANTS = {  # name: (fused linear layers, chunked attention)
    "both": (True, True),
    "fused only": (True, False),
    "chunks only": (False, True),
    "neither": (False, False),
}


def training_core(repeats: int) -> None:
    """Forward and backward of one layer's attention core: eager whole batch, eager chunks, compiled."""
    from relative_performer.attention import compiled

    torch.manual_seed(0)
    b, h, n, d = bench.BATCH, bench.HEADS, bench.SIDE**2 + 1, bench.DIM // bench.HEADS
    feature_map = favor.FeatureMap(d)
    qkv0, grad = torch.randn(b, n, 3 * h * d), torch.randn(b, h, n, d)
    can_compile = compiled.enable()

    def step(variant) -> float:
        qkv = qkv0.detach().requires_grad_()
        q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        start = time.perf_counter()
        if variant == "compiled":
            out = compiled.attend(feature_map.kernel, q, k, v, feature_map.projection)
        elif variant == "packed":
            out = compiled.attend_packed(feature_map.kernel, qkv, h, feature_map.projection)
        else:
            out = torch.cat([feature_map._attend_all(q[i : i + variant], k[i : i + variant], v[i : i + variant])
                             for i in range(0, b, variant)])
        out.backward(grad)
        return time.perf_counter() - start

    variants = [b, 8, 4, 2, 1] + (["compiled", "packed"] if can_compile else [])
    times = {c: [] for c in variants}
    for c in variants * 2:  # warm-up (and the compile)
        step(c)
    order = random.Random(1)
    for _ in range(repeats):
        order.shuffle(variants)
        for c in variants:
            times[c].append(step(c))
    print(f"\none layer's FAVOR+ core, forward + backward, {b} x {h} x {n} tokens, head dim {d}, medians of {repeats}:")
    names = {b: "eager, whole batch", "compiled": "compiled, split heads", "packed": "compiled, packed q/k/v"}
    for c in [b, 8, 4, 2, 1, "compiled", "packed"]:
        if c in times:
            print(f"  {names.get(c, f'eager, chunks of {c}'):26s} {statistics.median(times[c]) * 1e3:7.1f} ms")
    if not can_compile:
        print(f"  (torch.compile does not work here: {compiled.unavailable_reason()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["Performer", "RelativePerformer"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--training-core", action="store_true",
                        help="also time one layer's attention core in training: eager, in chunks, compiled")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    chunk = favor.CHUNK_FEATURES
    runners = {row: bench.Runner(row, bench.SIDE, bench.BATCH, device) for row in args.rows}
    jobs = [(row, variant) for row in args.rows for variant in VARIANTS]
    lucid = bench.Runner(bench.LUCIDRAINS, bench.SIDE, bench.BATCH, device) if bench.lucidrains_available() else None
    if lucid is not None:
        jobs.append((bench.LUCIDRAINS, "-"))

    def run(job) -> float:
        row, variant = job
        if row == bench.LUCIDRAINS:
            return lucid.time("infer", "fp32")
        fused.ENABLED, chunked = VARIANTS[variant]
        favor.CHUNK_FEATURES = chunk if chunked else 2**62
        try:
            return runners[row].time("infer", "fp32")
        finally:
            fused.ENABLED, favor.CHUNK_FEATURES = True, chunk

    times = {job: [] for job in jobs}
    for _ in range(2):  # warm-up
        for job in jobs:
            run(job)
    order = random.Random(0)
    for _ in range(args.repeats):
        order.shuffle(jobs)
        for job in jobs:
            times[job].append(run(job))
    medians = {job: statistics.median(t) * 1e3 for job, t in times.items()}
    print(f"fp32 inference, batch {bench.BATCH}, {bench.SIDE}x{bench.SIDE} images, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} interleaved rounds")
    print(f"{'row':18s} {'variant':12s} {'ms':>7s} {'x neither':>9s} {'x performer-pytorch':>19s}")
    for row in args.rows:
        for variant in VARIANTS:
            ms = medians[row, variant]
            vs_lucid = f"{medians[bench.LUCIDRAINS, '-'] / ms:19.2f}" if lucid is not None else f"{'-':>19s}"
            print(f"{row:18s} {variant:12s} {ms:7.1f} {medians[row, 'neither'] / ms:9.2f} {vs_lucid}")
    if lucid is not None:
        print(f"{bench.LUCIDRAINS:18s} {'-':12s} {medians[bench.LUCIDRAINS, '-']:7.1f}")
    if args.training_core:
        training_core(args.repeats)


if __name__ == "__main__":
    main()
