//! The demo (`examples/demo.rs`, the README's first command) end to end on
//! real MNIST, with a tiny budget: it shift-tests the shipped models, trains
//! a model for a few seconds, and leaves its CSVs, figures and run folder in
//! a new version folder; bad options are one line and exit code 2.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/demo`, which `cargo test` builds beside the
/// test executables (`target/<profile>/deps/`).
fn demo() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap();
    let path = profile
        .join("examples")
        .join(format!("demo{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

fn data_root() -> PathBuf {
    std::env::var_os("RELATIVE_PERFORMER_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data")))
}

/// Runs the demo with `args`, its output in `out`, on the tests' data.
fn run_demo(args: &[&str], out: &std::path::Path) -> std::process::Output {
    Command::new(demo())
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--data-dir")
        .arg(data_root())
        .output()
        .unwrap()
}

#[test]
fn the_demo_runs_end_to_end_with_a_tiny_budget() {
    let out = tempfile::tempdir().unwrap();
    let o = run_demo(
        &[
            "--max-images",
            "4",
            "--minutes",
            "0.1",
            "--test-images",
            "32",
        ],
        out.path(),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let v = out.path().join("version_0");
    for f in [
        "shifted_label1.csv",
        "shifted_label1.svg",
        "shifted_label1.png",
        "shifted_all.csv",
        "shifted_all.svg",
        "shifted_all.png",
        "train/config.json",
        "train/results.json",
        "train/checkpoints/best.mpk",
    ] {
        assert!(v.join(f).is_file(), "{f} missing\n{stderr}");
    }
    // 3 models x (17 shifts along x + 9 along y), one row each, plus a header
    let csv = std::fs::read_to_string(v.join("shifted_all.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * (17 + 9), "{csv}");
    for model in ["Performer", "RelativePerformer", "ExactRelativePerformer"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{model} "))),
            "no table row for {model}:\n{stdout}"
        );
    }
    assert!(stdout.contains("Your RelativePerformer"), "{stdout}");
    // a second run goes to a new folder: nothing is overwritten
    let again = run_demo(&["--max-images", "1", "--minutes", "0"], out.path());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(out.path().join("version_1/shifted_all.csv").is_file());
    assert!(v.join("train/results.json").is_file());
}

#[test]
fn bad_options_are_one_line_and_exit_2() {
    for args in [
        &["--minutes", "-1"][..],
        &["--max-images", "0"],
        &["--backend", "nope"],
        &["--no-such-option"],
    ] {
        let o = Command::new(demo()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}
