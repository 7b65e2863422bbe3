//! Time samplers for training (docs/flow-math.md, "Timestep samplers") and the
//! resolution-dependent shift. Each sampler maps a uniform `u` (and, for `lognorm`, a standard
//! normal) to `t`; the GPU kernels use the same maps on their own random numbers.

use super::schedule::{normal_cdf, normal_pdf};
use crate::error::{Error, Result};
use std::f64::consts::PI;

/// How training draws `t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimeSampler {
    Uniform,
    /// Logit-normal: `t = sigmoid(m + s n)`, `n ~ N(0, 1)`.
    LogNormal {
        m: f64,
        s: f64,
    },
    /// Heavy tails: `t = 1 - u - s (cos^2(pi u / 2) - 1 + u)`, `-1 <= s <= 2 / (pi - 2)`.
    Mode {
        s: f64,
    },
    /// `t = 1 - 1 / (tan(pi u / 2) + 1)`.
    CosMap,
    /// U-shaped (Lee et al. 2024, for training a reflow): density proportional to
    /// `cosh(a (t - 1/2))`, drawn as `t = 1/2 + asinh((2u - 1) sinh(a / 2)) / a`, `a > 0`.
    UShape {
        a: f64,
    },
    /// Discrete: the `k` starting times `1, 1 - 1/k, ..., 1/k` of a `k`-step uniform grid,
    /// equally likely, `t = 1 - floor(u k) / k` (clamped to `t_max` like every draw). Trains a
    /// `k`-step generator (distillation); `grid:1` is the one-step generator at `t = 1`. It has
    /// no density: [`TimeSampler::density`] is 0 and [`TimeSampler::cdf`] a staircase.
    Grid {
        k: u32,
    },
}

/// Most steps of a `grid:K` sampler.
pub const MAX_GRID_STEPS: u32 = 1000;

/// The largest valid `s` of the mode sampler.
pub fn mode_s_max() -> f64 {
    2.0 / (PI - 2.0)
}

impl TimeSampler {
    /// Parse `uniform`, `lognorm:M,S`, `mode:S`, `cosmap`, `ushape:A` or `grid:K`.
    pub fn parse(text: &str) -> Result<TimeSampler> {
        let bad = || {
            Error::Config(format!(
                "unknown time sampler {text:?}: use uniform, lognorm:M,S, mode:S, cosmap, \
                 ushape:A or grid:K"
            ))
        };
        let sampler = match text {
            "uniform" => TimeSampler::Uniform,
            "cosmap" => TimeSampler::CosMap,
            _ => {
                if let Some(args) = text.strip_prefix("lognorm:") {
                    let (m, s) = args.split_once(',').ok_or_else(bad)?;
                    TimeSampler::LogNormal {
                        m: m.trim().parse().map_err(|_| bad())?,
                        s: s.trim().parse().map_err(|_| bad())?,
                    }
                } else if let Some(s) = text.strip_prefix("mode:") {
                    TimeSampler::Mode {
                        s: s.trim().parse().map_err(|_| bad())?,
                    }
                } else if let Some(a) = text.strip_prefix("ushape:") {
                    TimeSampler::UShape {
                        a: a.trim().parse().map_err(|_| bad())?,
                    }
                } else if let Some(k) = text.strip_prefix("grid:") {
                    TimeSampler::Grid {
                        k: k.trim().parse().map_err(|_| bad())?,
                    }
                } else {
                    return Err(bad());
                }
            }
        };
        sampler.validate()?;
        Ok(sampler)
    }

    /// Reject parameters outside the sampler's domain.
    pub fn validate(&self) -> Result<()> {
        match *self {
            TimeSampler::LogNormal { m, s } if !(s.is_finite() && s > 0.0 && m.is_finite()) => Err(Error::Config(format!(
                "lognorm:{m},{s}: M must be finite and the scale S finite and positive"
            ))),
            TimeSampler::Mode { s } if !(-1.0..=mode_s_max()).contains(&s) => Err(Error::Config(format!(
                "mode:{s}: S must lie in [-1, 2/(pi - 2) = {:.4}], where t(u) stays monotone and inside [0, 1]",
                mode_s_max()
            ))),
            TimeSampler::UShape { a } if !(a.is_finite() && a > 0.0 && a <= 50.0) => Err(Error::Config(format!(
                "ushape:{a}: A must be a finite number in (0, 50] (Lee et al. use 4)"
            ))),
            TimeSampler::Grid { k } if !(1..=MAX_GRID_STEPS).contains(&k) => Err(Error::Config(format!(
                "grid:{k}: K is the number of sampling steps to train for, 1..={MAX_GRID_STEPS}"
            ))),
            _ => Ok(()),
        }
    }

    /// `t` from a uniform `u` in [0, 1) and a standard normal `n` (only `lognorm` uses `n`).
    pub fn map(&self, u: f64, n: f64) -> f64 {
        match *self {
            TimeSampler::Uniform => u,
            TimeSampler::LogNormal { m, s } => 1.0 / (1.0 + (-(m + s * n)).exp()),
            TimeSampler::Mode { s } => 1.0 - u - s * ((PI * u / 2.0).cos().powi(2) - 1.0 + u),
            TimeSampler::CosMap => 1.0 - 1.0 / ((PI * u / 2.0).tan() + 1.0),
            TimeSampler::UShape { a } => 0.5 + ((2.0 * u - 1.0) * (a / 2.0).sinh()).asinh() / a,
            TimeSampler::Grid { k } => 1.0 - (u * k as f64).floor().min(k as f64 - 1.0) / k as f64,
        }
    }

    /// The density of `t`.
    pub fn density(&self, t: f64) -> f64 {
        match *self {
            TimeSampler::Uniform => 1.0,
            TimeSampler::LogNormal { m, s } => {
                let logit = (t / (1.0 - t)).ln();
                normal_pdf((logit - m) / s) / (s * t * (1.0 - t))
            }
            TimeSampler::Mode { s } => {
                // Change of variables: 1 / |dt/du| at u = t^-1(t).
                let u = self.mode_inverse(t, s);
                1.0 / (1.0 + s - s * PI / 2.0 * (PI * u).sin()).abs()
            }
            TimeSampler::CosMap => 2.0 / (PI - 2.0 * PI * t + 2.0 * PI * t * t),
            TimeSampler::UShape { a } => a * (a * (t - 0.5)).cosh() / (2.0 * (a / 2.0).sinh()),
            TimeSampler::Grid { .. } => 0.0,
        }
    }

    /// `P(T <= t)`.
    pub fn cdf(&self, t: f64) -> f64 {
        match *self {
            TimeSampler::Uniform => t,
            TimeSampler::LogNormal { m, s } => normal_cdf(((t / (1.0 - t)).ln() - m) / s),
            // t(u) decreases: T <= t exactly when U >= u(t).
            TimeSampler::Mode { s } => 1.0 - self.mode_inverse(t, s),
            // u(t) = (2 / pi) atan(t / (1 - t)), and t(u) increases.
            TimeSampler::CosMap => 2.0 / PI * (t / (1.0 - t)).atan(),
            TimeSampler::UShape { a } => {
                ((a * (t - 0.5)).sinh() + (a / 2.0).sinh()) / (2.0 * (a / 2.0).sinh())
            }
            // The grid points at or below t: i / k for i = 1..=floor(t k).
            TimeSampler::Grid { k } => ((t * k as f64 + 1e-9).floor() / k as f64).clamp(0.0, 1.0),
        }
    }

    /// The `u` with `t(u) = t` for the (monotone decreasing) mode map, by bisection.
    fn mode_inverse(&self, t: f64, s: f64) -> f64 {
        let f = |u: f64| 1.0 - u - s * ((PI * u / 2.0).cos().powi(2) - 1.0 + u);
        let (mut lo, mut hi) = (0.0, 1.0);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if f(mid) > t {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    /// The text form [`TimeSampler::parse`] reads.
    pub fn name(&self) -> String {
        match self {
            TimeSampler::Uniform => "uniform".into(),
            TimeSampler::LogNormal { m, s } => format!("lognorm:{m},{s}"),
            TimeSampler::Mode { s } => format!("mode:{s}"),
            TimeSampler::CosMap => "cosmap".into(),
            TimeSampler::UShape { a } => format!("ushape:{a}"),
            TimeSampler::Grid { k } => format!("grid:{k}"),
        }
    }
}

/// The resolution shift: `t_m = alpha t / (1 + (alpha - 1) t)`, `alpha = sqrt(m / n)` for `m`
/// pixels sampled with a schedule tuned at `n`.
pub fn shift(t: f64, alpha: f64) -> f64 {
    alpha * t / (1.0 + (alpha - 1.0) * t)
}

/// The inverse of [`shift`]: `t = t_m / (alpha - (alpha - 1) t_m)`.
pub fn unshift(t_m: f64, alpha: f64) -> f64 {
    t_m / (alpha - (alpha - 1.0) * t_m)
}
