//! The adaptive solver of [`crate::Sampler`]'s `rk45`: Dormand-Prince 5(4), the classic
//! seven-stage pair with the first-same-as-last property, its embedded error estimate and the
//! standard step-size controller; and the path-straightness sums recorded along its
//! trajectory.
//!
//! - **Field**: the sampler's velocity `v = a' x0_hat + b' eps_hat` (guided; with the x0 clamp,
//!   the velocity of the straight path from `clamp(x0_hat)` through `z`).
//! - **Step** from `t` down by `h`: stages `k_i = v(z + dt sum_j A_ij k_j, t + C_i dt)` with
//!   `dt = -h`, the fifth-order solution `z_new = z + dt sum_j B_j k_j` (whose velocity is the
//!   next step's `k_1`), and the error `e = dt sum_j (B_j - B*_j) k_j`. Each stage's combination
//!   is one pass of `ops::linear_combination`, on the GPU.
//! - **Control**: `err = sqrt(mean_i (e_i / (atol + rtol max(|z_i|, |z_new_i|)))^2)` over every
//!   element of every sample, reduced on the GPU and read back (one four-byte read per attempt:
//!   an adaptive solver must see its error). The step is accepted when `err <= 1`; either way the
//!   next step is `h clamp(0.9 err^(-1/5), 0.2, 5)`. The first step is 1% of the interval.
//! - **Ends**: it starts at the sampler's first time (`shift(T_START, alpha)`: the shift moves
//!   the start only) and its steps are clipped to land exactly on [`T_END`] `= 1e-5`; a last
//!   Euler step with the velocity already evaluated there (no further evaluation) covers
//!   `[0, T_END]`. The field is never evaluated at `t = 0`, where the conversions of several
//!   predictions, and the exact velocity of a finite data set, divide by `b_0 = 0`.
//! - **Straightness**: with `v_k` the velocities at the accepted times and
//!   `d = (z_start - z_0) / t_start` the chord's velocity (for `rf` from noise, `z_1 - z_0`),
//!   `S = mean over elements of sum_k w_k (v_k - d)^2 / sum_k w_k`, the trapezoid rule over each
//!   accepted step (`w = h / 2` at both ends) plus `T_END` at `T_END` for the last Euler step.
//!   `S = 0` exactly when every path is a straight line run at constant speed. The sums
//!   `sum w u` and `sum w u^2` of `u = v - v_first` are kept on the GPU (elementwise; `u` rather
//!   than `v` keeps the f32 sums free of cancellation); `S` is formed in f64 from one read of
//!   them at the end.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// Where the adaptive steps end (the last Euler step goes on to 0).
pub const T_END: f64 = 1e-5;

/// The relative tolerance of [`crate::SampleOptions::new`] and of the command line.
pub const DEFAULT_RTOL: f64 = 1e-5;
/// The absolute tolerance of [`crate::SampleOptions::new`] and of the command line.
pub const DEFAULT_ATOL: f64 = 1e-5;

/// The Dormand-Prince 5(4) tableau: stage times `C`, stage coefficients `A` (row `i` has `i`
/// entries), fifth-order weights `B` (those of the seventh stage's input: first same as last)
/// and the fourth-order weights `B_STAR` of the error estimate.
pub mod tableau {
    /// Stage times.
    pub const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
    /// Stage coefficients, row `i` for stage `i + 1` (stage 1 is the step's start).
    pub const A: [&[f64]; 6] = [
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ];
    /// Fifth-order weights.
    pub const B: [f64; 7] = [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ];
    /// Fourth-order (embedded) weights.
    pub const B_STAR: [f64; 7] = [
        5179.0 / 57600.0,
        0.0,
        7571.0 / 16695.0,
        393.0 / 640.0,
        -92097.0 / 339200.0,
        187.0 / 2100.0,
        1.0 / 40.0,
    ];
}

/// The controller's factor for the next step after an error norm `err`:
/// `clamp(0.9 err^(-1/5), 0.2, 5)` (5 for `err = 0`).
pub fn step_factor(err: f64) -> f64 {
    if err == 0.0 {
        return 5.0;
    }
    (0.9 * err.powf(-0.2)).clamp(0.2, 5.0)
}

/// Check a tolerance: finite and > 0, else an error naming `flag`.
pub fn check_tolerance(flag: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{flag} {value}: the rk45 tolerance must be a finite number > 0 (e.g. 1e-5)"
        )))
    }
}

/// The sums of the straightness metric, recorded on the GPU along the accepted steps. They
/// are sums of `u = v - v_first` (the velocity less the first one): for nearly straight paths
/// `u` is small, so the f32 sums do not hold large, nearly cancelling terms (`sum w v^2` held
/// about 1e-6 of `v^2` in rounding, the floor of `S` for straight paths; `sum w u^2` holds none
/// of it).
pub(crate) struct PathSums {
    /// The samples where the trajectory starts, and when.
    start: Tensor,
    t_start: f64,
    /// The first velocity recorded (`v_first`).
    first: Option<Tensor>,
    /// `sum_k w_k u_k` and `sum_k w_k u_k^2`, elementwise.
    u: Tensor,
    u2: Tensor,
    /// `sum_k w_k`.
    weight: f64,
}

impl PathSums {
    fn new(start: &Tensor, t_start: f64) -> Result<PathSums> {
        let zeros = || {
            let t = ops::scale(start, 0.0)?;
            Ok::<_, Error>(t)
        };
        Ok(PathSums {
            start: start.clone(),
            t_start,
            first: None,
            u: zeros()?,
            u2: zeros()?,
            weight: 0.0,
        })
    }

    fn add(&mut self, w: f64, v: &Tensor) -> Result<()> {
        let first = self.first.get_or_insert_with(|| v.clone());
        let u = ops::sub(v, first)?;
        ops::axpy(w as f32, &u, &self.u)?;
        ops::axpy(w as f32, &ops::mul(&u, &u)?, &self.u2)?;
        self.weight += w;
        Ok(())
    }

    /// `S` for the trajectories that ended at `end` (one read of the sums).
    fn straightness(&self, end: &Tensor) -> Result<f64> {
        let first = self.first.as_ref().ok_or_else(|| {
            Error::Config("straightness: no velocity was recorded (no step was taken)".into())
        })?;
        let (z1, z0, v1) = (self.start.to_vec()?, end.to_vec()?, first.to_vec()?);
        let (u, u2) = (self.u.to_vec()?, self.u2.to_vec()?);
        let w = self.weight;
        let mut total = 0.0;
        for i in 0..z1.len() {
            // With c = d - v_first: sum_k w_k (v_k - d)^2 = sum_k w_k (u_k - c)^2
            // = sum w u^2 - 2 c sum w u + c^2 sum w.
            let d = (z1[i] as f64 - z0[i] as f64) / self.t_start;
            let c = d - v1[i] as f64;
            total += (u2[i] as f64 - 2.0 * c * u[i] as f64 + c * c * w) / w;
        }
        Ok(total / z1.len() as f64)
    }
}

/// The state of an rk45 integration between steps.
pub(crate) struct Rk45 {
    rtol: f64,
    atol: f64,
    /// The next step size to try (> 0; steps go down in `t`).
    h: f64,
    /// The velocity at the current `(z, t)`, once evaluated (first same as last).
    k1: Option<Tensor>,
    rejected: usize,
    sums: Option<PathSums>,
}

/// A velocity field as the solver sees it: `v(z, t)` recorded on the GPU.
pub(crate) type Velocity<'a> = dyn FnMut(&Tensor, f64) -> Result<Tensor> + 'a;

impl Rk45 {
    /// An integration from `t_start` with these tolerances (checked by the caller).
    pub(crate) fn new(t_start: f64, rtol: f64, atol: f64) -> Rk45 {
        Rk45 {
            rtol,
            atol,
            h: 0.01 * (t_start - T_END),
            k1: None,
            rejected: 0,
            sums: None,
        }
    }

    /// Record the straightness sums from here on (`z` at `t`, before the first step).
    pub(crate) fn record_straightness(&mut self, z: &Tensor, t: f64) -> Result<()> {
        self.sums = Some(PathSums::new(z, t)?);
        Ok(())
    }

    /// Whether the straightness sums are being recorded.
    pub(crate) fn records_straightness(&self) -> bool {
        self.sums.is_some()
    }

    /// The straightness of the trajectories that ended at `end`, if recorded.
    pub(crate) fn straightness(&self, end: &Tensor) -> Result<Option<f64>> {
        self.sums.as_ref().map(|s| s.straightness(end)).transpose()
    }

    /// Steps rejected so far.
    pub(crate) fn rejected(&self) -> usize {
        self.rejected
    }

    /// One accepted step from `(z, t)`, `t > 0`: returns the new samples and time. At
    /// [`T_END`] this is the last Euler step to 0.
    pub(crate) fn step(&mut self, v: &mut Velocity, z: &Tensor, t: f64) -> Result<(Tensor, f64)> {
        let k1 = match self.k1.take() {
            Some(k) => k,
            None => v(z, t)?,
        };
        if t <= T_END {
            if let Some(s) = &mut self.sums {
                s.add(t, &k1)?;
            }
            let z0 = ops::linear_combination(Some((1.0, z)), &[(-t as f32, &k1)])?;
            return Ok((z0, 0.0));
        }
        use tableau::{A, B, B_STAR, C};
        loop {
            let last = self.h >= t - T_END;
            let h = if last { t - T_END } else { self.h };
            let t_new = if last { T_END } else { t - h };
            let dt = -h;
            let mut k: Vec<Tensor> = vec![k1.clone()];
            // Stages 2..6 and the fifth-order solution (the input of stage 7).
            let mut z_new = None;
            for (i, row) in A.iter().enumerate() {
                let terms: Vec<(f32, &Tensor)> = row
                    .iter()
                    .zip(&k)
                    .filter(|(a, _)| **a != 0.0)
                    .map(|(a, kj)| ((dt * a) as f32, kj))
                    .collect();
                let zi = ops::linear_combination(Some((1.0, z)), &terms)?;
                let ti = if i + 1 == 6 { t_new } else { t + C[i + 1] * dt };
                k.push(v(&zi, ti)?);
                if i + 1 == 6 {
                    z_new = Some(zi);
                }
            }
            let z_new = z_new.expect("the tableau has six rows");
            let e_terms: Vec<(f32, &Tensor)> = B
                .iter()
                .zip(&B_STAR)
                .zip(&k)
                .filter(|((b, bs), _)| *b != *bs)
                .map(|((b, bs), kj)| ((dt * (b - bs)) as f32, kj))
                .collect();
            let e = ops::linear_combination(None, &e_terms)?;
            let weights = ops::error_weights(&e, z, &z_new, self.atol as f32, self.rtol as f32)?;
            let n = weights.numel();
            let sum = ops::sum_rows(&weights.reshape(&[n])?)?.to_vec()?[0] as f64;
            let err = (sum / n as f64).sqrt();
            if !err.is_finite() {
                return Err(Error::NonFinite(format!(
                    "rk45: the error estimate of the step from t = {t} to {t_new} is {err}: the \
                     velocity field is not finite there"
                )));
            }
            self.h = h * step_factor(err);
            if err <= 1.0 {
                let k7 = k.pop().expect("seven stages");
                if let Some(s) = &mut self.sums {
                    s.add(0.5 * h, &k1)?;
                    s.add(0.5 * h, &k7)?;
                }
                self.k1 = Some(k7);
                return Ok((z_new, t_new));
            }
            self.rejected += 1;
            if self.h < 1e-12 {
                return Err(Error::Config(format!(
                    "rk45: the step size fell below 1e-12 at t = {t} (error norm {err:.3e}): the \
                     field is too rough there for --rtol {} --atol {}; loosen them or use a \
                     fixed-step solver",
                    self.rtol, self.atol
                )));
            }
        }
    }
}
