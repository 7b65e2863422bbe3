//! Sampling: integrate `dz/dt = v(z, t)` from noise at `t = 1` down to `t = 0`
//! (docs/flow-math.md, "Sampling"). The first-order step predicts `(x0_hat, eps_hat)` and moves to
//! `z_s = a_s x0_hat + b_s eps_hat`, exact for every schedule's straight line (Euler for `rf`,
//! DDIM for variance-preserving schedules); Heun adds one evaluation per step (none on the last).
//! Classifier-free guidance mixes the conditional and unconditional outputs,
//! `y = y_u + w (y_c - y_u)`, from one doubled batch. The time grid is uniform, then shifted.

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::flow::{shift, Prediction, Schedule};
use crate::nn::Model;
use crate::ops::{self, flow::FlowKernels};
use crate::params::Params;
use crate::tensor::Tensor;

/// The solver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    Euler,
    Heun,
}

impl Solver {
    pub fn parse(s: &str) -> Result<Solver> {
        match s {
            "euler" => Ok(Solver::Euler),
            "heun" => Ok(Solver::Heun),
            _ => Err(Error::Config(format!(
                "unknown solver {s:?}: use euler or heun"
            ))),
        }
    }
}

/// How to sample.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub steps: usize,
    pub solver: Solver,
    /// Guidance weight `w` (1: plain conditional; 0: unconditional).
    pub cfg: f32,
    /// Time-grid shift `alpha` (1: none).
    pub shift: f64,
    /// One label per sample (the null class for unconditional models).
    pub labels: Vec<u32>,
    pub seed: u64,
    /// Clamp the predicted `x0_hat` to `[-clip, clip]` before each step (images live in [-1, 1]).
    /// Predictions whose `x0_hat` divides by a small `a_t` (eps on `rf` or `cosine` near `t = 1`)
    /// otherwise amplify the network's error by `b / a`.
    pub clip_x0: Option<f32>,
}

/// Most sampling steps (the time grid is one f64 per step).
pub const MAX_STEPS: usize = 100_000;

impl SampleOptions {
    /// Check every option against its range, naming the flag: at least one sample, steps in
    /// `1..=MAX_STEPS`, a finite guidance weight, a finite positive shift, and a finite positive
    /// x0 clamp.
    pub fn validate(&self) -> Result<()> {
        let refuse = |m: String| Err(Error::Config(m));
        if self.labels.is_empty() {
            return refuse("sampling needs at least one sample (--n)".into());
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return refuse(format!("--steps {}: use 1..={MAX_STEPS}", self.steps));
        }
        if !self.cfg.is_finite() {
            return refuse(format!(
                "--cfg {}: the guidance weight must be a finite number (1: none)",
                self.cfg
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return refuse(format!(
                "--shift {}: the time shift must be a finite number > 0 (1: none)",
                self.shift
            ));
        }
        if let Some(v) = self.clip_x0 {
            if !(v.is_finite() && v > 0.0) {
                return refuse(format!(
                    "--clip-x0 {v}: the bound must be a finite number > 0 (0 on the command line: no clamp)"
                ));
            }
        }
        Ok(())
    }
}

/// Where sampling starts: just below 1, where every schedule's conversions are finite.
pub const T_START: f64 = 1.0 - 1e-5;

/// The affine maps of a prediction at `t`: `(x0_hat, eps_hat) = (p y + q z, r y + u z)`.
fn affine(pred: Prediction, s: &Schedule, t: f64) -> [f64; 4] {
    let (p, r) = pred.to_x0_eps(s, 1.0, 0.0, t);
    let (q, u) = pred.to_x0_eps(s, 0.0, 1.0, t);
    [p, q, r, u]
}

/// Draw samples `[n, dim]` from `model` with parameter values `params`.
pub fn sample(
    model: &Model,
    params: &Params,
    flow: &FlowKernels,
    dim: usize,
    null_label: u32,
    opts: &SampleOptions,
) -> Result<Tensor> {
    opts.validate()?;
    let gpu = params.values().gpu();
    let n = opts.labels.len();
    if n == 0 || opts.steps == 0 {
        return Err(Error::Config(
            "sampling needs at least one sample and one step".into(),
        ));
    }
    let (schedule, pred) = (flow.config.schedule, flow.config.prediction);
    let guided = opts.cfg != 1.0 && opts.labels.iter().any(|&l| l != null_label);
    // Labels of the doubled batch: conditional, then null.
    let mut labels: Vec<f32> = opts.labels.iter().map(|&l| l as f32).collect();
    if guided {
        labels.extend(std::iter::repeat_n(null_label as f32, n));
    }
    let labels = Tensor::from_slice(gpu, &[labels.len()], &labels)?;
    let times: Vec<f64> = (0..=opts.steps)
        .map(|i| shift(T_START * (1.0 - i as f64 / opts.steps as f64), opts.shift))
        .collect();

    // The network output at (z, t), guided.
    let output = |z: &Tensor, t: f64| -> Result<Tensor> {
        let mut tape = Tape::no_grad();
        let zz = if guided {
            let z3 = z.reshape(&[1, n, dim])?;
            ops::concat_tokens(&z3, &z3)?.reshape(&[2 * n, dim])?
        } else {
            z.clone()
        };
        let rows = zz.shape()[0];
        let tv = tape.constant(Tensor::full(gpu, &[rows], t as f32)?);
        let zv = tape.constant(zz);
        let y = model
            .forward(&mut tape, params, &zv, &tv, &labels)?
            .value()
            .clone();
        if !guided {
            return Ok(y);
        }
        let (yc, yu) = ops::split_tokens(&y.reshape(&[1, 2 * n, dim])?, n)?;
        let (yc, yu) = (yc.reshape(&[n, dim])?, yu.reshape(&[n, dim])?);
        // y = y_u + w (y_c - y_u) = w y_c + (1 - w) y_u
        let out = ops::scale(&yc, opts.cfg)?;
        ops::axpy(1.0 - opts.cfg, &yu, &out)?;
        Ok(out)
    };
    // alpha y + beta z, a new tensor.
    let combine = |alpha: f64, y: &Tensor, beta: f64, z: &Tensor| -> Result<Tensor> {
        let out = ops::scale(z, beta as f32)?;
        ops::axpy(alpha as f32, y, &out)?;
        Ok(out)
    };
    // Start from z = b(t0) eps (the data's share a(t0) x0 is negligible there).
    let eps = flow
        .random_normal(gpu, n * dim, opts.seed, 0, 7)?
        .reshape(&[n, dim])?;
    let mut z = ops::scale(&eps, schedule.b(times[0]) as f32)?;
    for (i, w) in times.windows(2).enumerate() {
        let (t, s) = (w[0], w[1]);
        let y = output(&z, t)?;
        let [p, q, r, u] = affine(pred, &schedule, t);
        let (a_s, b_s, _, _) = schedule.coefficients(s);
        let euler = match opts.clip_x0 {
            None => combine(a_s * p + b_s * r, &y, a_s * q + b_s * u, &z)?,
            Some(bound) => {
                // z_s = a_s clamp(x0_hat) + b_s eps_hat
                let x0 = ops::clamp(&combine(p, &y, q, &z)?, bound)?;
                let next = combine(r, &y, u, &z)?;
                let scaled = ops::scale(&next, b_s as f32)?;
                ops::axpy(a_s as f32, &x0, &scaled)?;
                scaled
            }
        };
        let last = i + 2 == times.len();
        z = if opts.solver == Solver::Heun && !last {
            // Velocities at both ends: v = a' x0_hat + b' eps_hat.
            let (_, _, da, db) = schedule.coefficients(t);
            let v_t = combine(da * p + db * r, &y, da * q + db * u, &z)?;
            let y2 = output(&euler, s)?;
            let [p2, q2, r2, u2] = affine(pred, &schedule, s);
            let (_, _, da2, db2) = schedule.coefficients(s);
            let v_s = combine(da2 * p2 + db2 * r2, &y2, da2 * q2 + db2 * u2, &euler)?;
            let next = ops::copy(&z)?;
            ops::axpy(0.5 * (s - t) as f32, &v_t, &next)?;
            ops::axpy(0.5 * (s - t) as f32, &v_s, &next)?;
            next
        } else {
            euler
        };
    }
    Ok(z)
}
