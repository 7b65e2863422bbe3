//! Sampling time grids: `steps + 1` times from the start `t_0` (just below 1) down to 0, and
//! the variable Heun's method integrates in ([`heun_frame`]).
//!
//! - `uniform`: `t_i = shift(T_START (1 - i / steps), alpha)`, the default for every schedule
//!   but `edm`.
//! - `karras` (Karras et al. 2022, eq. 5, `rho = 7`): the noise-to-signal ratio
//!   `sigma(t) = b_t / a_t` (EDM's `sigma` for the `edm` schedule) spaced as
//!   `sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`
//!   for `i < steps`, with `sigma_max = sigma(T_START)` and `sigma_min = sigma(T_END)`, each
//!   mapped back to `t` (in closed form for `edm`, `t = Phi((ln sigma - Pm) / Ps)`; by bisection
//!   on the monotone `sigma(t)` otherwise), then shifted; the last step goes to `t = 0`. It
//!   spends the steps where `sigma` is small, which a uniform grid in `t` crosses in one step
//!   under `edm` (`sigma(1/20) = 0.04`).

use super::sampler::shift;
use super::schedule::{normal_cdf, Schedule};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where sampling starts: just below 1, where every schedule's conversions are finite.
pub const T_START: f64 = 1.0 - 1e-5;

/// The smallest time of the Karras grid before the final step to 0 (the training range's
/// lower end, `FlowConfig`'s default `t_min`).
pub const T_END: f64 = 1e-5;

/// Karras et al.'s `rho`.
pub const KARRAS_RHO: f64 = 7.0;

/// How the sampling times are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeGrid {
    /// Uniform in `t`.
    Uniform,
    /// Karras et al.'s `rho = 7` spacing of `sigma = b / a`.
    Karras,
}

impl TimeGrid {
    /// Parse `uniform` or `karras`.
    pub fn parse(text: &str) -> Result<TimeGrid> {
        match text {
            "uniform" => Ok(TimeGrid::Uniform),
            "karras" => Ok(TimeGrid::Karras),
            _ => Err(Error::Config(format!(
                "unknown time grid {text:?}: use uniform or karras"
            ))),
        }
    }

    /// The text form (`uniform`, `karras`).
    pub fn name(self) -> &'static str {
        match self {
            TimeGrid::Uniform => "uniform",
            TimeGrid::Karras => "karras",
        }
    }

    /// The grid that suits `schedule`: `karras` for `edm`, `uniform` for the others.
    pub fn default_for(schedule: &Schedule) -> TimeGrid {
        match schedule {
            Schedule::Edm { .. } => TimeGrid::Karras,
            _ => TimeGrid::Uniform,
        }
    }

    /// The `steps + 1` times from the start down to 0, shifted by `alpha` (1: none).
    pub fn times(self, schedule: &Schedule, steps: usize, alpha: f64) -> Vec<f64> {
        match self {
            TimeGrid::Uniform => (0..=steps)
                .map(|i| shift(T_START * (1.0 - i as f64 / steps as f64), alpha))
                .collect(),
            TimeGrid::Karras => {
                let sigmas = karras_sigmas(
                    steps,
                    noise_ratio(schedule, T_END),
                    noise_ratio(schedule, T_START),
                    KARRAS_RHO,
                );
                sigmas
                    .iter()
                    .map(|&s| shift(time_of_noise_ratio(schedule, s), alpha))
                    .chain(std::iter::once(0.0))
                    .collect()
            }
        }
    }
}

/// `n` noise levels from `sigma_max` down to `sigma_min`, spaced evenly in `sigma^(1/rho)`
/// (one level, `sigma_max`, when `n = 1`).
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (hi, lo) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    (0..n)
        .map(|i| {
            let frac = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (hi + frac * (lo - hi)).powf(rho)
        })
        .collect()
}

/// The noise-to-signal ratio `sigma(t) = b_t / a_t` (EDM's `sigma` for `edm`).
pub fn noise_ratio(schedule: &Schedule, t: f64) -> f64 {
    let (a, b, _, _) = schedule.coefficients(t);
    b / a
}

/// The `t` in (0, 1) with `noise_ratio(t) = sigma`: `Phi((ln sigma - Pm) / Ps)` for `edm`,
/// bisection otherwise (`sigma(t)` increases with `t` for every schedule).
pub fn time_of_noise_ratio(schedule: &Schedule, sigma: f64) -> f64 {
    if let Schedule::Edm { pm, ps } = *schedule {
        return normal_cdf((sigma.ln() - pm) / ps);
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if noise_ratio(schedule, mid) < sigma {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Heun's variable and the `(x0_hat, eps_hat)` weights of `z`'s derivative in it, at `t`:
/// `(t, a', b')` (`dz/dt = a' x0_hat + b' eps_hat`), or for the variance-exploding `edm`
/// schedule `(sigma, 0, 1)` (`dz/dsigma = eps_hat`, EDM's Heun). Both make the first-order step
/// `z_s = a_s x0_hat + b_s eps_hat` exact on straight lines; the trapezoid in `t` diverges under
/// `edm`, whose `b' = b Ps / pdf(PhiInv(t))` grows without bound near `t = 1`.
pub fn heun_frame(schedule: &Schedule, t: f64) -> (f64, f64, f64) {
    let (_, b, da, db) = schedule.coefficients(t);
    match schedule {
        Schedule::Edm { .. } => (b, 0.0, 1.0),
        _ => (t, da, db),
    }
}
