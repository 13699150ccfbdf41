#!/usr/bin/env python3
"""Export runs of the PyTorch reference to safetensors + JSON, for relperf-models' importer.

    python crates/models/tools/export_pytorch.py RUN_DIR... --out OUT_DIR

Each RUN_DIR is a run folder of the reference (``config.json``, ``results.json``,
``checkpoints/best.ckpt``; e.g. ``pretrained/MNIST/Performer``). For each, the script writes

    OUT_DIR/<dataset>/<model>/weights.safetensors   every tensor of the checkpoint's state_dict,
                                                    without the ``model.`` prefix, float32,
                                                    contiguous, in PyTorch's own layouts
    OUT_DIR/<dataset>/<model>/export.json           where it came from, the model config, the
                                                    random-feature states, config.json, results.json

(``<dataset>`` and ``<model>`` are the ``dataset`` and ``model`` of the run's config.json).

After writing, every export is checked (unless ``--no-check``): a model is built by the
reference (``relative_performer.models.registry.create_model``) from export.json's
``model_config``, the tensors read back from weights.safetensors and the feature-map states of
export.json are loaded into it (``load_state_dict``, strict), and its logits must equal, bit for
bit, those of the model the reference loads from the checkpoint itself, on a seeded random
batch (32 x 32 and one other image size). ``--check-only`` checks existing exports without
writing anything.

Checkpoints are read with ``torch.load(weights_only=True)``: nothing but tensors and plain
types is unpickled. Needs torch, einops, numpy and safetensors (see README.md next to this file);
the reference package (``relative_performer/``, which left ``main`` at commit 64c6e65) is
imported from ``--reference DIR``, else ``$RELATIVE_PERFORMER_REFERENCE``, else this
checkout or ``../reference`` next to it (``git worktree add ../reference 64c6e65``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # leave no __pycache__ in the reference package

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]  # HERE is tools; parents: models, crates, repository root
REFERENCE_COMMIT = "64c6e65"  # the reference's last commit on main

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

EXPORT_FORMAT = 1
STATE_PREFIX = "model."  # the LightningModule holds the classifier as ``self.model``
RECORD_KEY = "relative_performer"  # the checkpoint's model record
EXTRA_SUFFIX = "._extra_state"
FEATURE_STATE_KEYS = ("seed", "steps", "redraws")
CHECKPOINT = Path("checkpoints") / "best.ckpt"  # the checkpoint evaluation loads (best by val/acc)
WEIGHTS_NAME = "weights.safetensors"
EXPORT_NAME = "export.json"


class ExportError(Exception):
    pass


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc})") from None


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def out_folder(out_dir: Path, config: dict) -> Path:
    for key in ("dataset", "model"):
        if not isinstance(config.get(key), str) or not config[key] or "/" in config[key]:
            raise ExportError(f"config.json has no usable {key!r} ({config.get(key)!r})")
    return out_dir / config["dataset"] / config["model"]


# ==========================================================================
# Export
# ==========================================================================


def split_state(state_dict: dict[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The checkpoint's state_dict -> (float32 tensors without the prefix, feature-map states by module key)."""
    tensors: dict[str, torch.Tensor] = {}
    feature_maps: dict[str, dict] = {}
    for key, value in state_dict.items():
        if not key.startswith(STATE_PREFIX):
            raise ExportError(f"{where}: state_dict entry {key!r} is not under {STATE_PREFIX!r}")
        name = key[len(STATE_PREFIX):]
        if torch.is_tensor(value):
            if not value.is_floating_point():
                raise ExportError(f"{where}: {key} is a {value.dtype} tensor; only floating-point tensors are exported")
            # clone: no two exported tensors share storage (safetensors refuses that)
            tensors[name] = value.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        elif name.endswith(EXTRA_SUFFIX):
            module = name[: -len(EXTRA_SUFFIX)]
            if not module.endswith("feature_map") or not isinstance(value, dict) or set(value) != set(FEATURE_STATE_KEYS):
                raise ExportError(f"{where}: {key} is not a feature-map state {{seed, steps, redraws}}: {value!r}")
            if not all(isinstance(value[k], int) and not isinstance(value[k], bool) for k in FEATURE_STATE_KEYS):
                raise ExportError(f"{where}: {key} holds non-integer values: {value!r}")
            feature_maps[module] = {k: int(value[k]) for k in FEATURE_STATE_KEYS}
        # any other non-tensor entry is skipped (there are none in the reference's checkpoints)
    if not tensors:
        raise ExportError(f"{where}: the state_dict holds no tensors")
    return tensors, feature_maps


def export_run(run_arg: str, out_dir: Path) -> Path:
    run_dir = Path(run_arg)
    config = read_json(run_dir / "config.json")
    results_path = run_dir / "results.json"
    results = read_json(results_path) if results_path.exists() else None
    if results is None:
        print(f"warning: {results_path} not found (unfinished run): results_json will be null", file=sys.stderr)
    checkpoint_path = run_dir / CHECKPOINT
    if not checkpoint_path.is_file():
        raise ExportError(f"{checkpoint_path} not found")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ExportError(f"{checkpoint_path} is not a Lightning checkpoint (no state_dict)")
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ExportError(f"{checkpoint_path} has no {RECORD_KEY!r} record with a config: not written by the reference")
    model_config = record["config"]
    if config.get("model_config") != model_config:
        raise ExportError(
            f"{run_dir}: config.json's model_config differs from the checkpoint's {RECORD_KEY}['config']:\n"
            f"  config.json: {json.dumps(config.get('model_config'), sort_keys=True)}\n"
            f"  checkpoint:  {json.dumps(model_config, sort_keys=True)}"
        )
    for key, got in (("model", record.get("model")), ("dataset", record.get("dataset"))):
        if config.get(key) != got:
            raise ExportError(f"{run_dir}: config.json says {key} {config.get(key)!r}, the checkpoint {got!r}")
    for key in ("global_step", "epoch"):
        if not isinstance(checkpoint.get(key), int):
            raise ExportError(f"{checkpoint_path} has no integer {key!r}")

    tensors, feature_maps = split_state(checkpoint["state_dict"], str(checkpoint_path))
    dest = out_folder(out_dir, config)
    dest.mkdir(parents=True, exist_ok=True)
    document = {
        "format": EXPORT_FORMAT,
        "source_run": run_arg,
        "source_checkpoint": CHECKPOINT.as_posix(),
        "global_step": checkpoint["global_step"],
        "epoch": checkpoint["epoch"],
        "model_config": model_config,
        "feature_maps": feature_maps,
        "config_json": config,
        "results_json": results,
    }
    write_atomic(dest / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    write_atomic(dest / EXPORT_NAME, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))
    return dest


# ==========================================================================
# Check
# ==========================================================================


def check_batches(model_config: dict) -> list[torch.Tensor]:
    """Seeded random inputs: 8 images at 32 x 32 and 2 at 20 x 28 (the models take any size)."""
    generator = torch.Generator().manual_seed(20_240_217)
    channels = int(model_config.get("in_channels", 1))
    batches = []
    for n, h, w in ((8, 32, 32), (2, 20, 28)):
        if model_config.get("embedding_type") == "lookup":
            batches.append(torch.randint(0, 256, (n, channels, h, w), generator=generator, dtype=torch.uint8))
        else:
            batches.append(torch.rand(n, channels, h, w, generator=generator, dtype=torch.float32))
    return batches


def check_export(dest: Path) -> str:
    """Rebuild the model from the export and compare it with the checkpoint's; returns a summary line."""
    from relative_performer.checkpoint import model_from_checkpoint
    from relative_performer.models.registry import create_model

    document = read_json(dest / EXPORT_NAME)
    if document.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{dest / EXPORT_NAME}: format {document.get('format')!r}, {EXPORT_FORMAT} expected")
    checkpoint_path = Path(document["source_run"]) / document["source_checkpoint"]
    reference, record, checkpoint = model_from_checkpoint(checkpoint_path, expect_model=document["model_config"]["model"])
    if record["config"] != document["model_config"]:
        raise ExportError(f"{dest}: model_config differs from the checkpoint's")

    tensors = load_file(str(dest / WEIGHTS_NAME))
    # the exported tensors are the checkpoint's, bit for bit, in the same layouts
    original = {k[len(STATE_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if torch.is_tensor(v)}
    if set(original) != set(tensors):
        raise ExportError(f"{dest}: tensor names differ from the checkpoint's: {sorted(set(original) ^ set(tensors))[:5]}")
    for name, value in tensors.items():
        if value.dtype != torch.float32 or not value.is_contiguous():
            raise ExportError(f"{dest}: {name} is {value.dtype}, contiguous {value.is_contiguous()}")
        if value.shape != original[name].shape or not torch.equal(value, original[name].float()):
            raise ExportError(f"{dest}: {name} differs from the checkpoint's")

    _, original_maps = split_state(checkpoint["state_dict"], str(checkpoint_path))
    if document["feature_maps"] != original_maps:
        raise ExportError(f"{dest}: feature_maps differ from the checkpoint's feature-map states")

    torch.manual_seed(987_654_321)  # a fresh initialisation (and fresh feature seeds), all to be overwritten
    model = create_model(document["model_config"])
    state: dict[str, Any] = dict(tensors)
    for module, extra in document["feature_maps"].items():
        state[module + EXTRA_SUFFIX] = dict(extra)
    model.load_state_dict(state, strict=True)
    model.eval()
    for module, extra in document["feature_maps"].items():
        got = model.get_submodule(module).get_extra_state()
        if got != extra:
            raise ExportError(f"{dest}: {module} state {got} after loading, {extra} exported")

    worst = 0.0
    with torch.no_grad():
        for x in check_batches(document["model_config"]):
            want, got = reference(x), model(x)
            if want.dtype != torch.float32 or not torch.isfinite(want).all():
                raise ExportError(f"{dest}: the reference's logits are not finite float32")
            worst = max(worst, (want - got).abs().max().item())
            if not torch.equal(want, got):
                raise ExportError(f"{dest}: logits differ from the checkpoint-loaded model's on {tuple(x.shape)} "
                                  f"(max |diff| {worst:.3g})")
    return f"check ok: {len(tensors)} tensors equal the checkpoint's; logits equal bit for bit (max |diff| {worst})"


# ==========================================================================


def find_reference(given: Path | None) -> Path | None:
    """The folder holding the reference's ``relative_performer`` package, or None."""
    env = os.environ.get("RELATIVE_PERFORMER_REFERENCE")
    candidates = [given] if given else ([Path(env)] if env else [REPO, REPO.parent / "reference"])
    for folder in candidates:
        if (folder / "relative_performer" / "__init__.py").is_file():
            return folder.resolve()
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="reference run folders (config.json, checkpoints/best.ckpt)")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT_DIR", help="writes OUT_DIR/<dataset>/<model>/")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-check", action="store_true", help="do not check the exports against the reference")
    mode.add_argument("--check-only", action="store_true", help="only check existing exports; write nothing")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="a checkout of the PyTorch reference (default: $RELATIVE_PERFORMER_REFERENCE, "
                             f"else this checkout or ../reference; git worktree add ../reference {REFERENCE_COMMIT})")
    args = parser.parse_args()
    reference = find_reference(args.reference)
    if reference is None:
        print(f"error: the PyTorch reference package (relative_performer/) was not found: run "
              f"`git worktree add {REPO.parent / 'reference'} {REFERENCE_COMMIT}` in this repository, "
              "or pass --reference DIR", file=sys.stderr)
        return 2
    sys.path.insert(0, str(reference))
    from relative_performer.errors import UserError

    torch.set_num_threads(1)  # no thread-count dependent reduction order
    torch.use_deterministic_algorithms(True)
    seen: dict[Path, str] = {}
    failed = 0
    for run in args.runs:
        try:
            dest = out_folder(args.out, read_json(Path(run) / "config.json"))
            if dest in seen:
                raise ExportError(f"{run} and {seen[dest]} would both be exported to {dest}")
            seen[dest] = run
            if not args.check_only:
                export_run(run, args.out)
                sizes = ", ".join(f"{n} {(dest / n).stat().st_size} bytes" for n in (WEIGHTS_NAME, EXPORT_NAME))
                print(f"{run} -> {dest}: {sizes}", flush=True)
            if not args.no_check:
                if args.check_only and Path(read_json(dest / EXPORT_NAME)["source_run"]) != Path(run):
                    raise ExportError(f"{dest / EXPORT_NAME} was exported from another run folder")
                print(f"{run}: {check_export(dest)}", flush=True)
        except (ExportError, UserError) as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr, flush=True)
    if failed:
        print(f"{failed} of {len(args.runs)} runs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
