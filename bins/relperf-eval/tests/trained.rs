//! `relperf-eval` on runs that `relperf-train` just made (tiny models, a few
//! steps on real MNIST): test, test-recursive, test-shifted on both axes and
//! the figure, so the two halves agree on the run folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use relperf_data::{DatasetName, Fetcher};
use relperf_eval::run::DataSection;
use relperf_models::{ModelConfig, ModelKind};
use relperf_train::{BatchLimit, RunSpec, RuntimeOptions, Start, TrainOptions, train};

fn data_root() -> PathBuf {
    let root = std::env::var_os("RELATIVE_PERFORMER_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data")));
    Fetcher::new(&root)
        .fetch(DatasetName::Mnist)
        .unwrap_or_else(|e| panic!("these tests need MNIST: {e}"));
    root
}

fn tiny_run(folder: &Path, model: ModelKind) {
    let spec = RunSpec {
        model_config: ModelConfig {
            dim: 8,
            depth: 1,
            heads: 2,
            ..ModelConfig::new(model)
        },
        dataset: DatasetName::Mnist,
        training: TrainOptions {
            batch_size: 4,
            seed: Some(3),
            ..Default::default()
        },
        runtime: RuntimeOptions {
            max_steps: 3,
            limit_val_batches: Some(BatchLimit::Count(1)),
            limit_test_batches: Some(BatchLimit::Count(1)),
            progress: false,
            data_dir: Some(data_root().display().to_string()),
            ..Default::default()
        },
        data: DataSection::default(),
    };
    let out = train::<Autodiff<NdArray>>(
        Start::New {
            folder: folder.to_path_buf(),
            spec: Box::new(spec),
            init_from: None,
        },
        "test",
        Default::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(out.results.is_some());
}

fn eval(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_relperf-eval"))
        .args(args)
        .env("RELATIVE_PERFORMER_DATA", data_root())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn rows(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(String::from)
        .collect()
}

#[test]
fn the_commands_read_what_training_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    for model in [ModelKind::Performer, ModelKind::ExactRelativePerformer] {
        tiny_run(&runs.join(model.as_str()), model);
    }
    let out = dir.path().join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let perf = s(&runs.join("Performer"));
    let test_csv = s(&out.join("test.csv"));
    eval(&[
        "test",
        &perf,
        "--output",
        &test_csv,
        "--limit-batches",
        "1",
        "--batch-size",
        "8",
    ]);
    let r = rows(Path::new(&test_csv));
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("Performer,MNIST,linear,8,1,2,"), "{}", r[0]);
    let all_csv = s(&out.join("all.csv"));
    eval(&[
        "test-recursive",
        &s(&runs),
        "--output",
        &all_csv,
        "--limit-batches",
        "1",
        "--batch-size",
        "8",
    ]);
    assert_eq!(rows(Path::new(&all_csv)).len(), 2);
    let mut shift_csvs = Vec::new();
    for axis in ["x", "y"] {
        let csv = s(&out.join(format!("shift-{axis}.csv")));
        eval(&[
            "test-shifted",
            &s(&runs),
            "--axis",
            axis,
            "--labels",
            "all",
            "--min-shift",
            "2",
            "--max-images",
            "4",
            "--output",
            &csv,
        ]);
        // two runs, shifts -2..2
        assert_eq!(rows(Path::new(&csv)).len(), 2 * 5, "{axis}");
        shift_csvs.push(csv);
    }
    let fig = s(&out.join("shifted.png"));
    eval(&[
        "plot-shifted",
        &shift_csvs[0],
        &shift_csvs[1],
        "--output",
        &fig,
    ]);
    assert!(std::fs::metadata(&fig).unwrap().len() > 1000);
}
