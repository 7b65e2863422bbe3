//! Checkpoints: one safetensors file holding the parameters (`params.NAME`), their EMA
//! (`ema.NAME`), the AdamW moments (`adam.m.NAME`, `adam.v.NAME`), with the step and the run's
//! resolved configuration (JSON) in the metadata. Written atomically: a temporary file in the same
//! directory, then a rename, so a run killed at any moment leaves the last complete checkpoint
//! (and a failed write removes its temporary file). Read defensively: only a regular file whose
//! size agrees with its header and fits a stated budget is read, and every value must be finite.
//! A file that is not a usable checkpoint is an [`Error::Checkpoint`] naming it and the reason.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::limits::{show_bytes, HOST_BUDGET_BYTES};
use crate::params::{FlatLayout, Params};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The value of the metadata key `format`.
pub const FORMAT: &str = "rectiflow-1";

/// Longest safetensors header read (the format's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// What a checkpoint holds, on the host, by parameter name.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Training steps taken.
    pub step: u64,
    /// The run's configuration as JSON.
    pub config: String,
    /// Each parameter's shape and values, by name.
    pub params: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// The EMA of each parameter's values.
    pub ema: HashMap<String, Vec<f32>>,
    /// AdamW's first moment of each parameter.
    pub adam_m: HashMap<String, Vec<f32>>,
    /// AdamW's second moment of each parameter.
    pub adam_v: HashMap<String, Vec<f32>>,
}

/// Host copies of each parameter's slice of a flat buffer, by name.
pub fn split_flat(params: &Params, flat: &[f32]) -> HashMap<String, Vec<f32>> {
    params
        .specs()
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            (s.name.clone(), flat[s.offset..s.offset + n].to_vec())
        })
        .collect()
}

/// The flat buffer (padding zero) for per-name values, checking every name and length.
pub fn join_flat(
    params: &impl FlatLayout,
    values: &HashMap<String, Vec<f32>>,
    what: &str,
    path: &Path,
) -> Result<Vec<f32>> {
    let mut flat = vec![0f32; params.flat_len()];
    for s in params.specs() {
        let n: usize = s.shape.iter().product();
        let v = values.get(&s.name).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: the checkpoint has no {what} for parameter {} (a different model?)",
                path.display(),
                s.name
            ))
        })?;
        if v.len() != n {
            return Err(Error::Checkpoint(format!(
                "{}: {what} of {} has {} values, the model needs {:?} = {n} (a different model size?)",
                path.display(),
                s.name,
                v.len(),
                s.shape
            )));
        }
        flat[s.offset..s.offset + n].copy_from_slice(v);
    }
    Ok(flat)
}

impl Checkpoint {
    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut entries: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (name, (shape, v)) in &self.params {
            entries.push((format!("params.{name}"), shape.clone(), v));
            for (prefix, map) in [
                ("ema", &self.ema),
                ("adam.m", &self.adam_m),
                ("adam.v", &self.adam_v),
            ] {
                if let Some(x) = map.get(name) {
                    entries.push((format!("{prefix}.{name}"), shape.clone(), x));
                }
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let views: Vec<(String, TensorView)> = entries
            .iter()
            .map(|(name, shape, data)| {
                let view =
                    TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                        .map_err(|e| Error::Checkpoint(format!("checkpoint tensor {name}: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), self.config.clone()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Checkpoint(format!("serialising the checkpoint: {e}")))?;
        crate::output::write_atomically(&[(path, &bytes)])
    }

    /// Read and check a checkpoint file of at most half the host budget.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        Checkpoint::load_within(path, HOST_BUDGET_BYTES / 2)
    }

    /// Read and check a checkpoint file of at most `max_bytes`. Refuses, before reading the
    /// body, anything but a regular file, a file larger than `max_bytes`, and a header length
    /// (the first 8 bytes, little-endian) beyond the file or [`MAX_HEADER_BYTES`]; then the
    /// safetensors structure, the metadata, the dtypes, and any value that is not finite.
    pub fn load_within(path: &Path, max_bytes: u64) -> Result<Checkpoint> {
        let bad = |why: String| {
            Error::Checkpoint(format!(
                "{} is not a usable rectiflow checkpoint: {why}",
                path.display()
            ))
        };
        let bytes = read_bounded(path, max_bytes, "checkpoint", &bad)?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e}")))?;
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "metadata format is {:?}, expected {FORMAT:?}",
                meta.get("format")
            )));
        }
        let step = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no step in the metadata".into()))?;
        let config = meta
            .get("config")
            .cloned()
            .ok_or_else(|| bad("no config in the metadata".into()))?;
        let mut ck = Checkpoint {
            step,
            config,
            params: HashMap::new(),
            ema: HashMap::new(),
            adam_m: HashMap::new(),
            adam_v: HashMap::new(),
        };
        for (name, view) in tensors.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name} is {:?}, not F32", view.dtype())));
            }
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "tensor {name} holds a non-finite value ({} at element {i}); it was damaged \
                     or written by a diverged run",
                    data[i]
                )));
            }
            if let Some(n) = name.strip_prefix("params.") {
                ck.params
                    .insert(n.to_string(), (view.shape().to_vec(), data));
            } else if let Some(n) = name.strip_prefix("ema.") {
                ck.ema.insert(n.to_string(), data);
            } else if let Some(n) = name.strip_prefix("adam.m.") {
                ck.adam_m.insert(n.to_string(), data);
            } else if let Some(n) = name.strip_prefix("adam.v.") {
                ck.adam_v.insert(n.to_string(), data);
            } else {
                return Err(bad(format!("unexpected tensor {name}")));
            }
        }
        Ok(ck)
    }
}

/// The bytes of a safetensors file (a `what`: a checkpoint, reflow pairs), read only once its
/// kind and sizes are known to be sane.
pub(crate) fn read_bounded(
    path: &Path,
    max_bytes: u64,
    what: &str,
    bad: &dyn Fn(String) -> Error,
) -> Result<Vec<u8>> {
    let cannot =
        |e: std::io::Error| Error::Io(format!("cannot read {what} {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(bad(format!(
            "it is not a regular file (a device, a pipe or a directory); give the path of a \
             {what} written by rectiflow"
        )));
    }
    let len = meta.len();
    if len < 8 {
        return Err(bad(format!(
            "it has {len} bytes, fewer than the 8-byte header length"
        )));
    }
    if len > max_bytes {
        return Err(Error::TooLarge(format!(
            "{what} {} has {}, more than the {} budget for a {what}",
            path.display(),
            show_bytes(len),
            show_bytes(max_bytes)
        )));
    }
    let mut head = [0u8; 8];
    file.read_exact(&mut head).map_err(cannot)?;
    let header = u64::from_le_bytes(head);
    if header > MAX_HEADER_BYTES || header > len - 8 {
        return Err(bad(format!(
            "its header length field says {header} bytes, but the file has {} bytes after it \
             (at most {MAX_HEADER_BYTES} are allowed): truncated or corrupt",
            len - 8
        )));
    }
    // The length was checked against the budget, so it fits a usize.
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&head);
    // Bounded by the length seen, in case the file grows while it is read.
    file.take(len - 8).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 != len {
        return Err(bad(format!(
            "it changed while being read ({len} bytes expected, {} read)",
            bytes.len()
        )));
    }
    Ok(bytes)
}
