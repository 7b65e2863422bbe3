// The flow math on the GPU (the f64 reference is src/flow/): the forward process with the
// training target, the weighted loss with its gradient, and the exact marginal velocity of a
// finite data set. Times and noise come from the counter-based generator (the library
// philox.wgsl): t from STREAM_T (counter = sample), eps from STREAM_EPS (counter = element),
// both counted from the batch's first_sample (0 for a whole batch; a rank of a data-parallel run
// noises its slice of the global batch as one process would).
//
// Configuration by override constants, their values generated from src/shaders.rs: SCHEDULE
// (SCHEDULE_RF, SCHEDULE_COSINE, SCHEDULE_LDM_LINEAR, SCHEDULE_EDM), SAMPLER (SAMPLER_UNIFORM,
// SAMPLER_LOGNORM, SAMPLER_MODE, SAMPLER_COSMAP), PRED (PRED_VELOCITY, PRED_EPS, PRED_V, PRED_X0),
// WEIGHTING (WEIGHTING_VELOCITY, ..., WEIGHTING_EDM; the first four equal the PRED codes),
// PRECOND (PRECOND_NONE, PRECOND_EDM: EDM's c_in, c_noise, c_skip, c_out around the network, for
// the edm schedule and x0 prediction; src/flow/precondition.rs).
// Each entry point binds only its own buffers; `ldm` (log alphabar of the LDM schedule, 1000
// entries) is binding 2 of all three.

struct Params {
    batch: u32,
    dim: u32,
    step: u32,
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
    samp_m: f32,      // lognorm m / mode s / ushape a / grid k
    samp_s: f32,      // lognorm s
    w_pm: f32,        // edm weighting
    w_ps: f32,
    first_sample: u32, // forward_process: the global index of sample 0 in the random streams
    _pad0: u32,
    _pad1: u32,
}

@group(1) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> ldm: array<f32>;

// forward_process
@group(0) @binding(0) var<storage, read> x0: array<f32>;                // [B, D]; PAIRED: [B, 2, D]
@group(0) @binding(1) var<storage, read> labels: array<f32>;            // [B]
@group(0) @binding(3) var<storage, read_write> z: array<f32>;           // [B, D]
@group(0) @binding(4) var<storage, read_write> regression: array<f32>;  // [B, D], the target
@group(0) @binding(5) var<storage, read_write> t_out: array<f32>;       // [B]
@group(0) @binding(6) var<storage, read_write> labels_out: array<f32>;  // [B], after dropout
@group(0) @binding(7) var<storage, read_write> time_input: array<f32>;  // [B], the network's t

// weighted_loss
@group(0) @binding(0) var<storage, read> output: array<f32>;            // [B, D]
@group(0) @binding(1) var<storage, read> loss_target: array<f32>;       // [B, D]
@group(0) @binding(3) var<storage, read> loss_t: array<f32>;            // [B]
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;        // [B, D]
@group(0) @binding(5) var<storage, read_write> per_sample: array<f32>;  // [B]

// oracle_velocity
@group(0) @binding(0) var<storage, read> oracle_z: array<f32>;          // [B, D]
@group(0) @binding(1) var<storage, read> oracle_t: array<f32>;          // [B]
@group(0) @binding(3) var<storage, read> data: array<f32>;              // [rows, D]
@group(0) @binding(4) var<storage, read_write> velocity: array<f32>;    // [B, D]

override SCHEDULE: u32 = 0u;
override SAMPLER: u32 = 0u;
override PRED: u32 = 0u;
override WEIGHTING: u32 = 0u;
override PRECOND: u32 = 0u;
// forward_process: 1 when each row of x0 holds an example and its own noise (a reflow pair),
// [x0_hat | eps], instead of drawing eps.
override PAIRED: u32 = 0u;

const WG: u32 = 64u;

fn linear_index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return workgroup_index(wid, nwg) * WG + lid;
}

fn words(stream: u32, index: u32) -> vec4<u32> {
    return random_words(vec2(params.seed_lo, params.seed_hi), params.step, stream, index);
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
        case SCHEDULE_COSINE: {
            let s = sin(0.5 * PI * t);
            let c = cos(0.5 * PI * t);
            return vec4(c, s, -0.5 * PI * s, 0.5 * PI * c);
        }
        case SCHEDULE_LDM_LINEAR: {
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
        case SCHEDULE_EDM: {
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
        case SAMPLER_LOGNORM: { t = 1.0 / (1.0 + exp(-(params.samp_m + params.samp_s * normal(w.y, w.z)))); }
        case SAMPLER_MODE: {
            let c = cos(0.5 * PI * u);
            t = 1.0 - u - params.samp_m * (c * c - 1.0 + u);
        }
        case SAMPLER_COSMAP: { t = 1.0 - 1.0 / (tan(0.5 * PI * u) + 1.0); }
        case SAMPLER_USHAPE: {
            let a = params.samp_m;
            t = 0.5 + asinh((2.0 * u - 1.0) * sinh(0.5 * a)) / a;
        }
        case SAMPLER_GRID: {
            let k = params.samp_m;
            t = 1.0 - min(floor(u * k), k - 1.0) / k;
        }
        default: { t = u; }
    }
    let a = params.shift;
    t = a * t / (1.0 + (a - 1.0) * t);
    return clamp(t, params.t_min, params.t_max);
}

// ---- predictions and weights ----

fn regression_target(c: vec4<f32>, x: f32, eps: f32) -> f32 {
    switch PRED {
        case PRED_EPS: { return eps; }
        case PRED_V: { return c.x * eps - c.y * x; }
        case PRED_X0: { return x; }
        default: { return c.z * x + c.w * eps; }
    }
}

// EDM's sigma_data.
const SIGMA_DATA: f32 = 0.5;

// c_out of eps_hat = c_out * output + c_z * z.
fn eps_scale(c: vec4<f32>) -> f32 {
    if (PRECOND == PRECOND_EDM) {
        // eps_hat = (z - c_skip z - c_out F) / sigma: -c_out / sigma = -sd / sqrt(sigma^2 + sd^2).
        return -SIGMA_DATA / sqrt(c.y * c.y + SIGMA_DATA * SIGMA_DATA);
    }
    switch PRED {
        case PRED_EPS: { return 1.0; }
        case PRED_V: { return c.x / (c.x * c.x + c.y * c.y); }
        case PRED_X0: { return -c.x / c.y; }
        default: { return -2.0 / (dlambda(c) * c.y); }
    }
}

// W_t = -1/2 w_t lambda'_t c_out^2, the factor of ||output - target||^2. Exactly 1 when the
// weighting is the prediction's own (the plain loss) without preconditioning, which avoids the
// formula's cancellations.
fn output_weight(t: f32) -> f32 {
    if (WEIGHTING == PRED && PRECOND == PRECOND_NONE) { return 1.0; }
    let c = coefficients(t);
    let dl = dlambda(c);
    var w: f32;
    switch WEIGHTING {
        case WEIGHTING_EPS: { w = -2.0 / dl; }
        case WEIGHTING_V: { w = -2.0 / (dl * c.x * c.x); }
        case WEIGHTING_X0: { w = -2.0 / dl * (c.y / c.x) * (c.y / c.x); }
        case WEIGHTING_EDM: {
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

// Per element of the batch [B, D]: t for its sample (STREAM_T, counter = sample), eps
// (STREAM_EPS, counter = element; or the pair's own noise, PAIRED), z_t = a x0 + b eps and the
// training target; the first element
// of each sample also writes t, the network's time input and the label after dropout (word w of
// the sample's counter). Under EDM's preconditioning the network's input is c_in z_t, its time
// input c_noise = ln(sigma) / 4 and its target (x0 - c_skip z_t) / c_out, computed as
// (sigma x0 - sd^2 eps) / (sd sqrt(sigma^2 + sd^2)), which does not cancel at small sigma.
@compute @workgroup_size(WG)
fn forward_process(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_index(lid, wid, nwg);
    if (e >= params.batch * params.dim) { return; }
    let sample = e / params.dim;
    let wt = words(STREAM_T, params.first_sample + sample);
    let t = sample_t(wt);
    var x: f32;
    var eps: f32;
    if (PAIRED == 1u) {
        let row = sample * 2u * params.dim + e % params.dim;
        x = x0[row];
        eps = x0[row + params.dim];
    } else {
        let we = words(STREAM_EPS, params.first_sample * params.dim + e);
        x = x0[e];
        eps = normal(we.x, we.y);
    }
    let c = coefficients(t);
    let zt = c.x * x + c.y * eps;
    var time = t;
    if (PRECOND == PRECOND_EDM) {
        let sigma = c.y;
        let norm = sqrt(sigma * sigma + SIGMA_DATA * SIGMA_DATA);
        z[e] = zt / norm;
        regression[e] = (sigma * x - SIGMA_DATA * SIGMA_DATA * eps) / (SIGMA_DATA * norm);
        time = 0.25 * log(sigma);
    } else {
        z[e] = zt;
        regression[e] = regression_target(c, x, eps);
    }
    if (e % params.dim == 0u) {
        t_out[sample] = t;
        time_input[sample] = time;
        labels_out[sample] = select(labels[sample], f32(params.null_label), unit_uniform(wt.w) < params.p_drop);
    }
}

// Per sample: loss_b = W_t / D * ||output - target||^2 (for logging), and the gradient of the
// batch loss mean_b loss_b with respect to the output, 2 W_t (output - target) / (B D).
@compute @workgroup_size(WG)
fn weighted_loss(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let sample = linear_index(lid, wid, nwg);
    if (sample >= params.batch) { return; }
    let w = output_weight(loss_t[sample]);
    let scale = 2.0 * w / f32(params.batch * params.dim);
    var sum = 0.0;
    for (var j = 0u; j < params.dim; j++) {
        let i = sample * params.dim + j;
        let d = output[i] - loss_target[i];
        sum += d * d;
        grad[i] = scale * d;
    }
    per_sample[sample] = w * sum / f32(params.dim);
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
    let c = coefficients(oracle_t[n]);
    var m = bitcast<f32>(0xff800000u);
    var total = 0.0;
    for (var k = 0u; k < params.rows; k++) {
        var sq = 0.0;
        for (var j = 0u; j < d; j++) { let r = oracle_z[n * d + j] - c.x * data[k * d + j]; sq += r * r; }
        let logit = -sq / (2.0 * c.y * c.y);
        let m_new = max(m, logit);
        total = total * exp(m - m_new) + exp(logit - m_new);
        m = m_new;
    }
    for (var j = 0u; j < d; j++) { velocity[n * d + j] = 0.0; }
    for (var k = 0u; k < params.rows; k++) {
        var sq = 0.0;
        for (var j = 0u; j < d; j++) { let r = oracle_z[n * d + j] - c.x * data[k * d + j]; sq += r * r; }
        let w = exp(-sq / (2.0 * c.y * c.y) - m) / total;
        for (var j = 0u; j < d; j++) { velocity[n * d + j] += w * data[k * d + j]; }
    }
    for (var j = 0u; j < d; j++) {
        let i = n * d + j;
        let ex0 = velocity[i];
        velocity[i] = c.z * ex0 + c.w * (oracle_z[i] - c.x * ex0) / c.y;
    }
}
