//! The fetch routes, on files the tests write or copy, served over loopback
//! by a small HTTP server: download, checksum failures, fallbacks, archives,
//! `.gz` files in place, and that a failed fetch leaves no file behind.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use relperf_data::sources::{
    CIFAR_ARCHIVE, CIFAR_BIN_FOLDER, CIFAR_RECORD, DEBIAN_FASHION_MNIST, idx_folder, read_raw,
};
use relperf_data::{DatasetName, Fetcher, Route, Split, md5_bytes, verify};

/// Serves `files` (path -> body) on 127.0.0.1 for at most `max` requests;
/// returns the base URL. Unknown paths get a 404.
fn serve(files: HashMap<String, Vec<u8>>, max: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let response = match files.get(&path) {
                Some(body) => [
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes(),
                    body.clone(),
                ]
                .concat(),
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    url
}

fn debian_files() -> HashMap<String, Vec<u8>> {
    let dir = Path::new(DEBIAN_FASHION_MNIST);
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!("{DEBIAN_FASHION_MNIST}: {e} (apt-get install dataset-fashion-mnist)")
        })
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Every file under `dir`, relative names, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn nowhere() -> PathBuf {
    PathBuf::from("/nonexistent/relperf-test")
}

#[test]
fn download_from_a_mirror_with_official_checksums() {
    let url = serve(debian_files(), 8);
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(dir.path())
        .with_mirrors(
            DatasetName::FashionMnist,
            vec!["http://127.0.0.1:9/".into(), url.clone()],
        )
        .with_debian_fashion_mnist(nowhere());
    let report = fetcher.fetch(DatasetName::FashionMnist).unwrap();
    assert_eq!(report.route, Route::Downloaded(url));
    verify(dir.path(), DatasetName::FashionMnist).unwrap();
    // A second fetch finds the files.
    assert_eq!(
        fetcher.fetch(DatasetName::FashionMnist).unwrap().route,
        Route::AlreadyPresent
    );
}

#[test]
fn a_bad_download_falls_back_and_leaves_no_file() {
    let mut files = debian_files();
    // Same gzip framing, other content: the content MD5 must catch it.
    let labels = "t10k-labels-idx1-ubyte.gz".to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut fake = relperf_data::idx::encode_idx(&[10000], &[0u8; 10000]);
    fake[8] = 1;
    gz.write_all(&fake).unwrap();
    files.insert(labels, gz.finish().unwrap());
    let url = serve(files, 8);
    let dir = tempfile::tempdir().unwrap();

    let err = Fetcher::new(dir.path())
        .with_mirrors(DatasetName::FashionMnist, vec![url.clone()])
        .with_debian_fashion_mnist(nowhere())
        .fetch(DatasetName::FashionMnist)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("content MD5") && err.contains("apt-get install dataset-fashion-mnist"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    // The files fetched before the bad one stay (they are checked); the bad
    // one and no temporary file remain.
    let left = files_under(dir.path());
    assert!(
        left.iter()
            .all(|f| !f.contains("t10k-labels") && !f.ends_with(".tmp")),
        "{left:?}"
    );

    // With the Debian files available, the fallback completes the set.
    let report = Fetcher::new(dir.path())
        .with_mirrors(DatasetName::FashionMnist, vec![url])
        .fetch(DatasetName::FashionMnist)
        .unwrap();
    assert_eq!(
        report.route,
        Route::Debian(PathBuf::from(DEBIAN_FASHION_MNIST))
    );
    verify(dir.path(), DatasetName::FashionMnist).unwrap();
}

#[test]
fn gz_files_in_the_folder_are_decompressed_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let raw = idx_folder(dir.path(), DatasetName::FashionMnist);
    std::fs::create_dir_all(&raw).unwrap();
    for (name, bytes) in debian_files() {
        std::fs::write(raw.join(name), bytes).unwrap();
    }
    let report = Fetcher::new(dir.path())
        .offline(true)
        .fetch(DatasetName::FashionMnist)
        .unwrap();
    assert_eq!(report.route, Route::Decompressed);
    verify(dir.path(), DatasetName::FashionMnist).unwrap();
}

#[test]
fn a_truncated_idx_file_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    Fetcher::new(dir.path())
        .offline(true)
        .fetch(DatasetName::FashionMnist)
        .unwrap();
    let file = idx_folder(dir.path(), DatasetName::FashionMnist).join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    for err in [
        verify(dir.path(), DatasetName::FashionMnist)
            .unwrap_err()
            .to_string(),
        Fetcher::new(dir.path())
            .offline(true)
            .fetch(DatasetName::FashionMnist)
            .unwrap_err()
            .to_string(),
        read_raw(dir.path(), DatasetName::FashionMnist, Split::Test)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            err.contains("truncated") && err.contains("relperf-data fetch FashionMNIST"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}

#[test]
fn missing_data_names_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_raw(dir.path(), DatasetName::Mnist, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run `relperf-data fetch MNIST` first"),
        "{err}"
    );
    let err = verify(dir.path(), DatasetName::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run `relperf-data fetch CIFAR10` first"),
        "{err}"
    );
}

/// A small CIFAR-10 binary archive: `n` records per batch file, label
/// `(i + batch) % 10`, pixels from a counter.
fn cifar_archive(n: usize, skip: Option<&str>) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut names: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    names.push("test_batch.bin".into());
    for (b, name) in names.iter().enumerate() {
        let mut data = Vec::new();
        for i in 0..n {
            data.push(((i + b) % 10) as u8);
            data.extend((0..CIFAR_RECORD - 1).map(|j| ((i * 7 + j + b) % 256) as u8));
        }
        add(&mut tar, &format!("{CIFAR_BIN_FOLDER}/{name}"), &data, skip);
    }
    add(
        &mut tar,
        &format!("{CIFAR_BIN_FOLDER}/batches.meta.txt"),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
        skip,
    );
    add(&mut tar, "../evil.txt", b"never written", None);
    tar.into_inner().unwrap().finish().unwrap()
}

fn add<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8], skip: Option<&str>) {
    if skip.is_some_and(|s| path.ends_with(s)) {
        return;
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // set_path refuses "..": write the name bytes directly, as a hostile archive would.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

#[test]
fn cifar_download_extract_and_read() {
    let archive = cifar_archive(20, None);
    let md5 = md5_bytes(&archive);
    let url = serve(HashMap::from([(CIFAR_ARCHIVE.to_string(), archive)]), 4);
    let dir = tempfile::tempdir().unwrap();

    // Wrong checksum: refused, nothing installed.
    let err = Fetcher::new(dir.path())
        .with_mirrors(DatasetName::Cifar10, vec![url.clone()])
        .fetch(DatasetName::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("MD5") && err.contains(CIFAR_ARCHIVE), "{err}");
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );

    let report = Fetcher::new(dir.path())
        .with_mirrors(DatasetName::Cifar10, vec![url.clone()])
        .with_cifar_archive_md5(md5)
        .fetch(DatasetName::Cifar10)
        .unwrap();
    assert_eq!(report.route, Route::Downloaded(url));
    assert!(!dir.path().parent().unwrap().join("evil.txt").exists());
    let train = read_raw(dir.path(), DatasetName::Cifar10, Split::Train).unwrap();
    assert_eq!(
        (train.len, train.channels, train.height, train.width),
        (100, 3, 32, 32)
    );
    assert_eq!(train.labels[..3], [0, 1, 2]);
    assert_eq!(train.labels[20], 1); // second batch starts at label 1
    assert_eq!(train.pixels[..3], [0, 1, 2]);
    let test = read_raw(dir.path(), DatasetName::Cifar10, Split::Test).unwrap();
    assert_eq!(test.len, 20);
    // Counts are not the official ones: verify says so in one line.
    let err = verify(dir.path(), DatasetName::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("per-class counts"), "{err}");
}

#[test]
fn cifar_archive_in_place_and_broken_archives() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(
        downloads.join(CIFAR_ARCHIVE),
        cifar_archive(3, Some("test_batch.bin")),
    )
    .unwrap();
    let err = Fetcher::new(dir.path())
        .offline(true)
        .fetch(DatasetName::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lacks cifar-10-batches-bin/test_batch.bin"),
        "{err}"
    );
    assert!(!dir.path().join(CIFAR_BIN_FOLDER).exists());

    std::fs::write(downloads.join(CIFAR_ARCHIVE), b"not a tar.gz").unwrap();
    let err = Fetcher::new(dir.path())
        .offline(true)
        .fetch(DatasetName::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be extracted"), "{err}");

    std::fs::write(downloads.join(CIFAR_ARCHIVE), cifar_archive(3, None)).unwrap();
    let report = Fetcher::new(dir.path())
        .offline(true)
        .fetch(DatasetName::Cifar10)
        .unwrap();
    assert_eq!(report.route, Route::Archive(downloads.join(CIFAR_ARCHIVE)));
    assert_eq!(
        read_raw(dir.path(), DatasetName::Cifar10, Split::Test)
            .unwrap()
            .len,
        3
    );

    // A batch file cut mid-record.
    let batch = dir.path().join(CIFAR_BIN_FOLDER).join("test_batch.bin");
    let bytes = std::fs::read(&batch).unwrap();
    std::fs::write(&batch, &bytes[..bytes.len() - 5]).unwrap();
    let err = read_raw(dir.path(), DatasetName::Cifar10, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a whole number of 3073-byte records"),
        "{err}"
    );
}
