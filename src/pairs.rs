//! The reflow pairs file (`pairs.safetensors`): coupled `(noise, sample, label)` triples — a
//! trained flow integrated from `noise` lands on `sample` — as the data a reflow or a
//! distillation trains on ([`crate::reflow`] draws them). Safetensors with tensors `noise` and
//! `samples` `[N, ...shape]` and `labels` `[N]` (f32 class numbers), and in the metadata the
//! format, the number of classes and the settings that made the pairs (JSON, opaque here). Read
//! defensively like a checkpoint: bounded, shapes that pair up, finite values, labels in range.
#![warn(missing_docs)]

use crate::checkpoint::read_bounded;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::limits::HOST_BUDGET_BYTES;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// The value of the metadata key `format` of a pairs file.
pub const PAIRS_FORMAT: &str = "rectiflow-pairs-1";

/// Pairs on the host: `noise[i]` integrated by the source flow lands on `samples[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pairs {
    /// What made them (JSON; see `crate::reflow::PairSettings`).
    pub settings: String,
    /// Shape of one example (`[C, H, W]` or `[D]`).
    pub shape: Vec<usize>,
    /// Classes of the source model (0: unconditional).
    pub classes: usize,
    /// `[N * dim]` standard-normal noise.
    pub noise: Vec<f32>,
    /// `[N * dim]` where the flow took it.
    pub samples: Vec<f32>,
    /// `[N]` the class each pair was drawn for (the null class, `classes`, when unconditional).
    pub labels: Vec<u32>,
}

impl Pairs {
    /// No pairs yet, for these settings and examples of `shape` with `classes` classes.
    pub fn empty(settings: String, shape: &[usize], classes: usize) -> Pairs {
        Pairs {
            settings,
            shape: shape.to_vec(),
            classes,
            noise: Vec::new(),
            samples: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pairs as a data set to train on (`name`, e.g. `pairs:PATH`): the examples are the
    /// samples, each coupled with its noise.
    pub fn to_dataset(&self, name: &str) -> Dataset {
        Dataset {
            name: name.into(),
            shape: self.shape.clone(),
            x: self.samples.clone(),
            labels: (self.classes > 0).then(|| self.labels.clone()),
            classes: self.classes,
            noise: Some(self.noise.clone()),
        }
    }

    /// Write to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let mut shape = vec![n];
        shape.extend(&self.shape);
        let labels: Vec<f32> = self.labels.iter().map(|&l| l as f32).collect();
        let tensors: [(&str, Vec<usize>, &[f32]); 3] = [
            ("noise", shape.clone(), &self.noise),
            ("samples", shape, &self.samples),
            ("labels", vec![n], &labels),
        ];
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                    .map_err(|e| Error::Data(format!("pairs tensor {name}: {e}")))?;
                Ok((name.to_string(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("format".to_string(), PAIRS_FORMAT.to_string()),
            ("settings".to_string(), self.settings.clone()),
            ("classes".to_string(), self.classes.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Data(format!("serialising the pairs: {e}")))?;
        crate::output::write_atomically(&[(path, &bytes)])
    }

    /// Read and check a pairs file: its format, settings, tensor shapes (noise and samples
    /// alike, one label per pair, labels within the classes) and that every value is finite.
    pub fn load(path: &Path) -> Result<Pairs> {
        let bad = |why: String| {
            Error::Data(format!(
                "{} is not a usable pairs file: {why}",
                path.display()
            ))
        };
        let bytes = read_bounded(path, HOST_BUDGET_BYTES / 2, "pairs file", &bad)?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(PAIRS_FORMAT) {
            return Err(bad(format!(
                "metadata format is {:?}, expected {PAIRS_FORMAT:?}",
                meta.get("format")
            )));
        }
        let settings = meta
            .get("settings")
            .cloned()
            .ok_or_else(|| bad("its settings are missing".into()))?;
        let classes: usize = meta
            .get("classes")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("the number of classes is missing".into()))?;
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let view = tensors
                .tensor(name)
                .map_err(|_| bad(format!("it has no tensor {name:?}")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name} is {:?}, not F32", view.dtype())));
            }
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "tensor {name} holds {} at element {i}",
                    data[i]
                )));
            }
            Ok((view.shape().to_vec(), data))
        };
        let (noise_shape, noise) = read("noise")?;
        let (sample_shape, samples) = read("samples")?;
        let (label_shape, label_values) = read("labels")?;
        let n = noise_shape.first().copied().unwrap_or(0);
        if noise_shape != sample_shape || noise_shape.len() < 2 || label_shape != [n] {
            return Err(bad(format!(
                "noise {noise_shape:?}, samples {sample_shape:?} and labels {label_shape:?} do \
                 not pair up"
            )));
        }
        let elems = noise_shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if elems != Some(noise.len()) || noise_shape[1..].contains(&0) {
            return Err(bad(format!(
                "tensor noise of shape {noise_shape:?} holds {} values",
                noise.len()
            )));
        }
        let mut labels = Vec::with_capacity(n);
        for (i, &l) in label_values.iter().enumerate() {
            if l < 0.0 || l.fract() != 0.0 || l as usize > classes {
                return Err(bad(format!(
                    "pair {i} has label {l}, outside 0..={classes}"
                )));
            }
            labels.push(l as u32);
        }
        Ok(Pairs {
            settings,
            shape: noise_shape[1..].to_vec(),
            classes,
            noise,
            samples,
            labels,
        })
    }
}
