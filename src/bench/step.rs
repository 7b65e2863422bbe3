//! Whole training steps and sampling: time per step measured over repeated steps (which run
//! back to back, one submission each, as in training), then one profiled pass that says where
//! the time goes, kernel by kernel.

use super::Options;
use crate::data::{self, DataSpec, Dataset};
use crate::error::{Error, Result};
use crate::gpu::{KernelTotal, ProfileMethod};
use crate::nn::ModelConfig;
use crate::sample::{sample as draw, SampleOptions};
use crate::train::{TrainConfig, Trainer};
use crate::Gpu;
use serde::Serialize;
use std::time::Instant;

/// A benchmark workload: a model, its data and batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    pub description: &'static str,
    /// `mlp` (on `toy:checkerboard`) or `dit` (on the embedded digits).
    pub kind: &'static str,
    pub width: usize,
    pub depth: usize,
    pub patch: usize,
    pub batch: usize,
}

/// The workloads of `rectiflow bench step`, the networks of the PyTorch peer benchmark
/// (`scripts/torch_bench.py`; the MLP adds the velocity network's time embedding, 64 -> 256).
pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "mlp",
        description: "MLP 2-256-256-256-2 (+ time embedding), toy:checkerboard, batch 4096",
        kind: "mlp",
        width: 256,
        depth: 2,
        patch: 1,
        batch: 4096,
    },
    Workload {
        name: "dit-default",
        description: "default DiT: 8x8 digits, patch 2, width 64, 4 blocks, 4 heads, batch 64",
        kind: "dit",
        width: 64,
        depth: 4,
        patch: 2,
        batch: 64,
    },
    Workload {
        name: "dit-digits",
        description: "ref-dit-digits: 8x8 digits, patch 1, width 128, 4 blocks, 4 heads, batch 128",
        kind: "dit",
        width: 128,
        depth: 4,
        patch: 1,
        batch: 128,
    },
];

impl Workload {
    /// The workload called `name`.
    pub fn named(name: &str) -> Result<Workload> {
        WORKLOADS
            .into_iter()
            .find(|w| w.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
                Error::Config(format!(
                    "unknown workload {name:?}: use one of {}",
                    names.join(", ")
                ))
            })
    }

    fn data(&self) -> Result<Dataset> {
        if self.kind == "mlp" {
            data::toy("checkerboard", 100_000, 0)
        } else {
            data::digits()
        }
    }

    fn config(&self, data: &Dataset) -> Result<TrainConfig> {
        let model = ModelConfig {
            kind: self.kind.into(),
            width: self.width,
            depth: self.depth,
            heads: 4,
            patch: self.patch,
            shape: data.shape.clone(),
            classes: data.classes,
            context_dim: 0,
        };
        Ok(TrainConfig {
            steps: u64::MAX,
            batch: self.batch,
            lr: 1e-3,
            warmup: 10,
            ..TrainConfig::new(DataSpec::parse(&data.name)?, model)
        })
    }
}

/// Time per kernel in a profiled pass, per step.
#[derive(Clone, Debug, Serialize)]
pub struct KernelShare {
    pub kernel: String,
    pub dispatches: usize,
    pub ms: f64,
    pub share: f64,
    pub gflops: Option<f64>,
    pub gbs: Option<f64>,
}

/// `totals` per step (`per` steps profiled), each with its share of `whole` seconds.
fn shares(totals: Vec<KernelTotal>, per: f64, whole: f64) -> Vec<KernelShare> {
    totals
        .into_iter()
        .map(|t| KernelShare {
            gflops: t.gflops(),
            // Bytes per second say something only of kernels that do no arithmetic to speak of.
            gbs: t.gflops().is_none().then(|| t.gbs()).flatten(),
            dispatches: (t.dispatches as f64 / per).round() as usize,
            ms: t.seconds / per * 1e3,
            share: t.seconds / whole,
            kernel: t.kernel,
        })
        .collect()
}

/// One training workload, measured.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub workload: String,
    pub description: String,
    /// Wall time per step, steps running back to back.
    pub ms_per_step: f64,
    pub samples_per_second: f64,
    pub dispatches_per_step: u64,
    /// Buffers the pool created per step after the first steps (0: a step allocates nothing).
    pub buffers_created_per_step: f64,
    pub profile_method: String,
    /// The profiled pass's kernel time per step (profiling submits differently, so this is a
    /// guide to shares, not a second measurement of the step).
    pub profiled_ms_per_step: f64,
    pub kernels: Vec<KernelShare>,
    /// The matmul dispatches by design and shape (as dispatched: folded batches, K slices and
    /// transposed narrow outputs show as such); shares of the whole profile.
    pub matmul_shapes: Vec<KernelShare>,
}

/// Train `workload` for a few steps: wall time per step, dispatches and buffers per step, and a
/// profile by kernel.
pub fn step(gpu: &Gpu, workload: Workload, opts: &Options) -> Result<StepReport> {
    let data = workload.data()?;
    let config = TrainConfig {
        f16: opts.f16,
        ..workload.config(&data)?
    };
    let mut tr = Trainer::new(gpu, config, &data)?;
    // Compile every pipeline and fill the pool.
    for _ in 0..3 {
        tr.step()?;
    }
    tr.read_loss()?;
    let heavy = workload.name == "dit-digits";
    let n = match (opts.quick, heavy) {
        (true, true) => 2,
        (true, false) | (false, true) => 5,
        (false, false) => 20,
    };
    let (created, dispatched) = (gpu.pool_stats().created, gpu.dispatch_count());
    let start = Instant::now();
    for _ in 0..n {
        tr.step()?;
    }
    tr.read_loss()?;
    let secs = start.elapsed().as_secs_f64() / n as f64;
    let dispatches = (gpu.dispatch_count() - dispatched) / n as u64;
    let buffers = (gpu.pool_stats().created - created) as f64 / n as f64;
    let profiled = if heavy { 1 } else { 3 };
    gpu.start_profile()?;
    for _ in 0..profiled {
        tr.step()?;
    }
    let profile = gpu
        .finish_profile()?
        .ok_or_else(|| Error::Gpu("the profile was not recorded".into()))?;
    Ok(StepReport {
        workload: workload.name.into(),
        description: format!("{}{}", workload.description, f16_note(opts)),
        ms_per_step: secs * 1e3,
        samples_per_second: workload.batch as f64 / secs,
        dispatches_per_step: dispatches,
        buffers_created_per_step: buffers,
        profile_method: profile.method.to_string(),
        profiled_ms_per_step: profile.total_seconds() / profiled as f64 * 1e3,
        kernels: shares(
            profile.by_kernel(),
            profiled as f64,
            profile.total_seconds(),
        ),
        matmul_shapes: shares(
            profile.by_matmul_shape(),
            profiled as f64,
            profile.total_seconds(),
        ),
    })
}

/// What a description adds when the weights are f16.
fn f16_note(opts: &Options) -> &'static str {
    if opts.f16 {
        ", f16 weights"
    } else {
        ""
    }
}

/// Sampling, measured.
#[derive(Clone, Debug, Serialize)]
pub struct SampleReport {
    pub description: String,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub dispatches: u64,
    pub profile_method: String,
    pub kernels: Vec<KernelShare>,
    /// As in [`StepReport::matmul_shapes`].
    pub matmul_shapes: Vec<KernelShare>,
}

/// Draw 500 digits (100 with `quick`) from the default DiT at 20 Euler steps with guidance 2
/// (one doubled batch), the sampling of `rectiflow eval`; the weights are the initial ones
/// (timing does not depend on them).
pub fn sample(gpu: &Gpu, opts: &Options) -> Result<SampleReport> {
    let workload = WORKLOADS[1];
    let data = workload.data()?;
    let config = TrainConfig {
        f16: opts.f16,
        ..workload.config(&data)?
    };
    let tr = Trainer::new(gpu, config, &data)?;
    let n = if opts.quick { 100 } else { 500 };
    let classes = data.classes;
    // 20 Euler steps from seed 0, guided.
    let options = SampleOptions {
        cfg: 2.0,
        ..SampleOptions::new((0..n).map(|i| (i % classes) as u32).collect())
    };
    let dim = data.dim();
    let run = || -> Result<()> {
        draw(
            &tr.model,
            &tr.params,
            &tr.flow,
            dim,
            classes as u32,
            &options,
        )?
        .to_vec()?;
        Ok(())
    };
    run()?; // compile, fill the pool
    let dispatched = gpu.dispatch_count();
    let start = Instant::now();
    run()?;
    let secs = start.elapsed().as_secs_f64();
    let dispatches = gpu.dispatch_count() - dispatched;
    gpu.start_profile()?;
    run()?;
    let profile = gpu
        .finish_profile()?
        .ok_or_else(|| Error::Gpu("the profile was not recorded".into()))?;
    Ok(SampleReport {
        description: format!(
            "{n} digits from the default DiT, 20 Euler steps, guidance 2 (one doubled batch){}",
            f16_note(opts)
        ),
        seconds: secs,
        samples_per_second: n as f64 / secs,
        dispatches,
        profile_method: profile.method.to_string(),
        kernels: shares(profile.by_kernel(), 1.0, profile.total_seconds()),
        matmul_shapes: shares(profile.by_matmul_shape(), 1.0, profile.total_seconds()),
    })
}

/// A profile's kernel table, as Markdown.
pub fn format_kernels(kernels: &[KernelShare]) -> String {
    let mut s = format!(
        "| {:<44} | {:>10} | {:>9} | {:>6} | {:>8} | {:>7} |\n",
        "kernel", "dispatches", "ms", "share", "GFLOP/s", "GB/s"
    );
    s += &format!(
        "|{:-<46}|{:->12}|{:->11}|{:->8}|{:->10}|{:->9}|\n",
        "", "", "", "", "", ""
    );
    for k in kernels {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
        s += &format!(
            "| {:<44} | {:>10} | {:>9.2} | {:>5.1}% | {:>8} | {:>7} |\n",
            k.kernel,
            k.dispatches,
            k.ms,
            100.0 * k.share,
            f(k.gflops),
            f(k.gbs)
        );
    }
    s
}

/// Whether `method` is the fallback (worth saying beside the table).
pub fn is_fallback(method: &str) -> bool {
    method == ProfileMethod::WallClock.to_string()
}
