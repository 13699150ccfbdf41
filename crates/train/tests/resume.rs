//! A run stopped and continued with `--resume` takes exactly the steps of a
//! run that never stopped (weights, optimizer moments, weight average,
//! features, data order, dropout), on real MNIST; an interrupted run leaves
//! a checkpoint it continues from.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use relperf_data::{DatasetName, Fetcher};
use relperf_eval::run::{DataSection, RunFolder};
use relperf_models::{ImageClassifier, ModelConfig, ModelKind};
use relperf_train::checkpoint::{Checkpoint, record_from_bytes};
use relperf_train::{BatchLimit, RunSpec, RuntimeOptions, Start, TrainOptions, train};

type B = Autodiff<NdArray<f32>>;

/// Burn's random generator is one per backend and process (dropout, weight
/// init): two trainings in parallel threads would draw from each other's
/// stream, so the tests here take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn data_root() -> PathBuf {
    let root = std::env::var_os("RELATIVE_PERFORMER_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data")));
    Fetcher::new(&root)
        .fetch(DatasetName::Mnist)
        .unwrap_or_else(|e| panic!("these tests need MNIST: {e}"));
    root
}

fn spec(max_steps: i64) -> RunSpec {
    let model_config = ModelConfig {
        dim: 16,
        depth: 1,
        heads: 2,
        feature_redraw_interval: 2,
        ..ModelConfig::new(ModelKind::RelativePerformer)
    };
    RunSpec {
        model_config,
        dataset: DatasetName::Mnist,
        training: TrainOptions {
            batch_size: 4,
            ema_decay: 0.9,
            warmup: 3,
            seed: Some(11),
            ..Default::default()
        },
        runtime: RuntimeOptions {
            max_steps,
            limit_train_batches: Some(BatchLimit::Count(3)),
            limit_val_batches: Some(BatchLimit::Count(1)),
            limit_test_batches: Some(BatchLimit::Count(1)),
            checkpoint_every_n_steps: 2,
            log_every_n_steps: 1,
            progress: false,
            data_dir: Some(data_root().display().to_string()),
            ..Default::default()
        },
        data: DataSection::default(),
    }
}

struct Values(Vec<f32>);
impl<B: Backend> ModuleVisitor<B> for Values {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        self.0.extend(p.val().into_data().iter::<f32>());
    }
    fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
        self.0
            .extend(p.val().into_data().iter::<i64>().map(|v| v as f32));
    }
}

/// Every parameter and buffer of the checkpoint's model and weight average.
fn weights(run: &Path) -> (Vec<f32>, Vec<f32>, relperf_train::checkpoint::TrainState) {
    let ckpt = Checkpoint::read(&RunFolder::new(run).last()).unwrap();
    let device = Default::default();
    let config = spec(1).model_config;
    let model: ImageClassifier<B> = config.init(0, &device).unwrap();
    let model = model.load_record(record_from_bytes::<B, _>(ckpt.model, &device, "model").unwrap());
    let ema: ImageClassifier<B> = config.init(0, &device).unwrap();
    let ema = ema.load_record(record_from_bytes::<B, _>(ckpt.ema, &device, "ema").unwrap());
    let (mut a, mut b) = (Values(Vec::new()), Values(Vec::new()));
    model.visit(&mut a);
    ema.visit(&mut b);
    (a.0, b.0, ckpt.state)
}

fn new_run(folder: &Path, max_steps: i64, stop: &AtomicBool) -> relperf_train::Outcome {
    train::<B>(
        Start::New {
            folder: folder.to_path_buf(),
            spec: Box::new(spec(max_steps)),
            init_from: None,
        },
        "test",
        Default::default(),
        stop,
    )
    .unwrap()
}

fn resume(folder: &Path, max_steps: i64) -> relperf_train::Outcome {
    let rt = RuntimeOptions {
        max_steps,
        ..spec(max_steps).runtime
    };
    train::<B>(
        Start::Resume {
            run: RunFolder::new(folder),
            runtime: rt,
        },
        "test --resume",
        Default::default(),
        &AtomicBool::new(false),
    )
    .unwrap()
}

#[test]
fn a_resumed_run_takes_the_steps_of_an_uninterrupted_one() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let go = AtomicBool::new(false);
    // 7 steps across epochs of 3 batches: redraws at 2, 4, 6, validations
    // at each epoch end, EMA and warm-up on
    let whole = dir.path().join("whole");
    new_run(&whole, 7, &go);
    let split = dir.path().join("split");
    let first = new_run(&split, 4, &go);
    assert_eq!(first.results.unwrap()["global_step"], 4);
    resume(&split, 7);
    let (w1, e1, s1) = weights(&whole);
    let (w2, e2, s2) = weights(&split);
    assert_eq!(s1.global_step, 7);
    assert_eq!(s1.epoch, s2.epoch);
    assert_eq!(s1.epoch_loss_sum, s2.epoch_loss_sum);
    assert_eq!(w1, w2, "weights and features differ");
    assert_eq!(e1, e2, "weight averages differ");
    assert_ne!(w1, e1, "the average should differ from the weights");
    // and the run differs from one of another seed: the comparison can fail
    let third = dir.path().join("other");
    let mut other = spec(7);
    other.training.seed = Some(12);
    train::<B>(
        Start::New {
            folder: third.clone(),
            spec: Box::new(other),
            init_from: None,
        },
        "test",
        Default::default(),
        &go,
    )
    .unwrap();
    assert_ne!(weights(&third).0, w1);
}

#[test]
fn an_interrupted_run_saves_its_state_and_continues() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let stopped = new_run(&run, 5, &AtomicBool::new(true));
    assert!(stopped.interrupted);
    assert!(stopped.results.is_none());
    let state = Checkpoint::read(&RunFolder::new(&run).last())
        .unwrap()
        .state;
    assert_eq!(state.global_step, 0);
    let done = resume(&run, 5);
    assert!(!done.interrupted);
    let results = done.results.unwrap();
    assert_eq!(results["global_step"], 5);
    assert_eq!(results["stopped_by"], "max_steps");
    // a finished run's budget is spent: resuming it again says so
    let e = train::<B>(
        Start::Resume {
            run: RunFolder::new(&run),
            runtime: spec(5).runtime,
        },
        "again",
        Default::default(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("raise --max-steps"), "{e}");
    // a run folder in use is never overwritten
    let e = train::<B>(
        Start::New {
            folder: run.clone(),
            spec: Box::new(spec(5)),
            init_from: None,
        },
        "test",
        Default::default(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}
