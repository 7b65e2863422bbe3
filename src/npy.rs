//! NumPy `.npy` files: the writer of the arrays rectiflow produces (little-endian float32
//! samples and int64 labels, format 1.0) and a small reader for the same two dtypes, so a host
//! can hand its own noise, batches or labels to the library and read back what the command line
//! wrote. Anything else (another dtype, big-endian data, Fortran order, a header that does not
//! parse, a body that disagrees with the header) is refused with the reason and, where there is
//! one, the NumPy call that converts it. Sizes a header claims are checked before anything that
//! large is allocated.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::limits::{checked_product, show_bytes, HOST_BUDGET_BYTES};
use std::io::Read;
use std::path::Path;

/// The element types rectiflow reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// Little-endian IEEE float32 (`<f4`): samples, images, noise.
    F32,
    /// Little-endian int64 (`<i8`): labels.
    I64,
}

impl Dtype {
    /// The `descr` string of the header.
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I64 => "<i8",
        }
    }

    fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::I64 => 8,
        }
    }
}

/// The values of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// float32 values.
    F32(Vec<f32>),
    /// int64 values.
    I64(Vec<i64>),
}

/// An array read from (or to be written to) a `.npy` file: its shape and its values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Npy {
    /// The array's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values, `shape.iter().product()` of them.
    pub data: NpyData,
}

impl Npy {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self.data {
            NpyData::F32(_) => Dtype::F32,
            NpyData::I64(_) => Dtype::I64,
        }
    }

    /// The float32 values, or a [`Error::Data`] naming `what` if the array holds int64.
    pub fn into_f32(self, what: &str) -> Result<Vec<f32>> {
        match self.data {
            NpyData::F32(v) => Ok(v),
            NpyData::I64(_) => Err(Error::Data(format!(
                "{what} holds int64 values where float32 ('<f4') are needed; convert with \
                 arr.astype(np.float32)"
            ))),
        }
    }

    /// The int64 values as class labels (`u32`), or a [`Error::Data`] naming `what` if the array
    /// holds float32 or a value outside `0..=u32::MAX`.
    pub fn into_labels(self, what: &str) -> Result<Vec<u32>> {
        match self.data {
            NpyData::I64(v) => v
                .iter()
                .enumerate()
                .map(|(i, &l)| {
                    u32::try_from(l).map_err(|_| {
                        Error::Data(format!(
                            "{what}: label {i} is {l}; labels are class numbers 0, 1, 2, ..."
                        ))
                    })
                })
                .collect(),
            NpyData::F32(_) => Err(Error::Data(format!(
                "{what} holds float32 values where int64 labels ('<i8') are needed; convert with \
                 arr.astype(np.int64)"
            ))),
        }
    }

    /// The file's bytes (format 1.0).
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.data {
            NpyData::F32(v) => f32_bytes(&self.shape, v),
            NpyData::I64(v) => i64_bytes(&self.shape, v),
        }
    }
}

/// The `.npy` (format 1.0) header for `descr` and `shape`, padded so the data starts at a
/// multiple of 64 bytes.
pub fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + length (2) + dict + newline: a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out
}

fn with_header(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = header(descr, shape);
    out.extend_from_slice(data);
    out
}

/// A little-endian float32 `.npy` file, in memory.
pub fn f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    with_header("<f4", shape, bytemuck::cast_slice(data))
}

/// A little-endian int64 `.npy` file, in memory.
pub fn i64_bytes(shape: &[usize], data: &[i64]) -> Vec<u8> {
    with_header("<i8", shape, bytemuck::cast_slice(data))
}

/// Write a float32 array atomically ([`crate::output::write_atomically`]).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    check_len(shape, data.len())?;
    crate::output::write_atomically(&[(path, &f32_bytes(shape, data))])
}

/// Write class labels as an int64 array `[n]`, atomically.
pub fn write_labels(path: &Path, labels: &[u32]) -> Result<()> {
    let values: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    crate::output::write_atomically(&[(path, &i64_bytes(&[labels.len()], &values))])
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if want != Some(len) {
        return Err(Error::Shape(format!(
            "an array of shape {shape:?} from {len} values"
        )));
    }
    Ok(())
}

/// Read a float32 or int64 `.npy` file of at most the host budget.
pub fn read(path: &Path) -> Result<Npy> {
    read_within(path, HOST_BUDGET_BYTES)
}

/// Read a float32 or int64 `.npy` file of at most `max_bytes`: a regular file, its size checked
/// before it is read, its header parsed and its body's length checked against the shape.
pub fn read_within(path: &Path, max_bytes: u64) -> Result<Npy> {
    let cannot = |e: std::io::Error| Error::Io(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Error::Data(format!(
            "{} is not a regular file (a device, a pipe or a directory); give the path of a .npy file",
            path.display()
        )));
    }
    if meta.len() > max_bytes {
        return Err(Error::TooLarge(format!(
            "{} has {}, more than the {} that may be read here",
            path.display(),
            show_bytes(meta.len()),
            show_bytes(max_bytes)
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded by the length seen, in case the file grows while it is read.
    file.take(meta.len())
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    parse(&bytes).map_err(|e| match e {
        Error::Data(m) => Error::Data(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parse a `.npy` file in memory (format 1.0, 2.0 or 3.0; `<f4` or `<i8`, C order).
pub fn parse(bytes: &[u8]) -> Result<Npy> {
    let bad = |why: String| Error::Data(format!("not a usable .npy file: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(
            "it does not start with the .npy magic \\x93NUMPY".into()
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => {
            return Err(bad(format!(
                "format version {major}.{minor} is not 1.0, 2.0 or 3.0"
            )))
        }
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "its header of {len} bytes runs past the end of the file"
            ))
        })?;
    let dict = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad("its header is not text".into()))?;
    let descr = dict_value(dict, "descr").ok_or_else(|| bad(format!("no 'descr' in {dict:?}")))?;
    let dtype = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => Dtype::F32,
        "<i8" => Dtype::I64,
        other => {
            return Err(Error::Data(format!(
                "the array's dtype is '{other}'; rectiflow reads little-endian float32 ('<f4') \
                 and int64 ('<i8') arrays: convert with arr.astype(np.float32) or \
                 arr.astype(np.int64)"
            )))
        }
    };
    match dict_value(dict, "fortran_order") {
        Some("False") => {}
        Some("True") => {
            return Err(Error::Data(
                "the array is stored in Fortran (column-major) order; save a C-ordered copy \
                 (np.save(path, np.ascontiguousarray(arr)))"
                    .into(),
            ))
        }
        _ => return Err(bad(format!("no valid 'fortran_order' in {dict:?}"))),
    }
    let shape_text =
        dict_value(dict, "shape").ok_or_else(|| bad(format!("no 'shape' in {dict:?}")))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(format!("the shape {shape_text} is not a tuple")))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(format!("the shape {shape_text} is not a tuple of sizes")))?;
    let body = &bytes[end..];
    let count = checked_product(shape.iter().map(|&d| d as u64));
    let want = count.and_then(|c| c.checked_mul(dtype.size()));
    if want != Some(body.len() as u64) {
        return Err(bad(format!(
            "the header promises {shape:?} values of {} bytes, the body has {} bytes (truncated \
             or corrupt)",
            dtype.size(),
            body.len()
        )));
    }
    let data = match dtype {
        Dtype::F32 => NpyData::F32(bytemuck::pod_collect_to_vec(body)),
        Dtype::I64 => NpyData::I64(bytemuck::pod_collect_to_vec(body)),
    };
    Ok(Npy { shape, data })
}

/// The text of `key`'s value in a header dictionary (`{'descr': '<f4', ...}`): up to the next
/// top-level comma (the shape's tuple kept whole).
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let at = quoted
        .iter()
        .find_map(|q| dict.find(q.as_str()).map(|i| i + q.len()))?;
    let rest = dict[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}
