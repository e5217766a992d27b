//! IDX files (the MNIST format; LeCun et al.), plain or gzipped: a magic number giving the
//! element type and rank, big-endian u32 dimensions, then the data in row-major order.
use crate::error::{value_error, Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    value_error("path", format!("{}: {msg}", path.display()))
}

/// Reads a uint8 IDX file (`.gz` or not) into a uint8 tensor of its shape.
pub fn read_idx(path: &Path) -> Result<Tensor> {
    let raw = std::fs::read(path).map_err(|e| bad(path, format!("cannot read ({e})")))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| bad(path, format!("corrupt gzip data ({e})")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|msg| bad(path, msg))
}

/// Parses IDX bytes; the error says what is wrong with them.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an IDX file (bad magic number)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!("element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", bytes[2]));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err("truncated header".into());
    }
    let dims: Vec<i64> = (0..rank).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as i64).collect();
    let numel: i64 = dims.iter().product();
    let data = &bytes[header..];
    if data.len() as i64 != numel {
        return Err(format!("header says {dims:?} ({numel} bytes of data) but the file holds {}", data.len()));
    }
    Tensor::f_from_data_size(data, &dims, Kind::Uint8).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let mut bytes = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend([1u8, 2, 3, 4, 5, 6]);
        let t = parse_idx(&bytes).unwrap();
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(Vec::<u8>::try_from(t.flatten(0, -1)).unwrap(), [1, 2, 3, 4, 5, 6]);
        assert!(parse_idx(&bytes[..bytes.len() - 1]).unwrap_err().contains("holds 5"));
        assert!(parse_idx(&[1, 2, 3]).unwrap_err().contains("magic"));
        assert!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap_err().contains("element type"));
    }
}
