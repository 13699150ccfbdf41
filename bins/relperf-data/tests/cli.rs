//! The `relperf-data` binary end to end: exit codes and one-line errors.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relperf-data"))
        .args(args)
        .env_remove("RELATIVE_PERFORMER_DATA")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit `code`, and exactly one line on stderr that is no panic.
fn one_line_error(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

#[test]
fn unknown_dataset_is_a_usage_error() {
    let err = one_line_error(&run(&["verify", "Nope"]), 2);
    assert!(err.contains("unknown dataset 'Nope'"), "{err}");
    one_line_error(&run(&["fetch", "--bogus"]), 2);
    one_line_error(&run(&["frobnicate"]), 2);
}

#[test]
fn help_and_version() {
    for args in [&["--help"][..], &["fetch", "--help"], &["--version"]] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}");
        assert!(!o.stdout.is_empty());
    }
    let help = String::from_utf8(run(&["verify", "--help"]).stdout).unwrap();
    assert!(
        help.contains("--data-dir") && help.contains("RELATIVE_PERFORMER_DATA"),
        "{help}"
    );
}

#[test]
fn fetch_verify_and_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = run(&["fetch", "fashionmnist", "--data-dir", d, "--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.starts_with("FashionMNIST: ok, copied from") && out.contains("4 checksums match"),
        "{out}"
    );
    assert!(
        run(&["verify", "FashionMNIST", "--data-dir", d])
            .status
            .success()
    );

    let file = Path::new(d).join("FashionMNIST/raw/train-labels-idx1-ubyte");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..100]).unwrap();
    let err = one_line_error(&run(&["verify", "FashionMNIST", "--data_dir", d]), 1);
    assert!(
        err.contains("truncated") && err.contains("relperf-data fetch FashionMNIST"),
        "{err}"
    );
}

#[test]
fn nothing_fetched_and_no_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let err = one_line_error(&run(&["verify", "MNIST", "--data-dir", d]), 1);
    assert!(
        err.contains("run `relperf-data fetch MNIST` first"),
        "{err}"
    );
    let err = one_line_error(&run(&["fetch", "CIFAR10", "--data-dir", d, "--offline"]), 1);
    assert!(err.contains("put cifar-10-binary.tar.gz"), "{err}");
}
