//! Benchmarks: the kernels, a whole training step and sampling, measured on the adapter in use
//! beside a CPU reference timed in the same run. One implementation behind both entry points,
//! `rectiflow bench` (for a user with the binary on a new GPU) and `cargo bench --bench kernels`.
//!
//! Every GPU figure is a median over batches of many calls recorded into one submission, so the
//! driver's per-dispatch cost is included as in real use. Matmuls are compared with the
//! `matrixmultiply` crate's sgemm on all cores, memory-bound kernels with the same loop in plain
//! Rust and with the host's memcpy bandwidth (the machine's memory ceiling).

mod kernels;
mod step;

pub use kernels::kernels;
pub use step::{
    format_kernels, is_fallback, sample, step, KernelShare, SampleReport, StepReport, Workload,
    WORKLOADS,
};

use crate::{Gpu, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long and how widely to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Shorter timing budgets and fewer shapes (a quick look, noisier figures).
    pub quick: bool,
    /// Matmul tile shapes compared at one size instead of the kernel table.
    pub sweep: Option<usize>,
    /// Steps and sampling with f16 weights (`--f16`: the linear layers read f16 copies).
    pub f16: bool,
}

impl Options {
    fn budget(&self) -> Duration {
        Duration::from_millis(if self.quick { 200 } else { 1000 })
    }
}

/// One measured kernel: its time, its rate, and the CPU reference's time in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub kernel: String,
    pub shape: String,
    pub seconds: f64,
    pub gflops: Option<f64>,
    pub gbs: Option<f64>,
    /// The same work on the CPU (sgemm on all cores, or a plain loop), seconds.
    pub cpu_seconds: Option<f64>,
}

/// The adapter a report was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub adapter: String,
    pub device_type: String,
    pub backend: String,
    pub driver: String,
    pub kernel_profile: String,
    pub subgroup_size: Option<u32>,
    pub cpu_threads: usize,
}

impl Machine {
    pub fn of(gpu: &Gpu) -> Machine {
        let i = gpu.adapter_info();
        Machine {
            adapter: i.name.clone(),
            device_type: format!("{:?}", i.device_type),
            backend: format!("{:?}", i.backend),
            driver: format!("{} {}", i.driver, i.driver_info),
            kernel_profile: format!("{:?}", gpu.profile()),
            subgroup_size: gpu.subgroup_size(),
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "adapter: {} ({}, {}), driver {}; kernel profile {}; subgroups {}; CPU threads {}",
            self.adapter,
            self.device_type,
            self.backend,
            self.driver,
            self.kernel_profile,
            self.subgroup_size
                .map_or("none".to_string(), |s| format!("of {s}")),
            self.cpu_threads
        )
    }
}

/// Seconds per call of `f`: the median over `BATCHES` batches of the mean over enough calls to
/// fill the budget. `sync` waits for the work `f` recorded (nothing for CPU work).
fn median_time(budget: Duration, mut f: impl FnMut(), sync: impl Fn()) -> f64 {
    const BATCHES: usize = 5;
    f();
    sync(); // compile, warm up
    let t = Instant::now();
    f();
    sync();
    let one = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((budget.as_secs_f64() / BATCHES as f64 / one) as usize).clamp(1, 200);
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            sync();
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

/// Seconds per call of `f` on the GPU; the first error `f` or the GPU returns, if any.
fn time_gpu<T>(gpu: &Gpu, budget: Duration, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut first_error = None;
    let secs = median_time(
        budget,
        || {
            if let Err(e) = f() {
                first_error.get_or_insert(e);
            }
        },
        || {
            let _ = gpu.synchronize();
        },
    );
    gpu.synchronize()?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(secs),
    }
}

fn time_cpu(budget: Duration, f: impl FnMut()) -> f64 {
    median_time(budget, f, || ())
}

/// A table of rows, as Markdown.
pub fn format_rows(rows: &[Row]) -> String {
    let mut s = format!(
        "| {:<32} | {:<22} | {:>10} | {:>9} | {:>8} | {:>12} | {:>9} |\n",
        "kernel", "shape", "time (ms)", "GFLOP/s", "GB/s", "CPU ref (ms)", "GPU/CPU"
    );
    s += &format!(
        "|{:-<34}|{:-<24}|{:->12}|{:->11}|{:->10}|{:->14}|{:->11}|\n",
        "", "", "", "", "", "", ""
    );
    for r in rows {
        let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or("-".into());
        s += &format!(
            "| {:<32} | {:<22} | {:>10.3} | {:>9} | {:>8} | {:>12} | {:>9} |\n",
            r.kernel,
            r.shape,
            r.seconds * 1e3,
            f(r.gflops, 2),
            f(r.gbs, 2),
            f(r.cpu_seconds.map(|s| s * 1e3), 3),
            f(r.cpu_seconds.map(|c| c / r.seconds), 3),
        );
    }
    s
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Kernels,
    /// Training steps: one workload, or all of them.
    Step(Option<Workload>),
    Sample,
    All,
}

impl Suite {
    /// `kernels`, `step`, `sample` or `all`; `workload` narrows `step` to one of [`WORKLOADS`].
    pub fn parse(what: &str, workload: Option<&str>) -> Result<Suite> {
        let one = workload.map(Workload::named).transpose()?;
        match what {
            "kernels" => Ok(Suite::Kernels),
            "step" => Ok(Suite::Step(one)),
            "sample" => Ok(Suite::Sample),
            "all" => Ok(Suite::All),
            other => Err(crate::Error::Config(format!(
                "unknown benchmark {other:?}: use kernels, step, sample or all"
            ))),
        }
    }
}

/// Everything one run measured, on one machine.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub kernels: Vec<Row>,
    pub steps: Vec<StepReport>,
    pub sample: Option<SampleReport>,
}

/// Measure `suite` on `gpu`.
pub fn run(gpu: &Gpu, suite: Suite, opts: &Options) -> Result<Report> {
    // Tune (or read the tuned table) before anything is timed.
    crate::ops::tune::table(gpu);
    let mut report = Report {
        machine: Machine::of(gpu),
        kernels: Vec::new(),
        steps: Vec::new(),
        sample: None,
    };
    if matches!(suite, Suite::Kernels | Suite::All) {
        report.kernels = kernels(gpu, opts)?;
    }
    let workloads: Vec<Workload> = match suite {
        Suite::Step(Some(w)) => vec![w],
        Suite::Step(None) | Suite::All => WORKLOADS.to_vec(),
        _ => Vec::new(),
    };
    for w in workloads {
        report.steps.push(step(gpu, w, opts)?);
    }
    if matches!(suite, Suite::Sample | Suite::All) {
        report.sample = Some(sample(gpu, opts)?);
    }
    Ok(report)
}

/// The per-shape matmul table under its heading (nothing when no matmul ran).
fn format_matmul_shapes(shapes: &[KernelShare]) -> String {
    if shapes.is_empty() {
        return String::new();
    }
    format!(
        "matmul by shape (op(A) op(B), M x N x K as dispatched; shares of the whole profile):\n\n{}\n",
        format_kernels(shapes)
    )
}

impl Report {
    /// The report as Markdown tables, machine first.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("{}\n\n", self.machine);
        if !self.kernels.is_empty() {
            s += &format_rows(&self.kernels);
            s += "\n";
        }
        for st in &self.steps {
            s += &format!(
                "### step: {} ({})\n\n{:.1} ms/step, {:.0} samples/s, {} dispatches/step, {:.1} \
                 buffers created/step after warm-up\n\nprofile ({}): {:.1} ms/step in kernels\n\n",
                st.workload,
                st.description,
                st.ms_per_step,
                st.samples_per_second,
                st.dispatches_per_step,
                st.buffers_created_per_step,
                st.profile_method,
                st.profiled_ms_per_step
            );
            s += &format_kernels(&st.kernels);
            s += "\n";
            s += &format_matmul_shapes(&st.matmul_shapes);
        }
        if let Some(sm) = &self.sample {
            s += &format!(
                "### sample: {}\n\n{:.2} s, {:.1} samples/s, {} dispatches\n\nprofile ({}):\n\n",
                sm.description, sm.seconds, sm.samples_per_second, sm.dispatches, sm.profile_method
            );
            s += &format_kernels(&sm.kernels);
            s += "\n";
            s += &format_matmul_shapes(&sm.matmul_shapes);
        }
        s
    }
}
