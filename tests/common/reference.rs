//! Plain CPU references in f64, one per kernel, written for clarity rather than speed.

pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// d gelu / dx (tanh approximation).
pub fn gelu_grad(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let th = (c * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x)
}

/// d silu / dx.
pub fn silu_grad(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// Row reductions of a `rows x cols` matrix.
pub fn reduce_rows(x: &[f64], cols: usize, op: &str) -> Vec<f64> {
    x.chunks(cols)
        .map(|r| match op {
            "sum" => r.iter().sum(),
            "mean" => r.iter().sum::<f64>() / cols as f64,
            "max" => r.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            _ => unreachable!(),
        })
        .collect()
}

/// `[batch, rows, cols] -> [batch, cols, rows]`.
pub fn transpose(x: &[f64], batch: usize, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for r in 0..rows {
            for c in 0..cols {
                out[b * rows * cols + c * rows + r] = x[b * rows * cols + r * cols + c];
            }
        }
    }
    out
}

/// Everything a matmul reference needs.
pub struct MatmulCase<'a> {
    pub a: &'a [f64],
    pub b: &'a [f64],
    pub batch: usize,
    pub a_batched: bool,
    pub b_batched: bool,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f64,
    pub bias: Option<&'a [f64]>,
    /// 0 none, 1 GELU, 2 SiLU.
    pub act: u32,
    /// Added to the result (accumulation), `[batch, m, n]`.
    pub c0: Option<&'a [f64]>,
}

/// The reference result and, per element, `alpha * sum_k |a b| + |bias|`, the magnitude that
/// bounds the rounding error of any summation order.
pub fn matmul(c: &MatmulCase) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (c.m, c.k, c.n);
    let mut out = vec![0.0; c.batch * m * n];
    let mut mag = vec![0.0; c.batch * m * n];
    for bi in 0..c.batch {
        let a = &c.a[if c.a_batched { bi * m * k } else { 0 }..];
        let b = &c.b[if c.b_batched { bi * k * n } else { 0 }..];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut s_abs) = (0.0, 0.0);
                for p in 0..k {
                    let av = if c.trans_a {
                        a[p * m + i]
                    } else {
                        a[i * k + p]
                    };
                    let bv = if c.trans_b {
                        b[j * k + p]
                    } else {
                        b[p * n + j]
                    };
                    s += av * bv;
                    s_abs += (av * bv).abs();
                }
                let bias = c.bias.map_or(0.0, |bb| bb[j]);
                let pre = c.alpha * s + bias;
                let mut v = match c.act {
                    1 => gelu(pre),
                    2 => silu(pre),
                    _ => pre,
                };
                let idx = bi * m * n + i * n + j;
                if let Some(c0) = c.c0 {
                    v += c0[idx];
                }
                out[idx] = v;
                mag[idx] =
                    c.alpha.abs() * s_abs + bias.abs() + c.c0.map_or(0.0, |c0| c0[idx].abs());
            }
        }
    }
    (out, mag)
}

/// LayerNorm of each `cols`-row, with optional affine `(gamma, beta)`.
pub fn layer_norm(x: &[f64], cols: usize, affine: Option<(&[f64], &[f64])>, eps: f64) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|r| {
            let mean = r.iter().sum::<f64>() / cols as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            r.iter()
                .enumerate()
                .map(move |(j, v)| {
                    let xh = (v - mean) * rstd;
                    affine.map_or(xh, |(g, b)| xh * g[j] + b[j])
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// RMSNorm of each row with scale `gamma`.
pub fn rms_norm(x: &[f64], cols: usize, gamma: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|r| {
            let rrms = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps).sqrt();
            r.iter()
                .enumerate()
                .map(move |(j, v)| v * rrms * gamma[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            r.iter().map(move |v| (v - m).exp() / s).collect::<Vec<_>>()
        })
        .collect()
}

/// `x * (1 + scale) + shift` with x `[b, t, c]` and the vectors `[b, c]`.
pub fn modulate(x: &[f64], t: usize, c: usize, scale: &[f64], shift: &[f64]) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let sv = (i / (t * c)) * c + i % c;
            x[i] * (1.0 + scale[sv]) + shift[sv]
        })
        .collect()
}

/// `x + gate * h`.
pub fn gate(x: &[f64], h: &[f64], t: usize, c: usize, gate: &[f64]) -> Vec<f64> {
    (0..x.len())
        .map(|i| x[i] + gate[(i / (t * c)) * c + i % c] * h[i])
        .collect()
}

/// Sinusoidal embedding `[B, dim]`: cos then sin of `scale t f_i`, `f_i = 10000^(-i/half)`.
pub fn timestep_embedding(t: &[f64], dim: usize, scale: f64) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0.0; t.len() * dim];
    for (b, &tv) in t.iter().enumerate() {
        for i in 0..half {
            let f = (-(10000f64).ln() * i as f64 / half as f64).exp();
            out[b * dim + i] = (scale * tv * f).cos();
            out[b * dim + half + i] = (scale * tv * f).sin();
        }
    }
    out
}

/// Images `[b, c, h, w]` to tokens `[b, (h/p)(w/p), c p p]`, features ordered (c, py, px).
pub fn patchify(img: &[f64], b: usize, c: usize, h: usize, w: usize, p: usize) -> Vec<f64> {
    let (gh, gw) = (h / p, w / p);
    let mut out = vec![0.0; img.len()];
    for bi in 0..b {
        for gy in 0..gh {
            for gx in 0..gw {
                for ci in 0..c {
                    for py in 0..p {
                        for px in 0..p {
                            let tok = gy * gw + gx;
                            let f = (ci * p + py) * p + px;
                            out[(bi * gh * gw + tok) * c * p * p + f] =
                                img[((bi * c + ci) * h + gy * p + py) * w + gx * p + px];
                        }
                    }
                }
            }
        }
    }
    out
}

/// Attention over qkv `[b, t, 3, heads, d]`, output `[b, t, heads, d]`, with scores
/// `q . k / sqrt(d)`: the plain formula with the full t x t matrix.
pub fn attention(qkv: &[f64], b: usize, t: usize, heads: usize, d: usize) -> Vec<f64> {
    let at =
        |bi: usize, ti: usize, part: usize, h: usize| (((bi * t + ti) * 3 + part) * heads + h) * d;
    let mut out = vec![0.0; b * t * heads * d];
    let scale = 1.0 / (d as f64).sqrt();
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let s: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|c| qkv[at(bi, i, 0, h) + c] * qkv[at(bi, j, 1, h) + c])
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let p = softmax(&s, t);
                for c in 0..d {
                    out[((bi * t + i) * heads + h) * d + c] =
                        (0..t).map(|j| p[j] * qkv[at(bi, j, 2, h) + c]).sum();
                }
            }
        }
    }
    out
}

/// Central differences of a scalar function at x (step h per coordinate).
pub fn numeric_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|k| {
            let orig = xs[k];
            xs[k] = orig + h;
            let up = f(&xs);
            xs[k] = orig - h;
            let down = f(&xs);
            xs[k] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// `sum_i w_i y_i`: the scalar whose gradient with respect to y is w.
pub fn weighted_sum(y: &[f64], w: &[f64]) -> f64 {
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// Chunk `j` of each row of a per-sample tensor `[B, K C]`, as `[B, C]`.
pub fn chunk(ada: &[f64], k: usize, c: usize, j: usize) -> Vec<f64> {
    ada.chunks(k * c)
        .flat_map(|row| row[j * c..(j + 1) * c].to_vec())
        .collect()
}

/// `LN(x) (1 + scale) + shift`, LayerNorm without affine parameters, the vectors chunks of
/// `ada` `[B, K C]`.
#[allow(clippy::too_many_arguments)]
pub fn ln_modulate(
    x: &[f64],
    t: usize,
    c: usize,
    ada: &[f64],
    k: usize,
    shift: usize,
    scale: usize,
    eps: f64,
) -> Vec<f64> {
    let ln = layer_norm(x, c, None, eps);
    modulate(
        &ln,
        t,
        c,
        &chunk(ada, k, c, scale),
        &chunk(ada, k, c, shift),
    )
}

/// RMSNorm of every head's query and key in `qkv` `[rows, 3, H, D]` with scales `gq`, `gk`.
pub fn qk_norm(qkv: &[f64], heads: usize, d: usize, gq: &[f64], gk: &[f64], eps: f64) -> Vec<f64> {
    let mut out = qkv.to_vec();
    for (i, head) in qkv.chunks(d).enumerate() {
        let part = (i / heads) % 3;
        if part == 2 {
            continue;
        }
        let g = if part == 0 { gq } else { gk };
        let normed = rms_norm(head, d, g, eps);
        out[i * d..(i + 1) * d].copy_from_slice(&normed);
    }
    out
}

/// What [`dopri5`] integrated.
pub struct Dopri5 {
    /// The state at `t = 0`.
    pub z: Vec<f64>,
    /// The accepted times, from the start down to 0.
    pub times: Vec<f64>,
    /// Evaluations of the field.
    pub nfe: usize,
    /// Rejected steps.
    pub rejected: usize,
    /// The path straightness: the trapezoid rule over each accepted step of
    /// `mean_i (v_i - d_i)^2`, `d = (z_start - z_0) / t_start`, plus `t_end (v(t_end) - d)^2` for
    /// the last Euler step, divided by `t_start`.
    pub straightness: f64,
}

/// Dormand-Prince 5(4) in f64, as `rectiflow::rk45` specifies it: from `(z, t0)` down to
/// `t_end` (the last step clipped onto it), then one Euler step to 0 with the velocity at
/// `t_end`; error norm `sqrt(mean (e / (atol + rtol max(|z|, |z_new|)))^2)`, accept at `<= 1`,
/// next step `h clamp(0.9 err^(-1/5), 0.2, 5)`, first step 1% of `t0 - t_end`.
pub fn dopri5(
    mut f: impl FnMut(&[f64], f64) -> Vec<f64>,
    z: &[f64],
    t0: f64,
    t_end: f64,
    rtol: f64,
    atol: f64,
) -> Dopri5 {
    let c = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
    let a: [Vec<f64>; 7] = [
        vec![],
        vec![0.2],
        vec![3.0 / 40.0, 9.0 / 40.0],
        vec![44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        vec![
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        vec![
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        vec![
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ];
    let b5 = &a[6];
    let b4 = [
        5179.0 / 57600.0,
        0.0,
        7571.0 / 16695.0,
        393.0 / 640.0,
        -92097.0 / 339200.0,
        187.0 / 2100.0,
        1.0 / 40.0,
    ];
    let n = z.len();
    let mut z = z.to_vec();
    let start = z.clone();
    let mut t = t0;
    let mut h = 0.01 * (t0 - t_end);
    let mut k1 = f(&z, t);
    let (mut nfe, mut rejected) = (1, 0);
    let mut times = vec![t0];
    // (weight, velocity) of every quadrature point.
    let mut points: Vec<(f64, Vec<f64>)> = Vec::new();
    while t > t_end {
        let hh = h.min(t - t_end);
        let t_new = if h >= t - t_end { t_end } else { t - hh };
        let dt = -hh;
        let mut k = vec![k1.clone()];
        for i in 1..7 {
            let zi: Vec<f64> = (0..n)
                .map(|e| {
                    z[e] + dt
                        * a[i]
                            .iter()
                            .zip(&k)
                            .map(|(aij, kj)| aij * kj[e])
                            .sum::<f64>()
                })
                .collect();
            let ti = if i == 6 { t_new } else { t + c[i] * dt };
            k.push(f(&zi, ti));
            nfe += 1;
        }
        let z5: Vec<f64> = (0..n)
            .map(|e| z[e] + dt * (0..6).map(|j| b5[j] * k[j][e]).sum::<f64>())
            .collect();
        let z4: Vec<f64> = (0..n)
            .map(|e| z[e] + dt * (0..7).map(|j| b4[j] * k[j][e]).sum::<f64>())
            .collect();
        let err = ((0..n)
            .map(|e| ((z5[e] - z4[e]) / (atol + rtol * z[e].abs().max(z5[e].abs()))).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt();
        let factor = if err == 0.0 {
            5.0
        } else {
            (0.9 * err.powf(-0.2)).clamp(0.2, 5.0)
        };
        h = hh * factor;
        if err <= 1.0 {
            points.push((0.5 * hh, k1.clone()));
            points.push((0.5 * hh, k[6].clone()));
            z = z5;
            k1 = k[6].clone();
            t = t_new;
            times.push(t);
        } else {
            rejected += 1;
        }
    }
    points.push((t, k1.clone()));
    for e in 0..n {
        z[e] -= t * k1[e];
    }
    times.push(0.0);
    let d: Vec<f64> = (0..n).map(|e| (start[e] - z[e]) / t0).collect();
    let total: f64 = points
        .iter()
        .map(|(w, v)| w * (0..n).map(|e| (v[e] - d[e]).powi(2)).sum::<f64>() / n as f64)
        .sum();
    let weight: f64 = points.iter().map(|p| p.0).sum();
    Dopri5 {
        z,
        times,
        nfe,
        rejected,
        straightness: total / weight,
    }
}
