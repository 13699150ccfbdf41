//! Files written so that a crash never leaves one that looks good.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))
}

/// A temporary file next to `final_path`, named `.NAME.XXXXXX.tmp`; renamed
/// into place by [`persist`], deleted if dropped.
pub(crate) fn temp_beside(final_path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = final_path.parent().unwrap_or(Path::new("."));
    create_dir(dir)?;
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // tempfile creates 0600 files; data files are for every user to read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| DataError::io(dir, e))
}

/// Flushes `tmp` to disk and renames it to `final_path`.
pub(crate) fn persist(mut tmp: tempfile::NamedTempFile, final_path: &Path) -> Result<()> {
    tmp.flush().map_err(|e| DataError::io(final_path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| DataError::io(final_path, e))?;
    tmp.persist(final_path)
        .map_err(|e| DataError::io(final_path, e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).map_err(|e| DataError::io(path, e))?;
    persist(tmp, path)
}

/// A staging folder next to `final_dir` (`.NAME.XXXXXX`), removed when
/// dropped unless renamed into place by the caller.
pub(crate) fn staging_dir(final_dir: &Path) -> Result<tempfile::TempDir> {
    let parent = final_dir.parent().unwrap_or(Path::new("."));
    create_dir(parent)?;
    let name = final_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(parent)
        .map_err(|e| DataError::io(parent, e))
}

/// Moves a finished staging folder to `final_dir`, replacing an incomplete
/// one that may be there.
pub(crate) fn install_dir(staged: tempfile::TempDir, final_dir: &Path) -> Result<()> {
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(|e| DataError::io(final_dir, e))?;
    }
    let path: PathBuf = staged.keep();
    std::fs::rename(&path, final_dir).map_err(|e| DataError::io(final_dir, e))
}

/// Lowercase hex MD5 of a file, read in chunks.
pub fn md5_file(path: &Path) -> Result<String> {
    hash_file::<md5::Md5>(path).map(|d| hex(&d))
}

/// Lowercase hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    hash_file::<sha2::Sha256>(path).map(|d| hex(&d))
}

fn hash_file<D: md5::Digest>(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_vec())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex MD5 of bytes in memory.
pub fn md5_bytes(bytes: &[u8]) -> String {
    use md5::Digest;
    hex(&md5::Md5::digest(bytes))
}
