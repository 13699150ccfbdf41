//! The equivariance table in f64 (its own test binary: Burn 0.21 fixes one
//! default float type per device and process), as the reference measures it.

use burn::backend::NdArray;
use relperf_eval::equivariance::{ProbeConfig, probe, table, worst};
use relperf_models::ModelKind;

#[test]
fn equivariance_table_f64() {
    let rows = probe::<NdArray<f64>>(&ProbeConfig::default(), &Default::default());
    println!("{}", table(&rows));
    let worst = |m: ModelKind, a: &str| worst(&rows, m, a);
    for m in [ModelKind::ExactRelativePerformer, ModelKind::NoposPerformer] {
        assert!(
            worst(m, "exact") < 1e-12 && worst(m, "favor+") < 1e-12,
            "{m}: {} / {}",
            worst(m, "exact"),
            worst(m, "favor+")
        );
    }
    assert!(worst(ModelKind::RelativePerformer, "exact") < 1e-12);
    assert!(worst(ModelKind::RelativePerformer, "favor+") > 1e-3);
    assert!(worst(ModelKind::Performer, "exact") > 1e-3);
}
