//! The `relperf-eval` binary end to end on the shipped runs
//! (`results/pretrained`): the CSVs, the figure, exit codes and one-line
//! errors. Kept fast: a batch or two, a few images, a few shifts. Needs
//! MNIST in the data folder (fetched here if needed, as the data crate's
//! tests do).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use relperf_data::{DatasetName, Fetcher};

const TEST_COLUMNS: &str = "run_dir,model,dataset,embedding_type,dim,depth,heads,ff_mult,attn_dropout,ff_dropout,feature_redraw_interval,no_projection,nb_features,kernel,pos_scales,content_rel_attn,clipping_dist,learning_rate,warmup,schedule,batch_size,seed,parameters,epochs,val_loss,val_acc,val_n,test_loss,test_acc,test_n,checkpoint";
const SHIFT_COLUMNS: &str = "run_dir,model,dataset,axis,shift,n_images,accuracy_mean,accuracy_std,loss_mean,loss_std,labels,min_shift,feature_seed";

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

fn pretrained(dataset: &str, model: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../results/pretrained"
    ))
    .join(dataset)
    .join(model)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relperf-eval"))
        .args(args)
        .env("RELATIVE_PERFORMER_DATA", data_root())
        .output()
        .unwrap()
}

/// Runs without data in the environment (for checks that fail before any).
fn run_bare(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relperf-eval"))
        .args(args)
        .env_remove("RELATIVE_PERFORMER_DATA")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of a shipped run (config, results, best checkpoint) at `dest`.
fn copy_run(dataset: &str, model: &str, dest: &Path) -> PathBuf {
    let src = pretrained(dataset, model);
    std::fs::create_dir_all(dest.join("checkpoints")).unwrap();
    for f in ["config.json", "results.json", "checkpoints/best.mpk"] {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
    dest.to_path_buf()
}

fn edit_config(run: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = run.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn help_says_each_option_and_its_default() {
    for args in [&["--help"][..], &["test", "--help"], &["--version"]] {
        let o = run_bare(args);
        ok(&o);
        assert!(!o.stdout.is_empty());
    }
    let help = String::from_utf8(run_bare(&["test-shifted", "--help"]).stdout).unwrap();
    for needle in [
        "--min-shift",
        "[default: 10]",
        "--batch-size",
        "[default: 64]",
        "--feature-seed",
        "--max-images",
        "--redraw-features",
        "--backend",
        "RELATIVE_PERFORMER_DATA",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.csv");
    let perf = pretrained("MNIST", "Performer");
    let (out, perf) = (s(&out), s(&perf));
    for (args, needle) in [
        (&["frobnicate"][..], "frobnicate"),
        (&["test", perf, "--output", out, "--bogus"], "--bogus"),
        (
            &["test", perf, "--output", out, "--batch_size", "0"],
            "at least 1",
        ),
        (
            &["test-shifted", perf, "--axis", "z", "--output", out],
            "unknown axis 'z'",
        ),
        (
            &["test-shifted", perf, "--labels", "one", "--output", out],
            "--labels",
        ),
        (
            &["test-shifted", perf, "--max_images", "0", "--output", out],
            "--max-images",
        ),
        (
            &["equivariance", "--models", "Nope"],
            "unknown model 'Nope'",
        ),
        (&["equivariance", "--side", "2"], "--side"),
        (&["test", perf, "--output", s(dir.path())], "is a folder"),
        (
            &["test", perf, "--output", out, "--device", "discrete:0"],
            "--device",
        ),
    ] {
        let err = one_line_error(&run_bare(args), 2);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for (backend, compiled) in [
        ("flex", cfg!(feature = "flex")),
        ("wgpu", cfg!(feature = "wgpu")),
    ] {
        if !compiled {
            let o = run_bare(&["test", perf, "--output", out, "--backend", backend]);
            let err = one_line_error(&o, 2);
            assert!(err.contains(&format!("--features {backend}")), "{err}");
        }
    }
    assert!(!Path::new(out).exists());
}

#[test]
fn test_and_test_recursive_write_the_reference_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/folder/test.csv");
    let perf = pretrained("MNIST", "Performer");
    let o = run(&[
        "test",
        s(&perf),
        "--output",
        s(&out),
        "--limit_batches",
        "1",
        "--batch-size",
        "8",
    ]);
    ok(&o);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], TEST_COLUMNS);
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(cells.len(), 31);
    assert_eq!(&cells[1..5], ["Performer", "MNIST", "linear", "32"]);
    assert_eq!((cells[26], cells[29]), ("8", "8"), "val_n, test_n");
    let acc: f64 = cells[28].parse().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(stderr(&o).lines().count(), 1, "one progress line per run");

    // a tree with two runs, one without its checkpoint, and a folder that is no run
    let tree = dir.path().join("tree");
    copy_run("MNIST", "NoposPerformer", &tree.join("a/version_0"));
    let broken = copy_run("MNIST", "Performer", &tree.join("b/version_7"));
    std::fs::remove_file(broken.join("checkpoints/best.mpk")).unwrap();
    std::fs::create_dir_all(tree.join("not_a_run")).unwrap();
    let all = dir.path().join("all.csv");
    let o = run(&[
        "test-recursive",
        s(&tree),
        "--output",
        s(&all),
        "--limit-batches",
        "1",
        "--batch_size",
        "4",
    ]);
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("warning: skipping") && err.contains("version_7"),
        "{err}"
    );
    let text = std::fs::read_to_string(&all).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].contains("a/version_0,NoposPerformer,MNIST"),
        "{text}"
    );

    // nothing usable at all
    std::fs::remove_dir_all(tree.join("a")).unwrap();
    let o = run(&["test-recursive", s(&tree), "--output", s(&all)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let last = err.trim_end().lines().last().unwrap();
    assert_eq!(last, "error: no run could be tested", "{err}");
    assert_eq!(std::fs::read_to_string(&all).unwrap(), text, "kept");
}

#[test]
fn run_folder_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.csv");
    let test = |dir: &Path| run(&["test", s(dir), "--output", s(&out), "--limit-batches", "1"]);

    let err = one_line_error(&test(&dir.path().join("nowhere")), 1);
    assert!(err.contains("does not exist"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = one_line_error(&test(&empty), 1);
    assert!(err.contains("not a run folder"), "{err}");

    let newer = copy_run("MNIST", "Performer", &dir.path().join("newer"));
    edit_config(&newer, |v| v["config_version"] = 999.into());
    let err = one_line_error(&test(&newer), 1);
    assert!(
        err.contains("config_version 999") && err.contains("newer"),
        "{err}"
    );

    let truncated = copy_run("MNIST", "Performer", &dir.path().join("truncated"));
    let best = truncated.join("checkpoints/best.mpk");
    let bytes = std::fs::read(&best).unwrap();
    std::fs::write(&best, &bytes[..bytes.len() / 2]).unwrap();
    let err = one_line_error(&test(&truncated), 1);
    assert!(err.contains("best.mpk"), "{err}");

    let foreign = copy_run(
        "MNIST",
        "ClippedRelativePerformer",
        &dir.path().join("foreign"),
    );
    std::fs::copy(
        pretrained("MNIST", "Performer").join("checkpoints/best.mpk"),
        foreign.join("checkpoints/best.mpk"),
    )
    .unwrap();
    let err = one_line_error(&test(&foreign), 1);
    assert!(err.contains("does not fit"), "{err}");

    // an image size that does not fit: a one-channel model on 3-channel data
    let other = copy_run("MNIST", "Performer", &dir.path().join("cifar"));
    edit_config(&other, |v| v["dataset"] = "CIFAR10".into());
    let err = one_line_error(&test(&other), 1);
    assert!(err.contains("channel"), "{err}");
    assert!(!out.exists());
}

#[test]
fn data_missing_and_output_not_writable() {
    let dir = tempfile::tempdir().unwrap();
    let perf = pretrained("MNIST", "Performer");
    let out = dir.path().join("x.csv");
    let o = run(&[
        "test",
        s(&perf),
        "--output",
        s(&out),
        "--data-dir",
        s(dir.path()),
    ]);
    let err = one_line_error(&o, 1);
    assert!(err.contains("relperf-data fetch MNIST"), "{err}");

    let file = dir.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    let o = run(&["test", s(&perf), "--output", s(&file.join("x.csv"))]);
    let err = one_line_error(&o, 1);
    assert!(err.contains("cannot write --output"), "{err}");

    // a run's own file is never the output
    let copy = copy_run("MNIST", "Performer", &dir.path().join("run"));
    let config = copy.join("config.json");
    let before = std::fs::read(&config).unwrap();
    let err = one_line_error(&run(&["test", s(&copy), "--output", s(&config)]), 2);
    assert!(err.contains("is a file of the run"), "{err}");
    assert_eq!(std::fs::read(&config).unwrap(), before);
}

#[test]
fn test_shifted_then_plot() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.csv");
    let perf = pretrained("MNIST", "Performer");
    let o = run(&[
        "test-shifted",
        s(&perf),
        "--min_shift",
        "1",
        "--max-images",
        "4",
        "--batch-size",
        "4",
        "--feature_seed",
        "3",
        "--output",
        s(&x),
    ]);
    ok(&o);
    let text = std::fs::read_to_string(&x).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], SHIFT_COLUMNS);
    assert_eq!(lines.len(), 1 + 2 * 3, "{text}");
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    let shifts: Vec<&str> = rows.iter().map(|r| r[4]).collect();
    assert_eq!(shifts, ["-1", "0", "1", "-1", "0", "1"]);
    assert!(
        rows.iter()
            .all(|r| r[3] == "x" && r[5] == "4" && r[10] == "1")
    );
    let seeds: Vec<&str> = rows.iter().map(|r| r[12]).collect();
    assert_eq!(seeds, ["", "", "", "3", "3", "3"]);
    assert_eq!(stderr(&o).lines().count(), 2 * (3 + 1), "{}", stderr(&o));

    let y = dir.path().join("y.csv");
    let o = run(&[
        "test-shifted",
        s(&perf),
        "--axis",
        "y",
        "--labels",
        "all",
        "--min-shift",
        "1",
        "--max-images",
        "2",
        "--redraw-features",
        "--output",
        s(&y),
    ]);
    ok(&o);
    assert!(stderr(&o).contains("Redrawing the random features with seed"));
    let text = std::fs::read_to_string(&y).unwrap();
    assert_eq!(text.lines().count(), 1 + 3);
    assert!(
        text.lines()
            .skip(1)
            .all(|l| l.contains(",y,") && l.contains(",all,1,") && !l.ends_with(','))
    );

    for ext in ["svg", "png"] {
        let fig = dir.path().join(format!("figs/shift.{ext}"));
        let o = run(&[
            "plot-shifted",
            s(&x),
            s(&y),
            "--output",
            s(&fig),
            "--title",
            "tiny",
        ]);
        ok(&o);
        let bytes = std::fs::read(&fig).unwrap();
        assert!(bytes.len() > 5_000, "{ext}: {} bytes", bytes.len());
        if ext == "svg" {
            let svg = String::from_utf8(bytes).unwrap();
            assert!(svg.contains("Performer [own features]") && svg.contains("tiny"));
        } else {
            assert!(bytes.starts_with(b"\x89PNG"));
        }
    }

    // errors
    let err = one_line_error(
        &run(&[
            "test-shifted",
            s(&perf),
            "--min-shift",
            "17",
            "--output",
            s(&x),
        ]),
        2,
    );
    assert!(err.contains("too large"), "{err}");
    let cifar = copy_run("MNIST", "Performer", &dir.path().join("cifar"));
    edit_config(&cifar, |v| v["dataset"] = "CIFAR10".into());
    let err = one_line_error(&run(&["test-shifted", s(&cifar), "--output", s(&x)]), 2);
    assert!(err.contains("MNIST and FashionMNIST only"), "{err}");
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "a,b\n1,2\n").unwrap();
    let png = dir.path().join("o.png");
    let err = one_line_error(&run(&["plot-shifted", s(&other), "--output", s(&png)]), 1);
    assert!(err.contains("not a test-shifted CSV"), "{err}");
    let err = one_line_error(&run(&["plot-shifted", s(&x), "--output", s(&x)]), 2);
    assert!(err.contains("one of the CSVs"), "{err}");
    let err = one_line_error(
        &run(&[
            "plot-shifted",
            s(&x),
            "--output",
            s(&dir.path().join("f.pdf")),
        ]),
        2,
    );
    assert!(err.contains(".svg or .png"), "{err}");
    assert!(!png.exists());
    assert_eq!(
        std::fs::read_to_string(&x).unwrap().lines().count(),
        7,
        "kept"
    );
}

#[test]
fn plot_curves_draws_the_learning_curves_of_runs() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = pretrained("MNIST", "Performer");
    let root = shipped.parent().unwrap().parent().unwrap();
    let (svg, csv) = (dir.path().join("c.svg"), dir.path().join("c.csv"));
    let o = run_bare(&[
        "plot-curves",
        s(root),
        "--output",
        s(&svg),
        "--csv",
        s(&csv),
    ]);
    ok(&o);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("training images seen"));
    assert!(text.contains("ExactRelativePerformer [PyTorch, continued]"));
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert!(rows.starts_with(
        "run_dir,model,dataset,batch_size,step,images,val_acc,val_loss,pytorch,continued\n"
    ));
    // the shipped MNIST Performer validated 13 times, the last at step 9509
    let performer: Vec<&str> = rows
        .lines()
        .filter(|l| l.contains("/MNIST/Performer,"))
        .collect();
    assert_eq!(performer.len(), 13, "{rows}");
    assert!(
        performer[12].contains(",64,9509,608640,"),
        "{}",
        performer[12]
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("13 validations, best val/acc 0.9695"),
        "{summary}"
    );
    // a run without metrics, a missing folder, a bad extension: one line each
    let bare = copy_run("MNIST", "Performer", &dir.path().join("bare"));
    let err = one_line_error(
        &run_bare(&["plot-curves", s(&bare), "--output", s(&svg)]),
        1,
    );
    assert!(
        err.contains("no run folders with config.json and metrics.csv"),
        "{err}"
    );
    std::fs::write(bare.join("metrics.csv"), "step,val/acc\n49,\n").unwrap();
    let err = one_line_error(
        &run_bare(&["plot-curves", s(&bare), "--output", s(&svg)]),
        1,
    );
    assert!(err.contains("holds no validation"), "{err}");
    let missing = dir.path().join("nowhere");
    let err = one_line_error(
        &run_bare(&["plot-curves", s(&missing), "--output", s(&svg)]),
        1,
    );
    assert!(err.contains("nowhere"), "{err}");
    let pdf = dir.path().join("c.pdf");
    let err = one_line_error(
        &run_bare(&["plot-curves", s(&shipped), "--output", s(&pdf)]),
        2,
    );
    assert!(err.contains(".svg or .png"), "{err}");
}

#[test]
fn equivariance_prints_the_table_and_writes_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eq.csv");
    let o = run_bare(&[
        "equivariance",
        "--models",
        "NoposPerformer",
        "--side",
        "8",
        "--draws",
        "2",
        "--output",
        s(&out),
    ]);
    ok(&o);
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.contains("NoposPerformer") && table.contains("favor+"),
        "{table}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "model,attention,draw,max_relative_logit_change");
    assert_eq!(lines.len(), 1 + 1 + 2);
    for line in &lines[1..] {
        let v: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        // float64 on ndarray, float32 on the others
        let tol = if cfg!(feature = "ndarray") {
            1e-10
        } else {
            1e-4
        };
        assert!(v < tol, "NoposPerformer is invariant: {line}");
    }
}
