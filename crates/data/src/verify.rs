//! Checks that a data folder holds the official datasets.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::idx::check_idx_size;
use crate::names::{DatasetName, Split};
use crate::sources::{self, IDX_FILES, idx_folder, ndim_of, read_raw};

/// What [`verify()`] found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The dataset.
    pub dataset: DatasetName,
    /// The folder of its raw files.
    pub folder: PathBuf,
    /// Images in the train and test splits.
    pub lens: [usize; 2],
    /// Images per class, train then test.
    pub per_class: [[usize; 10]; 2],
    /// `(channels, height, width)` of the stored images.
    pub image_shape: (usize, usize, usize),
    /// Files whose MD5 matched the official release (0 where no table
    /// exists: CIFAR-10's binary batches).
    pub md5_checked: usize,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let md5 = if self.md5_checked > 0 {
            format!(
                ", {} checksums match the official release",
                self.md5_checked
            )
        } else {
            String::new()
        };
        write!(
            f,
            "{} train / {} test images, per-class counts match{md5} ({})",
            self.lens[0],
            self.lens[1],
            self.folder.display()
        )
    }
}

/// Loads `dataset` from `root` and checks file structure, image counts per
/// class, image shape, and the MD5 of every file that has an official one.
/// Missing, truncated or corrupt files give a one-line [`DataError`] naming
/// the file and the command that repairs it.
pub fn verify(root: &Path, dataset: DatasetName) -> Result<VerifyReport> {
    let name = dataset.as_str();
    if dataset != DatasetName::Cifar10 {
        // Cheap structural checks first, before reading 50 MB.
        let folder = idx_folder(root, dataset);
        for f in IDX_FILES.iter().flat_map(|(_, i, l)| [*i, *l]) {
            let plain = folder.join(f);
            if !plain.exists() {
                return Err(DataError::NotFetched {
                    dataset: name,
                    path: plain,
                });
            }
            check_idx_size(&plain, ndim_of(f), name)?;
        }
    }
    let mut lens = [0; 2];
    let mut per_class = [[0; 10]; 2];
    let mut shape = (0, 0, 0);
    let (folder, md5s) = sources::official_md5s(root, dataset);
    for (i, split) in [Split::Train, Split::Test].into_iter().enumerate() {
        let raw = read_raw(root, dataset, split)?;
        lens[i] = raw.len;
        for &l in &raw.labels {
            per_class[i][l as usize] += 1;
        }
        shape = (raw.channels, raw.height, raw.width);
        let want = dataset.class_counts(split);
        if per_class[i] != want {
            return Err(DataError::corrupt(
                name,
                &folder,
                format!(
                    "has {} per-class counts {:?}, expected {:?}",
                    split.as_str(),
                    per_class[i],
                    want
                ),
            ));
        }
    }
    let side = dataset.stored_side();
    if shape != (dataset.channels(), side, side) {
        return Err(DataError::corrupt(
            name,
            &folder,
            format!(
                "has images of shape {shape:?}, expected ({}, {side}, {side})",
                dataset.channels()
            ),
        ));
    }
    for (file, want) in &md5s {
        let path = folder.join(file);
        match sources::md5_if_present(&path)? {
            Some(got) if &got == want => {}
            Some(got) => {
                return Err(DataError::corrupt(
                    name,
                    &path,
                    format!(
                        "differs from the official {name} release (MD5 {got}, {want} expected)"
                    ),
                ));
            }
            None => {
                return Err(DataError::NotFetched {
                    dataset: name,
                    path,
                });
            }
        }
    }
    Ok(VerifyReport {
        dataset,
        folder,
        lens,
        per_class,
        image_shape: shape,
        md5_checked: md5s.len(),
    })
}
