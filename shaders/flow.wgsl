// The flow math on the GPU (the f64 reference is src/flow/): a counter-based RNG, the forward
// process with the training target, the weighted loss with its gradient, and the exact marginal
// velocity of a finite data set.
//
// RNG: Philox4x32-10, counter (index, step, stream, 0), key = the 64-bit seed; bit-identical to
// src/rng.rs. A number depends only on (seed, step, stream, element index), not on the dispatch.
// Uniforms take the top 24 bits, centred (never 0 or 1); normals use Box-Muller's cosine branch.
//
// Configuration by override constants: SCHEDULE 0 rf, 1 cosine, 2 ldm-linear, 3 edm;
// SAMPLER 0 uniform, 1 lognorm, 2 mode, 3 cosmap; PRED 0 velocity, 1 eps, 2 v, 3 x0;
// WEIGHTING 0 velocity, 1 eps, 2 v, 3 x0, 4 edm.

struct Params {
    batch: u32,
    dim: u32,
    step: u32,
    stream: u32,
    seed_lo: u32,
    seed_hi: u32,
    null_label: u32,
    rows: u32,        // oracle: data rows
    t_min: f32,
    t_max: f32,
    shift: f32,       // resolution shift alpha of training t (1: none)
    p_drop: f32,      // label dropout probability
    sched_pm: f32,    // edm schedule
    sched_ps: f32,
    samp_m: f32,      // lognorm m / mode s
    samp_s: f32,      // lognorm s
    w_pm: f32,        // edm weighting
    w_ps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x0: array<f32>;        // [B, D] data (forward); network output (loss); z (oracle)
@group(0) @binding(1) var<storage, read> aux: array<f32>;       // labels [B] (forward); target (loss); t (oracle)
@group(0) @binding(2) var<storage, read> ldm: array<f32>;       // log alphabar, 1000 entries (ldm-linear)
@group(0) @binding(3) var<storage, read_write> out_a: array<f32>; // z (forward); dout (loss); v (oracle); numbers (random)
@group(0) @binding(4) var<storage, read_write> out_b: array<f32>; // target (forward); per-sample loss (loss)
@group(0) @binding(5) var<storage, read_write> out_t: array<f32>; // t [B] (forward); t [B] in (loss)
@group(0) @binding(6) var<storage, read_write> out_labels: array<f32>; // labels after dropout [B]
@group(1) @binding(0) var<uniform> params: Params;

// oracle: the data set
@group(0) @binding(4) var<storage, read> data: array<f32>;

override SCHEDULE: u32 = 0u;
override SAMPLER: u32 = 0u;
override PRED: u32 = 0u;
override WEIGHTING: u32 = 0u;

const PI: f32 = 3.14159265358979;
const STREAM_T: u32 = 0u;
const STREAM_EPS: u32 = 1u;
const WG: u32 = 64u;

fn linear_index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y) * WG + lid;
}

// ---- Philox4x32-10 ----

fn mulhi(a: u32, b: u32) -> u32 {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let cross = (lo_lo >> 16u) + (hi_lo & 0xffffu) + lo_hi; // < 2^32: no overflow
    return a_hi * b_hi + (hi_lo >> 16u) + (cross >> 16u);
}

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) { k += vec2(0x9E3779B9u, 0xBB67AE85u); }
        let hi0 = mulhi(0xD2511F53u, c.x);
        let lo0 = 0xD2511F53u * c.x;
        let hi1 = mulhi(0xCD9E8D57u, c.z);
        let lo1 = 0xCD9E8D57u * c.z;
        c = vec4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

fn words(stream: u32, index: u32) -> vec4<u32> {
    return philox(vec4(index, params.step, stream, 0u), vec2(params.seed_lo, params.seed_hi));
}

fn unit_uniform(w: u32) -> f32 {
    return (f32(w >> 8u) + 0.5) * (1.0 / 16777216.0);
}

fn normal(w0: u32, w1: u32) -> f32 {
    return sqrt(-2.0 * log(unit_uniform(w0))) * cos(2.0 * PI * unit_uniform(w1));
}

// ---- schedules: (a, b, a', b') ----

fn normal_pdf(x: f32) -> f32 {
    return exp(-0.5 * x * x) * 0.3989422804014327;
}

// Acklam's rational approximation (relative error 1.2e-9, below f32 precision).
fn normal_quantile(p: f32) -> f32 {
    if (p < 0.02425 || p > 0.97575) {
        let q = sqrt(-2.0 * log(min(p, 1.0 - p)));
        let x = (((((-7.784894002430293e-3 * q - 3.223964580411365e-1) * q - 2.400758277161838) * q
                  - 2.549732539343734) * q + 4.374664141464968) * q + 2.938163982698783)
            / ((((7.784695709041462e-3 * q + 3.224671290700398e-1) * q + 2.445134137142996) * q
                 + 3.754408661907416) * q + 1.0);
        return select(-x, x, p < 0.5);
    }
    let q = p - 0.5;
    let r = q * q;
    return (((((-3.969683028665376e1 * r + 2.209460984245205e2) * r - 2.759285104469687e2) * r
              + 1.38357751867269e2) * r - 3.066479806614716e1) * r + 2.506628277459239) * q
        / (((((-5.447609879822406e1 * r + 1.615858368580409e2) * r - 1.556989798598866e2) * r
             + 6.680131188771972e1) * r - 1.328068155288572e1) * r + 1.0);
}

fn coefficients(t: f32) -> vec4<f32> {
    switch SCHEDULE {
        case 1u: {
            let s = sin(0.5 * PI * t);
            let c = cos(0.5 * PI * t);
            return vec4(c, s, -0.5 * PI * s, 0.5 * PI * c);
        }
        case 2u: {
            // Piecewise-linear log alphabar over i = t (T - 1), as src/flow/schedule.rs.
            let x = clamp(t, 0.0, 1.0) * 999.0;
            let i = min(u32(floor(x)), 998u);
            let slope = ldm[i + 1u] - ldm[i];
            let l = ldm[i] + (x - f32(i)) * slope;
            let dl = slope * 999.0;
            let ab = exp(l);
            let a = sqrt(ab);
            let b = sqrt(1.0 - ab);
            return vec4(a, b, 0.5 * a * dl, -0.5 * ab * dl / b);
        }
        case 3u: {
            let u = normal_quantile(t);
            let b = exp(params.sched_pm + params.sched_ps * u);
            return vec4(1.0, b, 0.0, b * params.sched_ps / normal_pdf(u));
        }
        default: {
            return vec4(1.0 - t, t, -1.0, 1.0);
        }
    }
}

fn dlambda(c: vec4<f32>) -> f32 {
    return 2.0 * (c.z / c.x - c.w / c.y);
}

// ---- time samplers ----

fn sample_t(w: vec4<u32>) -> f32 {
    let u = unit_uniform(w.x);
    var t: f32;
    switch SAMPLER {
        case 1u: { t = 1.0 / (1.0 + exp(-(params.samp_m + params.samp_s * normal(w.y, w.z)))); }
        case 2u: {
            let c = cos(0.5 * PI * u);
            t = 1.0 - u - params.samp_m * (c * c - 1.0 + u);
        }
        case 3u: { t = 1.0 - 1.0 / (tan(0.5 * PI * u) + 1.0); }
        default: { t = u; }
    }
    let a = params.shift;
    t = a * t / (1.0 + (a - 1.0) * t);
    return clamp(t, params.t_min, params.t_max);
}

// ---- predictions and weights ----

fn regression_target(c: vec4<f32>, x: f32, eps: f32) -> f32 {
    switch PRED {
        case 1u: { return eps; }
        case 2u: { return c.x * eps - c.y * x; }
        case 3u: { return x; }
        default: { return c.z * x + c.w * eps; }
    }
}

// c_out of eps_hat = c_out * output + c_z * z.
fn eps_scale(c: vec4<f32>) -> f32 {
    switch PRED {
        case 1u: { return 1.0; }
        case 2u: { return c.x / (c.x * c.x + c.y * c.y); }
        case 3u: { return -c.x / c.y; }
        default: { return -2.0 / (dlambda(c) * c.y); }
    }
}

// W_t = -1/2 w_t lambda'_t c_out^2, the factor of ||output - target||^2. Exactly 1 when the
// weighting is the prediction's own (the plain loss), which avoids the formula's cancellations.
fn output_weight(t: f32) -> f32 {
    if (WEIGHTING == PRED) { return 1.0; }
    let c = coefficients(t);
    let dl = dlambda(c);
    var w: f32;
    switch WEIGHTING {
        case 1u: { w = -2.0 / dl; }
        case 2u: { w = -2.0 / (dl * c.x * c.x); }
        case 3u: { w = -2.0 / dl * (c.y / c.x) * (c.y / c.x); }
        case 4u: {
            let l = 2.0 * (log(c.x) - log(c.y));
            let sd = 2.0 * params.w_ps;
            let density = exp(-(l + 2.0 * params.w_pm) * (l + 2.0 * params.w_pm) / (2.0 * sd * sd)) / (sd * 2.5066282746310002);
            w = density * (exp(-l) + 0.25);
        }
        default: { w = -dl * c.y * c.y / 2.0; }
    }
    let k = eps_scale(c);
    return -0.5 * w * dl * k * k;
}

// ---- kernels ----

// out_a[i] = standard normal (stream params.stream, element i), for i < batch * dim.
@compute @workgroup_size(WG)
fn random_normal(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(lid, wid, nwg);
    if (i >= params.batch * params.dim) { return; }
    let w = words(params.stream, i);
    out_a[i] = normal(w.x, w.y);
}

// Per element of the batch [B, D]: t for its sample (stream 0, counter = sample), eps (stream 1,
// counter = element), z_t = a x0 + b eps and the training target; the first element of each
// sample also writes t and the label after dropout (word w of the sample's counter).
@compute @workgroup_size(WG)
fn forward_process(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_index(lid, wid, nwg);
    if (e >= params.batch * params.dim) { return; }
    let sample = e / params.dim;
    let wt = words(STREAM_T, sample);
    let t = sample_t(wt);
    let we = words(STREAM_EPS, e);
    let eps = normal(we.x, we.y);
    let c = coefficients(t);
    out_a[e] = c.x * x0[e] + c.y * eps;
    out_b[e] = regression_target(c, x0[e], eps);
    if (e % params.dim == 0u) {
        out_t[sample] = t;
        out_labels[sample] = select(aux[sample], f32(params.null_label), unit_uniform(wt.w) < params.p_drop);
    }
}

// Per sample: loss_b = W_t / D * ||output - target||^2 (for logging), and the gradient of the
// batch loss mean_b loss_b with respect to the output, 2 W_t (output - target) / (B D).
@compute @workgroup_size(WG)
fn weighted_loss(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let sample = linear_index(lid, wid, nwg);
    if (sample >= params.batch) { return; }
    let w = output_weight(out_t[sample]);
    let scale = 2.0 * w / f32(params.batch * params.dim);
    var sum = 0.0;
    for (var j = 0u; j < params.dim; j++) {
        let i = sample * params.dim + j;
        let d = x0[i] - aux[i];
        sum += d * d;
        out_a[i] = scale * d;
    }
    out_b[sample] = w * sum / f32(params.dim);
}

// The marginal velocity of the finite data set `data` [rows, D] at z [B, D], t [B]:
// v = a' E[x0 | z] + b' (z - a E[x0 | z]) / b, E[x0 | z] = sum_k softmax_k(-|z - a x_k|^2 / 2b^2) x_k.
// One invocation per query; two passes over the data (the maximum and sum of the logits, then
// the weighted sum, accumulated in the output row).
@compute @workgroup_size(WG)
fn oracle_velocity(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = linear_index(lid, wid, nwg);
    if (n >= params.batch) { return; }
    let d = params.dim;
    let c = coefficients(aux[n]);
    var m = bitcast<f32>(0xff800000u);
    var total = 0.0;
    for (var k = 0u; k < params.rows; k++) {
        var sq = 0.0;
        for (var j = 0u; j < d; j++) { let r = x0[n * d + j] - c.x * data[k * d + j]; sq += r * r; }
        let logit = -sq / (2.0 * c.y * c.y);
        let m_new = max(m, logit);
        total = total * exp(m - m_new) + exp(logit - m_new);
        m = m_new;
    }
    for (var j = 0u; j < d; j++) { out_a[n * d + j] = 0.0; }
    for (var k = 0u; k < params.rows; k++) {
        var sq = 0.0;
        for (var j = 0u; j < d; j++) { let r = x0[n * d + j] - c.x * data[k * d + j]; sq += r * r; }
        let w = exp(-sq / (2.0 * c.y * c.y) - m) / total;
        for (var j = 0u; j < d; j++) { out_a[n * d + j] += w * data[k * d + j]; }
    }
    for (var j = 0u; j < d; j++) {
        let i = n * d + j;
        let ex0 = out_a[i];
        out_a[i] = c.z * ex0 + c.w * (x0[i] - c.x * ex0) / c.y;
    }
}

// A training batch gathered on the GPU: sample b takes data row floor(u * rows) with u from
// stream 2 (counter = b), and its label. x0 binds the data set [rows, D], aux its labels [rows];
// out_a receives [B, D], out_b the labels [B].
@compute @workgroup_size(WG)
fn gather_batch(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_index(lid, wid, nwg);
    if (e >= params.batch * params.dim) { return; }
    let sample = e / params.dim;
    let row = min(u32(unit_uniform(words(2u, sample).x) * f32(params.rows)), params.rows - 1u);
    out_a[e] = x0[row * params.dim + e % params.dim];
    if (e % params.dim == 0u) { out_b[sample] = aux[row]; }
}
