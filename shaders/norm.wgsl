// Row-wise normalisations over the last dimension, forward and backward side by side:
// LayerNorm (optionally affine), RMSNorm with a learnable scale, and softmax.
// One row per invocation, no workgroup memory: rows are short (the model width) and there are
// many of them, and a barrier-free kernel is fast on CPU drivers too.
//
// Forward saves per-row statistics (mean and 1/std, or 1/rms) for the backward pass. The
// backward writes dx and, for the affine forms, the per-row products dy * xhat whose column sums
// (taken by reduce.wgsl) are the gradients of the scale and shift.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    affine: u32,  // 1: LayerNorm has gamma and beta
    heads: u32,   // qk_norm: heads per row
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;       // input (forward) / input (backward)
@group(0) @binding(1) var<storage, read> gamma: array<f32>;   // scale [cols] (without affine: the absent-input buffer, not read)
@group(0) @binding(2) var<storage, read> beta: array<f32>;    // shift [cols] (likewise)
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // output
@group(0) @binding(4) var<storage, read_write> stats: array<f32>; // [rows, 2]: mean, rstd
@group(1) @binding(0) var<uniform> params: Params;

// Backward bindings.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> bw_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> bw_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<storage, read_write> dy_xhat: array<f32>; // [rows, cols] (affine only)

const WG: u32 = 64u;

fn row_of(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return workgroup_index(wid, nwg) * WG + lid;
}

// y = (x - mean) * rstd * gamma + beta
@compute @workgroup_size(WG)
fn layer_norm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    var mean = 0.0;
    for (var j = 0u; j < params.cols; j++) { mean += x[base + j]; }
    mean /= f32(params.cols);
    // Two passes over the row: the centred sum of squares does not cancel catastrophically.
    var var_ = 0.0;
    for (var j = 0u; j < params.cols; j++) { let d = x[base + j] - mean; var_ += d * d; }
    let rstd = inverseSqrt(var_ / f32(params.cols) + params.eps);
    for (var j = 0u; j < params.cols; j++) {
        var v = (x[base + j] - mean) * rstd;
        if (params.affine == 1u) { v = v * gamma[j] + beta[j]; }
        y[base + j] = v;
    }
    stats[2u * row] = mean;
    stats[2u * row + 1u] = rstd;
}

// dxhat = dy * gamma;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// Two entries: without affine parameters (gamma and dy_xhat left out), and with them (writing
// dy * xhat, whose column sums are gamma's gradient).
@compute @workgroup_size(WG)
fn layer_norm_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    let mean = bw_stats[2u * row];
    let rstd = bw_stats[2u * row + 1u];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var j = 0u; j < params.cols; j++) {
        let xhat = (x[base + j] - mean) * rstd;
        let g = dy[base + j];
        sum_g += g;
        sum_gx += g * xhat;
    }
    let n = f32(params.cols);
    for (var j = 0u; j < params.cols; j++) {
        let xhat = (x[base + j] - mean) * rstd;
        let g = dy[base + j];
        dx[base + j] = rstd * (g - sum_g / n - xhat * sum_gx / n);
    }
}

@compute @workgroup_size(WG)
fn layer_norm_backward_affine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    let mean = bw_stats[2u * row];
    let rstd = bw_stats[2u * row + 1u];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var j = 0u; j < params.cols; j++) {
        let xhat = (x[base + j] - mean) * rstd;
        var g = dy[base + j];
        dy_xhat[base + j] = g * xhat;
        g *= bw_gamma[j];
        sum_g += g;
        sum_gx += g * xhat;
    }
    let n = f32(params.cols);
    for (var j = 0u; j < params.cols; j++) {
        let xhat = (x[base + j] - mean) * rstd;
        let g = dy[base + j] * bw_gamma[j];
        dx[base + j] = rstd * (g - sum_g / n - xhat * sum_gx / n);
    }
}

// y = x * rrms * gamma, rrms = 1 / sqrt(mean(x^2) + eps)
@compute @workgroup_size(WG)
fn rms_norm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    var ss = 0.0;
    for (var j = 0u; j < params.cols; j++) { ss += x[base + j] * x[base + j]; }
    let rrms = inverseSqrt(ss / f32(params.cols) + params.eps);
    for (var j = 0u; j < params.cols; j++) { y[base + j] = x[base + j] * rrms * gamma[j]; }
    stats[2u * row] = 0.0;
    stats[2u * row + 1u] = rrms;
}

// dxhat = dy * gamma;  dx = rrms * (dxhat - xhat * mean(dxhat * xhat))
@compute @workgroup_size(WG)
fn rms_norm_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    let rrms = bw_stats[2u * row + 1u];
    var sum_gx = 0.0;
    for (var j = 0u; j < params.cols; j++) {
        let xhat = x[base + j] * rrms;
        let g = dy[base + j];
        dy_xhat[base + j] = g * xhat;
        sum_gx += g * bw_gamma[j] * xhat;
    }
    let n = f32(params.cols);
    for (var j = 0u; j < params.cols; j++) {
        let xhat = x[base + j] * rrms;
        dx[base + j] = rrms * (dy[base + j] * bw_gamma[j] - xhat * sum_gx / n);
    }
}

// y = exp(x - max) / sum(exp(x - max)); stats = (max, 1 / sum)
@compute @workgroup_size(WG)
fn softmax(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    var m = x[base];
    for (var j = 1u; j < params.cols; j++) { m = max(m, x[base + j]); }
    var s = 0.0;
    for (var j = 0u; j < params.cols; j++) { s += exp(x[base + j] - m); }
    let inv = 1.0 / s;
    for (var j = 0u; j < params.cols; j++) { y[base + j] = exp(x[base + j] - m) * inv; }
    stats[2u * row] = m;
    stats[2u * row + 1u] = inv;
}

// dx = y * (dy - sum(dy * y)), with y (the forward output) bound in place of x.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(lid, wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    var s = 0.0;
    for (var j = 0u; j < params.cols; j++) { s += dy[base + j] * x[base + j]; }
    for (var j = 0u; j < params.cols; j++) { dx[base + j] = x[base + j] * (dy[base + j] - s); }
}

// ---- QK-norm: RMSNorm of every head's query and key inside a qkv row, values passed on ----
// qkv is [rows, 3, H, D] (a linear layer's output); the result has the same layout, so the
// attention kernel reads it as it is. One invocation per (row, head); scales gq, gk are [D].
// The backward writes d(qkv) and the products dy * xhat of queries and keys ([rows H, D] each)
// whose column sums are the gradients of gq and gk.

@group(0) @binding(0) var<storage, read> qk_x: array<f32>;
@group(0) @binding(1) var<storage, read> qk_dy: array<f32>;
@group(0) @binding(2) var<storage, read> qk_gq: array<f32>;
@group(0) @binding(3) var<storage, read> qk_gk: array<f32>;
@group(0) @binding(4) var<storage, read> qk_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> qk_dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> qk_prod_q: array<f32>;
@group(0) @binding(7) var<storage, read_write> qk_prod_k: array<f32>;

// Element 0 of part p (0 q, 1 k, 2 v) of head h in row r.
fn qk_at(r: u32, p: u32, h: u32) -> u32 {
    return ((r * 3u + p) * params.heads + h) * params.cols;
}

// Forward bindings: x (0), gq (1, as gamma), gk (2, as beta), y (3), stats (4): [rows H, 2],
// 1/rms of the query and of the key.
@compute @workgroup_size(WG)
fn qk_norm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = row_of(lid, wid, nwg);
    if (id >= params.rows * params.heads) { return; }
    let r = id / params.heads;
    let h = id % params.heads;
    let d = params.cols;
    for (var p = 0u; p < 2u; p++) {
        let base = qk_at(r, p, h);
        var ss = 0.0;
        for (var c = 0u; c < d; c++) { ss += x[base + c] * x[base + c]; }
        let rrms = inverseSqrt(ss / f32(d) + params.eps);
        for (var c = 0u; c < d; c++) {
            var g: f32;
            if (p == 0u) { g = gamma[c]; } else { g = beta[c]; }
            y[base + c] = x[base + c] * rrms * g;
        }
        stats[2u * id + p] = rrms;
    }
    let vb = qk_at(r, 2u, h);
    for (var c = 0u; c < d; c++) { y[vb + c] = x[vb + c]; }
}

@compute @workgroup_size(WG)
fn qk_norm_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = row_of(lid, wid, nwg);
    if (id >= params.rows * params.heads) { return; }
    let r = id / params.heads;
    let h = id % params.heads;
    let d = params.cols;
    for (var p = 0u; p < 2u; p++) {
        let base = qk_at(r, p, h);
        let rrms = qk_stats[2u * id + p];
        var sum_gx = 0.0;
        for (var c = 0u; c < d; c++) {
            var g: f32;
            if (p == 0u) { g = qk_gq[c]; } else { g = qk_gk[c]; }
            let xhat = qk_x[base + c] * rrms;
            let dy = qk_dy[base + c];
            if (p == 0u) { qk_prod_q[id * d + c] = dy * xhat; } else { qk_prod_k[id * d + c] = dy * xhat; }
            sum_gx += dy * g * xhat;
        }
        let m = sum_gx / f32(d);
        for (var c = 0u; c < d; c++) {
            var g: f32;
            if (p == 0u) { g = qk_gq[c]; } else { g = qk_gk[c]; }
            let xhat = qk_x[base + c] * rrms;
            qk_dx[base + c] = rrms * (qk_dy[base + c] * g - xhat * m);
        }
    }
    let vb = qk_at(r, 2u, h);
    for (var c = 0u; c < d; c++) { qk_dx[vb + c] = qk_dy[vb + c]; }
}
