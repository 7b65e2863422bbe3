//! Plain CPU references in f64, one per kernel, written for clarity rather than speed.

pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
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
