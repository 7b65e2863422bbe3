//! Kernel profiling: how long each dispatch ran, gathered while [`Gpu::profile`] is on.
//!
//! With timestamp queries (`TIMESTAMP_QUERY`) every dispatch gets a compute pass of its own whose
//! beginning and end the device stamps; the stamps are resolved and read back at each flush.
//! Without them the fallback submits each dispatch alone and times it on the host's clock,
//! waiting for each: it includes the submission's overhead and says so ([`ProfileMethod`]).
//! Either way profiling changes how work is submitted, so a profiled step is slower than a
//! plain one; the per-kernel shares are what it is for.
//!
//! [`Gpu::profile`]: super::Gpu::profile

/// How the times of a [`Profile`] were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileMethod {
    /// Device timestamps at the beginning and end of each dispatch's pass.
    Timestamps,
    /// Host wall-clock around each dispatch submitted and waited for alone (the adapter has no
    /// timestamp queries): includes per-submission overhead.
    WallClock,
}

impl std::fmt::Display for ProfileMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProfileMethod::Timestamps => "device timestamps per dispatch",
            ProfileMethod::WallClock => {
                "fallback: host wall-clock per dispatch, submitted and waited for alone"
            }
        })
    }
}

/// Work a dispatch does, as its op counts it (for GFLOP/s and GB/s).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Floating-point operations (a multiply-add counts 2).
    pub flops: f64,
    /// Bytes the op must read and write at least once.
    pub bytes: f64,
    /// For a matrix product: the product this dispatch computed (the profile's per-shape table).
    pub matmul: Option<MatmulShape>,
}

/// The product one matmul dispatch computes: `batch` products `op(A) op(B)` of `m x k` by
/// `k x n` (after the op's own rewrites: folded batches, K slices, a transposed narrow output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch: u32,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl std::fmt::Display for MatmulShape {
    /// `A^T B 256x256x512` (M x N x K), with ` (x64)` for a batch.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |on: bool| if on { "^T" } else { "" };
        write!(
            f,
            "A{} B{} {}x{}x{}",
            t(self.trans_a),
            t(self.trans_b),
            self.m,
            self.n,
            self.k
        )?;
        if self.batch > 1 {
            write!(f, " (x{})", self.batch)?;
        }
        Ok(())
    }
}

/// One timed dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct DispatchTiming {
    /// `shader::entry`, e.g. `matmul::matmul_sg`.
    pub kernel: String,
    pub seconds: f64,
    pub cost: Cost,
}

/// Every dispatch timed since profiling started.
#[derive(Clone, Debug)]
pub struct Profile {
    pub method: ProfileMethod,
    pub dispatches: Vec<DispatchTiming>,
}

/// Per-kernel totals of a [`Profile`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTotal {
    pub kernel: String,
    pub dispatches: usize,
    pub seconds: f64,
    pub cost: Cost,
}

impl KernelTotal {
    pub fn gflops(&self) -> Option<f64> {
        (self.cost.flops > 0.0).then(|| self.cost.flops / self.seconds / 1e9)
    }
    pub fn gbs(&self) -> Option<f64> {
        (self.cost.bytes > 0.0).then(|| self.cost.bytes / self.seconds / 1e9)
    }
}

impl Profile {
    /// Totals per kernel, the most expensive first.
    pub fn by_kernel(&self) -> Vec<KernelTotal> {
        totals(self.dispatches.iter().map(|d| (d.kernel.clone(), d)))
    }

    /// Totals per matmul shape (`kernel` is the design and the shape, e.g.
    /// `matmul_subgroup A B^T 4096x256x256`), the most expensive first; other kernels are left out.
    pub fn by_matmul_shape(&self) -> Vec<KernelTotal> {
        totals(self.dispatches.iter().filter_map(|d| {
            let design = d.kernel.split("::").next().unwrap_or(&d.kernel);
            Some((format!("{design} {}", d.cost.matmul?), d))
        }))
    }

    /// Seconds summed over every dispatch.
    pub fn total_seconds(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }
}

/// Dispatches summed per name, the most expensive first.
fn totals<'a>(named: impl Iterator<Item = (String, &'a DispatchTiming)>) -> Vec<KernelTotal> {
    let mut totals: Vec<KernelTotal> = Vec::new();
    for (name, d) in named {
        match totals.iter_mut().find(|t| t.kernel == name) {
            Some(t) => {
                t.dispatches += 1;
                t.seconds += d.seconds;
                t.cost.flops += d.cost.flops;
                t.cost.bytes += d.cost.bytes;
            }
            None => totals.push(KernelTotal {
                kernel: name,
                dispatches: 1,
                seconds: d.seconds,
                cost: d.cost,
            }),
        }
    }
    totals.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    totals
}
