//! Forward processes `z_t = a_t x0 + b_t eps` (docs/flow-math.md, "Forward processes"), with
//! `t = 0` data and `t = 1` noise. Each schedule gives `a`, `b`, their derivatives, the log-SNR
//! `lambda = log(a^2 / b^2)` and its derivative `lambda' = 2 (a'/a - b'/b)`. At an endpoint where
//! `a` or `b` is 0 the log-SNR is infinite; training and sampling keep `t` inside
//! `[t_min, t_max]`.

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// A forward process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Rectified flow: `a = 1 - t`, `b = t`.
    RectifiedFlow,
    /// Variance preserving: `a = cos(pi t / 2)`, `b = sin(pi t / 2)`.
    Cosine,
    /// The discrete DDPM/LDM "linear" schedule (T = 1000), interpolated in `log alphabar`.
    LdmLinear,
    /// Variance exploding (EDM): `a = 1`, `b = exp(pm + ps PhiInv(t))`.
    Edm { pm: f64, ps: f64 },
}

/// Steps of the discrete LDM schedule.
pub const LDM_STEPS: usize = 1000;

/// `log alphabar_i` of the LDM schedule, `i = 0 .. 999`:
/// `beta_i = (sqrt(0.00085) + i / 999 (sqrt(0.012) - sqrt(0.00085)))^2`,
/// `alphabar_i = prod_{j <= i} (1 - beta_j)`.
pub fn ldm_log_alphabar() -> &'static [f64] {
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let (lo, hi) = (0.00085f64.sqrt(), 0.012f64.sqrt());
        let mut acc = 0.0;
        (0..LDM_STEPS)
            .map(|i| {
                let beta = (lo + i as f64 / (LDM_STEPS - 1) as f64 * (hi - lo)).powi(2);
                acc += (1.0 - beta).ln();
                acc
            })
            .collect()
    })
}

/// `log alphabar(t)` and its derivative: the piecewise-linear interpolant over
/// `i = t (T - 1)` and its slope (the right-hand segment at a knot, the last segment at `t = 1`).
fn ldm_interp(t: f64) -> (f64, f64) {
    let table = ldm_log_alphabar();
    let x = t.clamp(0.0, 1.0) * (LDM_STEPS - 1) as f64;
    let i = (x.floor() as usize).min(LDM_STEPS - 2);
    let slope = table[i + 1] - table[i];
    (
        table[i] + (x - i as f64) * slope,
        slope * (LDM_STEPS - 1) as f64,
    )
}

/// Standard normal density.
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The standard normal quantile `PhiInv(p)`: Acklam's rational approximation (relative error
/// 1.2e-9) refined by one Halley step against `erfc`, to about full double precision.
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    // Halley step on Phi(x) - p.
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (0.5 * x * x).exp();
    x - u / (1.0 + 0.5 * x * u)
}

impl Schedule {
    /// Parse `rf`, `cosine`, `ldm-linear`, `edm:PM,PS` or `edm` (EDM's own `edm:-1.2,1.2`).
    pub fn parse(s: &str) -> Result<Schedule> {
        let bad = || {
            Error::Config(format!(
                "unknown schedule {s:?}: use rf, cosine, ldm-linear, edm or edm:PM,PS (edm: edm:-1.2,1.2)"
            ))
        };
        Ok(match s {
            "rf" => Schedule::RectifiedFlow,
            "cosine" => Schedule::Cosine,
            "ldm-linear" => Schedule::LdmLinear,
            "edm" => Schedule::Edm { pm: -1.2, ps: 1.2 },
            _ => {
                let args = s.strip_prefix("edm:").ok_or_else(bad)?;
                let (pm, ps) = args.split_once(',').ok_or_else(bad)?;
                let pm: f64 = pm.trim().parse().map_err(|_| bad())?;
                let ps: f64 = ps.trim().parse().map_err(|_| bad())?;
                if !(ps.is_finite() && ps > 0.0 && pm.is_finite()) {
                    return Err(Error::Config(format!(
                        "edm:{pm},{ps}: PM must be finite and PS finite and positive"
                    )));
                }
                Schedule::Edm { pm, ps }
            }
        })
    }

    /// `(a, b, a', b')` at `t`.
    pub fn coefficients(&self, t: f64) -> (f64, f64, f64, f64) {
        use std::f64::consts::FRAC_PI_2;
        match *self {
            Schedule::RectifiedFlow => (1.0 - t, t, -1.0, 1.0),
            Schedule::Cosine => {
                let (s, c) = (FRAC_PI_2 * t).sin_cos();
                (c, s, -FRAC_PI_2 * s, FRAC_PI_2 * c)
            }
            Schedule::LdmLinear => {
                let (l, dl) = ldm_interp(t);
                let ab = l.exp();
                let a = ab.sqrt();
                let b = (1.0 - ab).sqrt();
                (a, b, 0.5 * a * dl, -0.5 * ab * dl / b)
            }
            Schedule::Edm { pm, ps } => {
                let u = normal_quantile(t);
                let b = (pm + ps * u).exp();
                (1.0, b, 0.0, b * ps / normal_pdf(u))
            }
        }
    }

    pub fn a(&self, t: f64) -> f64 {
        self.coefficients(t).0
    }
    pub fn b(&self, t: f64) -> f64 {
        self.coefficients(t).1
    }

    /// `lambda = log(a^2 / b^2)`.
    pub fn lambda(&self, t: f64) -> f64 {
        let (a, b, _, _) = self.coefficients(t);
        2.0 * (a.ln() - b.ln())
    }

    /// `lambda' = 2 (a'/a - b'/b)`.
    pub fn dlambda(&self, t: f64) -> f64 {
        let (a, b, da, db) = self.coefficients(t);
        2.0 * (da / a - db / b)
    }

    /// The conditional velocity `u_t(z | eps) = (a'/a) z - (b lambda' / 2) eps` (the spec's
    /// form; it equals `a' x0 + b' eps`).
    pub fn conditional_velocity(&self, z: f64, eps: f64, t: f64) -> f64 {
        let (a, b, da, _) = self.coefficients(t);
        (da / a) * z - 0.5 * b * self.dlambda(t) * eps
    }

    /// Whether `a^2 + b^2 = 1` (v-prediction's natural setting).
    pub fn is_variance_preserving(&self) -> bool {
        matches!(self, Schedule::Cosine | Schedule::LdmLinear)
    }

    /// A short name (`rf`, `cosine`, `ldm-linear`, `edm:PM,PS`).
    pub fn name(&self) -> String {
        match self {
            Schedule::RectifiedFlow => "rf".into(),
            Schedule::Cosine => "cosine".into(),
            Schedule::LdmLinear => "ldm-linear".into(),
            Schedule::Edm { pm, ps } => format!("edm:{pm},{ps}"),
        }
    }
}
