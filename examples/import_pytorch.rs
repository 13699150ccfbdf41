//! Converts exports of the PyTorch reference's runs into Burn model folders:
//!
//! ```text
//! # 1. Python, with torch (crates/models/tools/README.md): state_dict -> safetensors + export.json
//! #    (from a worktree of the reference: git worktree add ../reference 64c6e65; cd ../reference)
//! python "$OLDPWD/crates/models/tools/export_pytorch.py" pretrained/*/* --out /tmp/relperf-export
//! # 2. Rust: safetensors -> Burn records
//! cargo run --release --example import_pytorch -- /tmp/relperf-export results/pretrained
//! ```
//!
//! For each `EXPORT/<DATASET>/<MODEL>/` it writes `OUT/<DATASET>/<MODEL>/`:
//! `checkpoints/best.mpk` (the Burn record: weights and random features), `config.json`
//! (the run's own, plus an `imported` entry saying where the weights came
//! from), `results.json` (the run's, pointing at the new record) and
//! `metrics.csv` (the run's, unchanged): a run folder the `relperf-eval`
//! commands read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::backend::NdArray;
use relative_performer::eval::run::{BEST_FILE, CHECKPOINT_DIR};
use relative_performer::models::{PytorchExport, import, save_record};

fn convert(export_dir: &Path, out: &Path) -> Result<PathBuf, String> {
    let export = PytorchExport::read(export_dir).map_err(|e| e.to_string())?;
    let model = import::<NdArray>(&export, &Default::default())
        .map_err(|e| format!("{}: {e}", export_dir.display()))?;
    let meta = &export.meta;
    let dataset = meta["config_json"]["dataset"]
        .as_str()
        .ok_or("export.json has no config_json.dataset")?;
    let dest = out.join(dataset).join(model.config().model.as_str());
    let checkpoints = dest.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&checkpoints).map_err(|e| format!("{}: {e}", dest.display()))?;
    save_record(&model, &checkpoints.join(BEST_FILE)).map_err(|e| e.to_string())?;
    let mut config = meta["config_json"].clone();
    config["imported"] = serde_json::json!({
        "from": "the PyTorch reference implementation (relative_performer), converted by examples/import_pytorch.rs",
        "source_run": meta["source_run"],
        "source_checkpoint": meta["source_checkpoint"],
        "global_step": meta["global_step"],
        "epoch": meta["epoch"],
        "feature_maps": meta["feature_maps"],
    });
    let write_json = |name: &str, v: &serde_json::Value| {
        std::fs::write(
            dest.join(name),
            serde_json::to_string_pretty(v).expect("JSON") + "\n",
        )
        .map_err(|e| format!("{}: {e}", dest.display()))
    };
    write_json("config.json", &config)?;
    let mut results = meta["results_json"].clone();
    results["best_checkpoint"] = format!("{CHECKPOINT_DIR}/{BEST_FILE}").into();
    write_json("results.json", &results)?;
    if let Some(run) = meta["source_run"].as_str() {
        let metrics = Path::new(run).join("metrics.csv");
        if metrics.exists() {
            std::fs::copy(&metrics, dest.join("metrics.csv"))
                .map_err(|e| format!("{}: {e}", metrics.display()))?;
        }
    }
    Ok(dest)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [export_root, out] = args.as_slice() else {
        eprintln!("usage: import_pytorch EXPORT_ROOT OUT_ROOT (see the example's docs)");
        return ExitCode::from(2);
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for ds in std::fs::read_dir(export_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        for run in std::fs::read_dir(ds.path()).into_iter().flatten().flatten() {
            if run.path().join("weights.safetensors").exists() {
                dirs.push(run.path());
            }
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        eprintln!(
            "error: no <DATASET>/<MODEL>/weights.safetensors under {export_root}: run crates/models/tools/export_pytorch.py first"
        );
        return ExitCode::from(1);
    }
    for dir in dirs {
        match convert(&dir, Path::new(out)) {
            Ok(dest) => println!("{} -> {}", dir.display(), dest.display()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
