//! Reflow and distillation (docs/flow-math.md, "Reflow and distillation"): the coupled pairs
//! `(eps, x0_hat, label)` a trained flow makes — noise, and where integrating the flow from it
//! lands — kept in a run directory as `pairs.safetensors`, and the new run that trains on them,
//! initialised from the flow that made them. A reflow trains on the pairs' straight lines
//! (`z_t = (1 - t) x0_hat + t eps`, target `eps - x0_hat`); a distillation does the same at
//! the starting times of a `k`-step grid only (time sampler `grid:K`), so that `k` Euler steps
//! land on `x0_hat`.
//!
//! Pairs are drawn in chunks of a fixed size, chunk `c`'s noise from stream
//! [`PAIR_NOISE_STREAM`] at step `c` of the seed (not the samplers' stream, so that the samples
//! `eval` draws are never the pairs' own noise), and the file is rewritten atomically after each chunk: a generation
//! killed at any moment continues where it stopped and makes the same pairs as one that was
//! not. What made the pairs (source checkpoint, its step and configuration, the sampler's
//! settings) is in the file's metadata; pairs made otherwise are never mixed.
#![warn(missing_docs)]

use crate::data::DataSpec;
use crate::error::{Error, Result};
use crate::limits::Budget;
use crate::nn::ModelConfig;
use crate::ops;
use crate::pairs::Pairs;
use crate::pipeline::{Pipeline, Weights};
use crate::sample::{check_sample_count, SampleOptions};
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The pairs' file in a reflow or distillation run directory.
pub const PAIRS_FILE: &str = "pairs.safetensors";

/// Philox stream of the pairs' noise: not the samplers' ([`crate::sample::NOISE_STREAM`]), so that samples
/// drawn to measure a flow trained on pairs never start from the noise it was trained on.
pub const PAIR_NOISE_STREAM: u32 = 8;

/// Most pairs one file holds.
pub const MAX_PAIRS: usize = 10_000_000;

/// What made a set of pairs. Two generations with equal settings make the same pairs, so a
/// generation continues a file only when these match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairSettings {
    /// The checkpoint the pairs were drawn from (as given).
    pub source: String,
    /// Its training step.
    pub source_step: u64,
    /// Its configuration (JSON).
    pub source_config: String,
    /// Which of its weights.
    pub weights: Weights,
    /// Pairs in all.
    pub pairs: usize,
    /// Pairs per chunk (one sampler run, one rewrite of the file).
    pub chunk: usize,
    /// How the flow was integrated (its `labels` are unused: pair `i` gets label `i % K`).
    pub sample: SampleOptions,
}

impl PairSettings {
    /// Check the counts (the sampler's options are checked when it starts).
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_PAIRS).contains(&self.pairs) {
            return Err(Error::Config(format!(
                "--pairs {}: draw 1..={MAX_PAIRS} pairs",
                self.pairs
            )));
        }
        if self.chunk == 0 {
            return Err(Error::Config("a chunk of 0 pairs: use at least 1".into()));
        }
        Ok(())
    }

    /// Refuse chunks the device cannot sample at once (one chunk is one sampler run).
    pub fn check_fits(&self, model: &ModelConfig, budget: &Budget) -> Result<()> {
        check_sample_count(model, self.chunk.min(self.pairs), budget).map_err(|e| {
            Error::TooLarge(format!(
                "pairs in chunks of {} (--pair-chunk): {e}",
                self.chunk
            ))
        })
    }

    /// What differs between these settings and `made` (the number of pairs aside), as
    /// `name: made -> these`.
    pub fn differences(&self, made: &PairSettings) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(made).expect("the settings serialise"),
            serde_json::to_value(self).expect("the settings serialise"),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, new) in b {
            if key == "pairs" {
                continue;
            }
            match (a.get(key), new) {
                (Some(serde_json::Value::Object(x)), serde_json::Value::Object(y)) => {
                    for (k, v) in y {
                        if x.get(k) != Some(v) {
                            let old = x.get(k).map_or("none".into(), |o| o.to_string());
                            out.push(format!("{key}.{k}: {old} -> {v}"));
                        }
                    }
                }
                (old, new) if old != Some(new) => {
                    let old = old.map_or("none".into(), |o| o.to_string());
                    let text = |v: String| {
                        if v.len() > 60 {
                            "(a configuration)".to_string()
                        } else {
                            v
                        }
                    };
                    out.push(format!("{key}: {} -> {}", text(old), text(new.to_string())));
                }
                _ => {}
            }
        }
        out
    }

    /// The JSON text a pairs file keeps.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the settings serialise")
    }

    /// Whether the pairs made with the settings `made` (a pairs file's JSON) are the first
    /// pairs these settings make: everything but the number of pairs equal.
    pub fn continues(&self, made: &str) -> bool {
        serde_json::from_str::<PairSettings>(made).is_ok_and(|m| {
            PairSettings {
                pairs: self.pairs,
                ..m
            } == *self
        })
    }
}

/// Draw the pairs `settings` asks for from `source` into `path`, continuing the pairs already
/// there (made with the same settings; other pairs are refused, naming what differs), one chunk
/// at a time, the file rewritten after each. `progress(done, total)` is called after every
/// chunk. Returns every pair.
pub fn generate_pairs(
    source: &Pipeline,
    settings: &PairSettings,
    path: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<Pairs> {
    settings.validate()?;
    let shape = source.example_shape().to_vec();
    let classes = source.classes();
    let mut pairs = if path.exists() {
        let old = Pairs::load(path)?;
        let matches = settings.continues(&old.settings);
        if !matches || old.shape != shape || old.classes != classes {
            let what = match serde_json::from_str::<PairSettings>(&old.settings) {
                Ok(made) => settings.differences(&made).join(", "),
                Err(_) => "settings this version does not read".into(),
            };
            let what = if what.is_empty() {
                format!(
                    "examples of shape {:?} with {} classes",
                    old.shape, old.classes
                )
            } else {
                what
            };
            return Err(Error::Config(format!(
                "{} holds pairs made with other settings ({what}); use another --out, or \
                 --overwrite to draw them again",
                path.display()
            )));
        }
        Pairs {
            settings: settings.to_json(),
            ..old
        }
    } else {
        Pairs::empty(settings.to_json(), &shape, classes)
    };
    let dim: usize = shape.iter().product();
    let (total, chunk) = (settings.pairs, settings.chunk);
    settings.check_fits(source.model_config(), &Budget::of(source.gpu()))?;
    // Continue at the first chunk not complete; a partial last chunk is drawn again whole
    // (unless the pairs are all there).
    let mut start = if pairs.len() >= total {
        total
    } else {
        pairs.len() / chunk * chunk
    };
    pairs.noise.truncate(start * dim);
    pairs.samples.truncate(start * dim);
    pairs.labels.truncate(start);
    progress(start, total);
    while start < total {
        let n = chunk.min(total - start);
        let labels: Vec<u32> = (start..start + n)
            .map(|i| if classes > 0 { (i % classes) as u32 } else { 0 })
            .collect();
        let opts = SampleOptions {
            labels: labels.clone(),
            ..settings.sample.clone()
        };
        let mut noise_shape = vec![n];
        noise_shape.extend(&shape);
        let step = u32::try_from(start / chunk).map_err(|_| {
            Error::Config(format!(
                "{total} pairs in chunks of {chunk}: too many chunks"
            ))
        })?;
        let noise = ops::random_normal(
            source.gpu(),
            n * dim,
            settings.sample.seed,
            step,
            PAIR_NOISE_STREAM,
        )?
        .reshape(&noise_shape)?;
        let samples = source.sampler_from_noise(&noise, &opts)?.finish()?;
        let samples = samples.to_vec()?;
        if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "pair {} of the source flow is not finite ({} at element {i}); the {} pairs \
                 before it are kept in {}",
                start + i / dim,
                samples[i],
                start,
                path.display()
            )));
        }
        pairs.noise.extend(noise.to_vec()?);
        pairs.samples.extend(samples);
        pairs
            .labels
            .extend(labels.iter().map(|&l| if classes > 0 { l } else { 0 }));
        pairs.save(path)?;
        start += n;
        progress(start, total);
    }
    Ok(pairs)
}

/// Longest chain of reflows [`original_config`] follows.
const MAX_REFLOWS: usize = 32;

/// The configuration of the run that trained on real data at the root of `config`'s chain of
/// reflows: a flow trained on `pairs:` data was trained to model what the pairs' source flow
/// modelled, and so on back (a `k`-rectified flow's pairs come from a `(k-1)`-rectified one).
/// Its `data` and `seed` say what samples are measured against. `config` itself when it did
/// not train on pairs.
pub fn original_config(config: &TrainConfig) -> Result<TrainConfig> {
    let mut current = config.clone();
    for _ in 0..MAX_REFLOWS {
        let DataSpec::Pairs(path) = &current.data else {
            return Ok(current);
        };
        let pairs = Pairs::load(path)?;
        let settings: PairSettings = serde_json::from_str(&pairs.settings).map_err(|e| {
            Error::Data(format!(
                "the pairs in {} do not say what made them ({e}); the data they model is unknown",
                path.display()
            ))
        })?;
        current = TrainConfig::from_json(&settings.source_config)?;
    }
    Err(Error::Data(format!(
        "more than {MAX_REFLOWS} reflows lead back from the data {}; is a pairs file its own source?",
        config.data
    )))
}
