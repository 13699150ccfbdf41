//! The IDX file format of MNIST and FashionMNIST.
//!
//! An IDX file of unsigned bytes starts with the magic number `00 00 08 nd`
//! (`nd` dimensions), then `nd` big-endian `u32` sizes, then the data in C
//! order. Images are `(N, 28, 28)` (`nd = 3`), labels `(N,)` (`nd = 1`).

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// The IDX type code of unsigned bytes.
pub const IDX_UBYTE: u8 = 0x08;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Sizes, outermost first.
    pub dims: Vec<usize>,
    /// The values in C order.
    pub data: Vec<u8>,
}

/// Encodes `data` of shape `dims` as IDX bytes.
///
/// # Panics
/// If `data.len()` is not the product of `dims`, or there are more than 255
/// dimensions or a size beyond `u32`.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    assert_eq!(
        dims.iter().product::<usize>(),
        data.len(),
        "IDX data does not match its shape"
    );
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[
        0,
        0,
        IDX_UBYTE,
        u8::try_from(dims.len()).expect("at most 255 dims"),
    ]);
    for &d in dims {
        out.extend_from_slice(&u32::try_from(d).expect("IDX sizes fit u32").to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Parses the header of IDX bytes: returns the dims and the header length.
fn parse_header(
    bytes: &[u8],
    ndim: Option<usize>,
) -> std::result::Result<(Vec<usize>, usize), String> {
    if bytes.len() < 4
        || bytes[0] != 0
        || bytes[1] != 0
        || bytes[2] != IDX_UBYTE
        || !(1..=3).contains(&bytes[3])
    {
        let magic: String = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let magic = if magic.is_empty() {
            "missing".to_string()
        } else {
            magic
        };
        return Err(format!(
            "is not an IDX file of bytes (magic number {magic})"
        ));
    }
    let nd = bytes[3] as usize;
    if let Some(want) = ndim
        && nd != want
    {
        return Err(format!("has {nd} dimensions, {want} expected"));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err("is truncated (header incomplete)".to_string());
    }
    let dims = (0..nd)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    Ok((dims, header))
}

/// Decodes IDX bytes, checking magic number, rank (if `ndim` is given) and
/// that the length is exactly what the header says. `path` and `dataset` only
/// name the file in the error.
pub fn decode_idx(
    bytes: Vec<u8>,
    ndim: Option<usize>,
    path: &Path,
    dataset: &'static str,
) -> Result<IdxArray> {
    let (dims, header) =
        parse_header(&bytes, ndim).map_err(|what| DataError::corrupt(dataset, path, what))?;
    let expected = header + dims.iter().product::<usize>();
    if bytes.len() != expected {
        let state = if bytes.len() < expected {
            "truncated"
        } else {
            "longer than its header says"
        };
        return Err(DataError::corrupt(
            dataset,
            path,
            format!(
                "is {state} ({} bytes, {expected} expected for shape {dims:?})",
                bytes.len()
            ),
        ));
    }
    let mut data = bytes;
    data.drain(..header);
    Ok(IdxArray { dims, data })
}

/// Reads a file whole, gunzipping it when its name ends in `.gz`.
pub(crate) fn read_maybe_gzip(path: &Path, dataset: &'static str) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        gunzip(&raw, path, dataset)
    } else {
        Ok(raw)
    }
}

/// Decompresses gzip bytes; `path` names the file in the error.
pub(crate) fn gunzip(raw: &[u8], path: &Path, dataset: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .read_to_end(&mut out)
        .map_err(|e| {
            DataError::corrupt(dataset, path, format!("is not a valid gzip file ({e})"))
        })?;
    Ok(out)
}

/// Reads an IDX file (`.gz` or not) with the checks of [`decode_idx`].
pub fn read_idx(path: &Path, ndim: Option<usize>, dataset: &'static str) -> Result<IdxArray> {
    decode_idx(read_maybe_gzip(path, dataset)?, ndim, path, dataset)
}

/// Checks the header and size of an uncompressed IDX file without reading
/// its data.
pub(crate) fn check_idx_size(path: &Path, ndim: usize, dataset: &'static str) -> Result<()> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| DataError::io(path, e))?;
    let size = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len() as usize;
    let (dims, header) =
        parse_header(&head, Some(ndim)).map_err(|what| DataError::corrupt(dataset, path, what))?;
    let expected = header + dims.iter().product::<usize>();
    if size != expected {
        return Err(DataError::corrupt(
            dataset,
            path,
            format!("has {size} bytes, {expected} expected for shape {dims:?} (truncated?)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x-idx3-ubyte")
    }

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..24).collect();
        let bytes = encode_idx(&[2, 3, 4], &data);
        assert_eq!(&bytes[..4], &[0, 0, 8, 3]);
        let arr = decode_idx(bytes, Some(3), p(), "MNIST").unwrap();
        assert_eq!(arr.dims, vec![2, 3, 4]);
        assert_eq!(arr.data, data);
    }

    fn err(bytes: Vec<u8>, ndim: Option<usize>) -> String {
        decode_idx(bytes, ndim, p(), "MNIST")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn corrupt_inputs_give_one_line_errors() {
        let good = encode_idx(&[2, 2], &[1, 2, 3, 4]);
        let mut bad_magic = good.clone();
        bad_magic[2] = 0x0d;
        let cases = [
            (bad_magic, None, "magic number 00000d02"),
            (good.clone(), Some(3), "has 2 dimensions, 3 expected"),
            (good[..6].to_vec(), None, "header incomplete"),
            (
                good[..14].to_vec(),
                None,
                "is truncated (14 bytes, 16 expected",
            ),
            (
                [good.clone(), vec![9]].concat(),
                None,
                "longer than its header says",
            ),
            (vec![], None, "magic number missing"),
        ];
        for (bytes, ndim, want) in cases {
            let msg = err(bytes, ndim);
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert!(msg.contains("relperf-data fetch MNIST"), "{msg}");
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn gzip_and_bad_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-idx1-ubyte.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &encode_idx(&[3], &[7, 8, 9])).unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        assert_eq!(
            read_idx(&path, Some(1), "MNIST").unwrap().data,
            vec![7, 8, 9]
        );
        std::fs::write(&path, b"not gzip at all").unwrap();
        let msg = read_idx(&path, Some(1), "MNIST").unwrap_err().to_string();
        assert!(msg.contains("is not a valid gzip file"), "{msg}");
    }

    #[test]
    fn size_check_reads_only_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-idx3-ubyte");
        let bytes = encode_idx(&[1, 2, 2], &[1, 2, 3, 4]);
        std::fs::write(&path, &bytes).unwrap();
        check_idx_size(&path, 3, "MNIST").unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let msg = check_idx_size(&path, 3, "MNIST").unwrap_err().to_string();
        assert!(msg.contains("has 19 bytes, 20 expected"), "{msg}");
    }
}
