//! The equivariance table in f32 (the precision models run in), with the
//! thresholds the method promises.

use burn::backend::NdArray;
use relperf_eval::equivariance::{ProbeConfig, probe, table, worst};
use relperf_models::ModelKind;

#[test]
fn equivariance_table_f32() {
    let rows = probe::<NdArray<f32>>(&ProbeConfig::default(), &Default::default());
    println!("{}", table(&rows));
    let worst = |m: ModelKind, a: &str| worst(&rows, m, a);
    for m in [ModelKind::ExactRelativePerformer, ModelKind::NoposPerformer] {
        assert!(
            worst(m, "exact") < 1e-5 && worst(m, "favor+") < 1e-5,
            "{m}: {} / {}",
            worst(m, "exact"),
            worst(m, "favor+")
        );
    }
    let r = ModelKind::RelativePerformer;
    assert!(
        worst(r, "exact") < 1e-5 && worst(r, "favor+") > 1e-3,
        "{r}: {} / {}",
        worst(r, "exact"),
        worst(r, "favor+")
    );
    let p = ModelKind::Performer;
    assert!(
        worst(p, "exact") > 1e-3 && worst(p, "favor+") > 1e-3,
        "{p}: {} / {}",
        worst(p, "exact"),
        worst(p, "favor+")
    );
}
