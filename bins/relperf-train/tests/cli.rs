//! The `relperf-train` binary end to end on real MNIST: a tiny model of each
//! of the five kinds trained for a few steps, resumed, started from another
//! run; Ctrl-C; every user error as one line with exit code 2 (usage) or 1
//! (files, data), before any run folder is made. Needs MNIST in the data
//! folder (fetched here if needed, as the data crate's tests do).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use relperf_data::{DatasetName, Fetcher};
use relperf_train::checkpoint::Checkpoint;
use serde_json::Value;

fn data_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::var_os("RELATIVE_PERFORMER_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data")));
        Fetcher::new(&root)
            .fetch(DatasetName::Mnist)
            .unwrap_or_else(|e| panic!("these tests need MNIST: {e}"));
        root
    })
}

const TINY: &[&str] = &[
    "--dim",
    "8",
    "--depth",
    "1",
    "--heads",
    "2",
    "--batch_size",
    "4",
    "--limit-train-batches",
    "3",
    "--limit-val-batches",
    "1",
    "--limit-test-batches",
    "1",
    "--seed",
    "5",
    "--no-progress-bar",
];

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relperf-train"))
        .args(args)
        .env("RELATIVE_PERFORMER_DATA", data_root())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Exits with `code` and one line starting `error:` that contains `needle`.
fn fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
}

#[test]
fn each_model_trains_resumes_and_starts_others() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().to_str().unwrap();
    for model in [
        "Performer",
        "NoposPerformer",
        "RelativePerformer",
        "ClippedRelativePerformer",
        "ExactRelativePerformer",
    ] {
        let mut args = vec![model, "MNIST", "--log-path", log, "--exp-name", model];
        args.extend_from_slice(TINY);
        args.extend_from_slice(&["--max-steps", "4", "--val-check-interval", "2"]);
        let o = train(&args);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let run = logs.path().join(model).join("version_0");
        for f in [
            "config.json",
            "metrics.csv",
            "results.json",
            "checkpoints/best.mpk",
            "checkpoints/last.ckpt",
        ] {
            assert!(run.join(f).is_file(), "{model}: no {f}");
        }
        let results = json(&run.join("results.json"));
        assert_eq!(results["global_step"], 4, "{model}");
        assert_eq!(results["stopped_by"], "max_steps");
        assert_eq!(results["model"], model);
        let config = json(&run.join("config.json"));
        assert_eq!(config["format"], 1);
        assert_eq!(config["model_config"]["dim"], 8);
        assert_eq!(config["training"]["seed"], 5);
        let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        assert!(metrics.starts_with("epoch,lr-Adam,step,test/acc,test/loss,train/acc"));
        // continue it for two more steps
        let run_s = run.to_str().unwrap();
        let o = train(&["--resume", run_s, "--max-steps", "6", "--no-progress-bar"]);
        assert!(o.status.success(), "{model} resume: {}", stderr(&o));
        assert_eq!(json(&run.join("results.json"))["global_step"], 6);
        assert_eq!(
            json(&run.join("config.json"))["sessions"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    // a new run from a finished one's weights, with a new dropout
    let src = logs.path().join("RelativePerformer/version_0");
    let o = train(&[
        "--init_from",
        src.to_str().unwrap(),
        "--log-path",
        log,
        "--exp-name",
        "init",
        "--attn-dropout",
        "0.0",
        "--max-steps",
        "2",
        "--limit-val-batches",
        "1",
        "--limit-test-batches",
        "1",
        "--batch-size",
        "4",
        "--no-progress-bar",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = json(&logs.path().join("init/version_0/config.json"));
    assert_eq!(config["model"], "RelativePerformer");
    assert_eq!(config["model_config"]["attn_dropout"], 0.0);
    assert_eq!(config["model_config"]["dim"], 8);
    assert!(config["init_from"]["run_dir"].is_string());
    // the steps to the source's best weights, as the reference records them
    let best_step = json(&src.join("results.json"))["best_step"]
        .as_u64()
        .unwrap();
    assert_eq!(config["init_from"]["global_step"], best_step + 1);
    // ... but not a changed model option, nor another model
    let o = train(&["--init-from", src.to_str().unwrap(), "--dim", "16"]);
    fails(&o, 2, "--dim 16 differs");
    let o = train(&["--init-from", src.to_str().unwrap(), "Performer", "MNIST"]);
    fails(&o, 2, "holds a RelativePerformer");
    // resume errors
    let src_s = src.to_str().unwrap();
    fails(
        &train(&["--resume", src_s, "--max-steps", "6"]),
        2,
        "raise --max-steps",
    );
    fails(
        &train(&["--resume", src_s, "--heads", "4"]),
        2,
        "--heads 4 differs",
    );
    fails(
        &train(&["--resume", src_s, "--version", "3"]),
        2,
        "cannot be combined",
    );
    fails(
        &train(&["--resume", src_s, "--init-from", src_s]),
        2,
        "give one of them",
    );
    // a corrupt training state
    let broken = logs.path().join("Performer/version_0");
    let last = broken.join("checkpoints/last.ckpt");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &train(&["--resume", broken.to_str().unwrap(), "--max-steps", "9"]),
        1,
        "corrupt",
    );
    // a run folder that exists is not overwritten
    let mut args = vec![
        "Performer",
        "MNIST",
        "--log-path",
        log,
        "--exp-name",
        "Performer",
    ];
    args.extend_from_slice(&["--version", "0"]);
    fails(&train(&args), 2, "already exists");
}

#[test]
fn ctrl_c_saves_a_state_the_run_continues_from() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().to_str().unwrap();
    let args: Vec<&str> = TINY
        .iter()
        .copied()
        .filter(|a| *a != "--limit-train-batches" && *a != "3")
        .chain([
            "Performer",
            "MNIST",
            "--log-path",
            log,
            "--max-steps",
            "100000",
        ])
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_relperf-train"))
        .args(&args)
        .env("RELATIVE_PERFORMER_DATA", data_root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = logs.path().join("default/version_0");
    // wait for training to start, then interrupt
    let t0 = std::time::Instant::now();
    while !run.join("metrics.csv").is_file() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(!run.join("results.json").exists());
    let state = Checkpoint::read(&run.join("checkpoints/last.ckpt"))
        .unwrap()
        .state;
    assert!(state.global_step > 0, "{err}");
    let until = (state.global_step + 2).to_string();
    let o = train(&[
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        &until,
        "--no-progress-bar",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&run.join("results.json"))["global_step"],
        state.global_step + 2
    );
}

/// `--finish` ends a stopped run without training: from its `last.ckpt`
/// (the exact state), or from `metrics.csv` where that is lost; a finished
/// run, or one without a best checkpoint, is refused in one line.
#[test]
fn finish_tests_a_stopped_run_from_its_checkpoint_or_its_metrics() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().to_str().unwrap();
    let args: Vec<&str> = TINY
        .iter()
        .copied()
        .filter(|a| *a != "--limit-train-batches" && *a != "3")
        .chain(["Performer", "MNIST", "--log-path", log, "--max-steps", "6"])
        .chain(["--val-check-interval", "2", "--limit-train-batches", "8"])
        .collect();
    let o = train(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = logs.path().join("default/version_0");
    let finished = json(&run.join("results.json"));
    // the run as Ctrl-C after its last step would leave it
    std::fs::remove_file(run.join("results.json")).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let no_test: String = metrics
        .lines()
        .filter(|l| {
            l.split(',')
                .nth(3)
                .is_none_or(|c| c.is_empty() || c == "test/acc")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(run.join("metrics.csv"), &no_test).unwrap();
    let run_dir = run.to_str().unwrap();

    for state_from in ["last.ckpt", "metrics.csv"] {
        if state_from == "metrics.csv" {
            std::fs::remove_file(run.join("results.json")).unwrap();
            std::fs::write(run.join("metrics.csv"), &no_test).unwrap();
            std::fs::remove_file(run.join("checkpoints/last.ckpt")).unwrap();
        }
        let o = train(&["--finish", run_dir, "--no-progress-bar"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let results = json(&run.join("results.json"));
        for key in [
            "test_acc",
            "test_loss",
            "best_val_acc",
            "best_step",
            "best_epoch",
            "global_step",
            "epochs",
        ] {
            assert_eq!(results[key], finished[key], "{state_from}: {key}");
        }
        assert_eq!(results["finished_by"]["state_from"], state_from);
        if state_from == "metrics.csv" {
            // what the metrics cannot tell
            assert_eq!(results["stopped_by"], "interrupted");
            assert!(results["train_seconds"].is_null(), "{results}");
        } else {
            assert_eq!(results["stopped_by"], finished["stopped_by"]);
            assert_eq!(results["train_seconds"], finished["train_seconds"]);
        }
        let sessions = json(&run.join("config.json"))["sessions"].clone();
        assert_eq!(
            sessions.as_array().unwrap().last().unwrap()["state_from"],
            state_from
        );
        // one test row appended
        let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        assert_eq!(text.lines().count(), no_test.lines().count() + 1);
    }
    fails(&train(&["--finish", run_dir]), 2, "has finished already");
    fails(
        &train(&["--finish", run_dir, "--resume", run_dir]),
        2,
        "--resume",
    );
    std::fs::remove_file(run.join("results.json")).unwrap();
    std::fs::remove_file(run.join("checkpoints/best.mpk")).unwrap();
    fails(&train(&["--finish", run_dir]), 1, "best.mpk");
    fails(
        &train(&["--finish", logs.path().join("nothing").to_str().unwrap()]),
        1,
        "does not exist",
    );
}

#[test]
fn bad_input_is_one_line_before_any_run_folder() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["Nope", "MNIST"], 2, "unknown model 'Nope'"),
        (&["Performer", "SVHN"], 2, "unknown dataset 'SVHN'"),
        (&["Performer"], 2, "give DATASET"),
        (&[], 2, "give MODEL and DATASET"),
        (&["Performer", "MNIST", "--bogus"], 2, "--bogus"),
        (
            &["Performer", "MNIST", "--attn-dropout", "1.5"],
            2,
            "--attn_dropout must be in [0, 1]",
        ),
        (&["Performer", "MNIST", "--ff_dropout", "-0.1"], 2, "[0, 1]"),
        (
            &["Performer", "MNIST", "--nb-features", "0"],
            2,
            "--nb_features must be at least 1",
        ),
        (
            &["Performer", "MNIST", "--ff-mult", "0"],
            2,
            "--ff_mult must be at least 1",
        ),
        (
            &["Performer", "MNIST", "--batch-size", "0"],
            2,
            "--batch-size must be at least 1",
        ),
        (
            &["Performer", "MNIST", "--learning-rate", "0"],
            2,
            "--learning-rate must be above 0",
        ),
        (
            &["Performer", "MNIST", "--learning_rate", "-1"],
            2,
            "--learning-rate must be above 0",
        ),
        (
            &["Performer", "MNIST", "--dim", "30", "--heads", "4"],
            2,
            "divisible",
        ),
        (
            &["Performer", "MNIST", "--dim", "6", "--heads", "2"],
            2,
            "divisible by 4",
        ),
        (
            &["Performer", "MNIST", "--pos-scales", "2"],
            2,
            "RelativePerformer and ExactRelativePerformer",
        ),
        (
            &["RelativePerformer", "MNIST", "--clipping-dist", "2"],
            2,
            "ClippedRelativePerformer",
        ),
        (
            &["Performer", "MNIST", "--ema-decay", "1"],
            2,
            "--ema-decay must be in [0, 1)",
        ),
        (
            &["Performer", "MNIST", "--schedule", "cosine"],
            2,
            "unknown schedule",
        ),
        (
            &["Performer", "MNIST", "--kernel", "tanh"],
            2,
            "unknown kernel",
        ),
        (
            &["Performer", "MNIST", "--embedding-type", "conv"],
            2,
            "unknown embedding_type",
        ),
        (
            &["Performer", "MNIST", "--max-time", "5m"],
            2,
            "DD:HH:MM:SS",
        ),
        (
            &["Performer", "MNIST", "--max-steps", "0"],
            2,
            "--max-steps must be at least 1",
        ),
        (
            &["Performer", "MNIST", "--limit-val-batches", "0"],
            2,
            "--limit-val-batches",
        ),
        (
            &["Performer", "MNIST", "--val-size", "60000"],
            2,
            "--val-size must be between",
        ),
        (
            &["Performer", "MNIST", "--precision", "16-mixed"],
            2,
            "fp32",
        ),
        (
            &["Performer", "MNIST", "--backend", "tpu"],
            2,
            "unknown backend 'tpu'",
        ),
        (
            &["Performer", "MNIST", "--version", "a/b"],
            2,
            "not a valid folder name",
        ),
    ];
    for (args, code, needle) in cases {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--log-path", log]);
        fails(&train(&all), *code, needle);
    }
    // a backend not compiled in names the feature to build with
    #[cfg(not(feature = "wgpu"))]
    {
        let o = train(&["Performer", "MNIST", "--backend", "wgpu", "--log-path", log]);
        fails(&o, 2, "--features wgpu");
    }
    // nothing above made a run folder
    let made: Vec<_> = walk(logs.path());
    assert!(made.is_empty(), "{made:?}");
    fails(
        &train(&["--resume", "/nonexistent/run"]),
        1,
        "does not exist",
    );
    // a folder that is not a run
    let empty = tempfile::tempdir().unwrap();
    fails(
        &train(&["--resume", empty.path().to_str().unwrap()]),
        1,
        "not a run folder",
    );
    // missing data: the message names the fetch command
    let no_data = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_relperf-train"))
        .args(["Performer", "MNIST", "--log-path", log])
        .args(["--data-dir", no_data.path().to_str().unwrap()])
        .output()
        .unwrap();
    fails(&o, 1, "relperf-data fetch MNIST");
    assert!(walk(logs.path()).is_empty());
    // an unwritable log path
    let file = logs.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut args = vec!["Performer", "MNIST", "--log-path", file.to_str().unwrap()];
    args.extend_from_slice(TINY);
    fails(&train(&args), 1, "writable");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn help_names_every_option_of_the_reference() {
    let o = train(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for opt in [
        "--resume",
        "--init-from",
        "--log-path",
        "--exp-name",
        "--version",
        "--batch-size",
        "--embedding-type",
        "--data-dir",
        "--val-size",
        "--split-seed",
        "--num-workers",
        "--learning-rate",
        "--warmup",
        "--schedule",
        "--gradient-clip-val",
        "--ema-decay",
        "--patience",
        "--seed",
        "--dim",
        "--depth",
        "--heads",
        "--ff-mult",
        "--attn-dropout",
        "--ff-dropout",
        "--feature-redraw-interval",
        "--no-projection",
        "--nb-features",
        "--kernel",
        "--pos-scales",
        "--content-rel-attn",
        "--clipping-dist",
        "--max-epochs",
        "--max-steps",
        "--max-time",
        "--limit-train-batches",
        "--limit-val-batches",
        "--limit-test-batches",
        "--val-check-interval",
        "--checkpoint-every-n-steps",
        "--log-every-n-steps",
        "--no-progress-bar",
        "--precision",
        "--backend",
        "--device",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    assert!(help.contains("[default: 16]"));
}
