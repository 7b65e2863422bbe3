//! Tiny training runs shared by the tests of the trainer, checkpoints, sampling, data and the
//! command line: a small configuration, a scratch directory, a mean loss over steps.

use rectiflow::data::{DataSpec, Dataset};
use rectiflow::flow::{Prediction, Schedule, TimeSampler};
use rectiflow::nn::ModelConfig;
use rectiflow::train::{ModelKind, TrainConfig, Trainer};
use std::path::PathBuf;

/// A small run of `kind` (`mlp`, `dit`, ...) `width` wide on `data`: 100 steps of 64.
pub fn config(data: &Dataset, kind: &str, width: usize) -> TrainConfig {
    TrainConfig {
        data: DataSpec::parse(&data.name).unwrap(),
        model: ModelConfig {
            kind: kind.into(),
            width,
            depth: 1,
            heads: 2,
            patch: 2,
            shape: data.shape.clone(),
            classes: data.classes,
            context_dim: 0,
        },
        schedule: Schedule::RectifiedFlow,
        prediction: Prediction::Velocity,
        preconditioning: Default::default(),
        weighting: None,
        t_sampler: TimeSampler::Uniform,
        steps: 100,
        batch: 64,
        lr: 3e-3,
        warmup: 10,
        ema_decay: 0.9,
        max_grad_norm: 1.0,
        label_dropout: 0.1,
        seed: 3,
        f16: false,
    }
}

/// A one-block DiT 16 wide on the 8x8 digits, batch 8, label dropout 0.3, seed 21.
pub fn tiny_dit() -> TrainConfig {
    let mut model = ModelKind::Dit.config(&[1, 8, 8], 10);
    (model.width, model.depth, model.heads) = (16, 1, 2);
    TrainConfig {
        batch: 8,
        seed: 21,
        label_dropout: 0.3,
        ..TrainConfig::new(DataSpec::Digits, model)
    }
}

/// A fresh scratch directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The mean loss over `steps` more steps.
pub fn mean_loss(tr: &mut Trainer, steps: usize) -> f32 {
    (0..steps)
        .map(|_| {
            tr.step().unwrap();
            tr.read_loss().unwrap()
        })
        .sum::<f32>()
        / steps as f32
}
