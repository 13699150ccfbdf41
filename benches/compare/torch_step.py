#!/usr/bin/env python
"""One PyTorch configuration of the side-by-side benchmark: the peer of ``examples/bench_step.rs``.

    python benches/compare/torch_step.py --reference DIR --row Performer --mode train [--batch 16 --size 32 ...]

``DIR`` is a checkout of the PyTorch reference (commit 64c6e65: its ``relative_performer`` package
and ``benchmarks/bench.py``; ``compare.py`` extracts one). The models, the optimizer, the batch and
the step come from that ``bench.py`` unchanged: ``bench.Runner(row, side, batch, cpu)`` builds the row
(``bench.build``: a registry model, ``softmax-SDPA`` or ``performer-pytorch``'s ``Performer`` in the
reference's classifier), Adam (betas 0.9 / 0.98, lr 1e-3) and a seeded random batch;
``Runner.train_step`` (zero_grad, forward in train mode, cross-entropy, backward, Adam step) and
``Runner.infer`` (eval mode forward under ``torch.inference_mode``) are what is timed, in float32.
As ``bench.py``'s main does by default, glibc keeps freed memory (``--malloc keep``) and the reference's
models train with the ``torch.compile``'d attention core (``--compile on``; the warm-up steps compile).

Prints one JSON line with the fields of ``bench_step``'s (median seconds per step, images/s, peak
memory from ``/proc/self/status``: ``step_peak_bytes`` = ``VmHWM`` after the steps minus ``VmRSS``
after building, the high-water mark reset through ``/proc/self/clear_refs``, as ``bench.py``'s
memory probe does). Errors: one line on stderr, exit code 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of the reference (relative_performer/, benchmarks/bench.py)")
    parser.add_argument("--row", required=True, help="a reference model name, softmax-SDPA or performer-pytorch")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the GPU half of the benchmark (benches/compare/gpu.py); peak memory is then "
                             "torch.cuda.max_memory_allocated over one step, as bench.py measures it")
    parser.add_argument("--compile", choices=("on", "off"), default="on",
                        help="on: the reference's models train with its torch.compile'd attention core (bench.py's default)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory, as bench.py and the reference's CLI do")
    args = parser.parse_args()
    for name in ("batch", "size", "reps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    root = args.reference.resolve()
    if not (root / "benchmarks" / "bench.py").is_file() or not (root / "relative_performer").is_dir():
        print(f"error: {root} is not a checkout of the reference (no benchmarks/bench.py or relative_performer/)", file=sys.stderr)
        return 1
    sys.path[:0] = [str(root), str(root / "benchmarks")]
    import torch

    import bench
    from relative_performer.allocator import keep_freed_memory
    from relative_performer.attention import compiled
    from relative_performer.models import MODELS

    malloc = keep_freed_memory() if args.malloc == "keep" else False
    torch.set_num_threads(args.threads)
    known = [*MODELS, bench.SOFTMAX, bench.LUCIDRAINS]
    if args.row not in known:
        print(f"error: unknown row '{args.row}': choose one of {', '.join(known)}", file=sys.stderr)
        return 2
    if args.row == bench.LUCIDRAINS and not bench.lucidrains_available():
        print("error: performer-pytorch is not importable: pip install --no-deps performer-pytorch==1.1.4 "
              "local-attention==1.4.4 axial-positional-embedding==0.3.12", file=sys.stderr)
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    is_compiled = False
    # as bench.py: the compiled attention core is a CPU measure (on CUDA its models run eager)
    if args.compile == "on" and args.mode == "train" and args.device == "cpu" \
            and args.row not in (bench.LUCIDRAINS, bench.SOFTMAX):
        is_compiled = compiled.enable()
        if not is_compiled:
            print(f"note: torch.compile does not work here ({compiled.unavailable_reason()}): eager attention", file=sys.stderr)

    runner = bench.Runner(args.row, args.size, args.batch, device)
    hwm_reset = reset_hwm()
    baseline = status_bytes("VmRSS")
    for _ in range(args.warmup):
        runner.time(args.mode, "fp32")
    seconds = [runner.time(args.mode, "fp32") for _ in range(args.reps)]
    peak = status_bytes("VmHWM")
    gpu_peak = int(runner.cuda_peak_mb(args.mode, "fp32") * 2**20) if args.device == "cuda" else None
    med = statistics.median(seconds)
    params = sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
    tokens = args.size * args.size + 1
    print(json.dumps({
        "impl": "performer-pytorch" if args.row == bench.LUCIDRAINS else "reference",
        "model": args.row,
        "attention": "softmax" if args.row == bench.SOFTMAX else "favor+",
        "backend": "torch" if args.device == "cpu" else "torch-cuda",
        "mode": args.mode,
        "batch": args.batch,
        "size": args.size,
        "tokens": tokens,
        "dim": bench.DIM,
        "depth": bench.DEPTH,
        "heads": bench.HEADS,
        "params": params,
        "warmup": args.warmup,
        "reps": args.reps,
        "seconds": seconds,
        "median_s": med,
        "min_s": min(seconds),
        "images_per_s": args.batch / med,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "step_peak_bytes": None if peak is None or baseline is None else max(0, peak - baseline),
        "hwm_reset": hwm_reset,
        "gpu_step_peak_bytes": gpu_peak,
        "gpu": torch.cuda.get_device_name(device) if args.device == "cuda" else None,
        "compiled": is_compiled,
        "malloc": "keep" if malloc else "default",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # one line, not a trace
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        print(f"error: {type(error).__name__}: {message}", file=sys.stderr)
        sys.exit(1)
