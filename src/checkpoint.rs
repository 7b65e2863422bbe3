//! Checkpoints: one safetensors file holding the parameters (`params.NAME`), their EMA
//! (`ema.NAME`), the AdamW moments (`adam.m.NAME`, `adam.v.NAME`), with the step and the run's
//! resolved configuration (JSON) in the metadata. Written atomically: a temporary file in the same
//! directory, then a rename, so a run killed at any moment leaves the last complete checkpoint.

use crate::error::{Error, Result};
use crate::params::Params;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// The value of the metadata key `format`.
pub const FORMAT: &str = "rectiflow-1";

/// What a checkpoint holds, on the host, by parameter name.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    /// The run's configuration as JSON.
    pub config: String,
    pub params: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub ema: HashMap<String, Vec<f32>>,
    pub adam_m: HashMap<String, Vec<f32>>,
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
    params: &Params,
    values: &HashMap<String, Vec<f32>>,
    what: &str,
    path: &Path,
) -> Result<Vec<f32>> {
    let mut flat = vec![0f32; params.values().numel()];
    for s in params.specs() {
        let n: usize = s.shape.iter().product();
        let v = values.get(&s.name).ok_or_else(|| {
            Error::Io(format!(
                "{}: the checkpoint has no {what} for parameter {} (a different model?)",
                path.display(),
                s.name
            ))
        })?;
        if v.len() != n {
            return Err(Error::Io(format!(
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
                let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                    .map_err(|e| Error::Io(format!("checkpoint tensor {name}: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), self.config.clone()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Io(format!("serialising the checkpoint: {e}")))?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes)
            .map_err(|e| Error::Io(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::Io(format!("cannot move {} into place: {e}", tmp.display())))
    }

    /// Read and check a checkpoint file.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read checkpoint {}: {e}", path.display())))?;
        let bad = |why: String| {
            Error::Io(format!(
                "{} is not a usable rectiflow checkpoint: {why}",
                path.display()
            ))
        };
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
