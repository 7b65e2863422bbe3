// adaLN modulation and the gated residual of DiT blocks, forward and backward side by side.
// Activations are [B, T, C]; the per-sample vectors (scale, shift, gate) are [B, C] and broadcast
// over the T tokens of their sample.
//   modulate:  y = x * (1 + scale) + shift
//   gate:      y = x + gate * h
// The backward entries write the input gradient and the product whose sum over tokens (taken by
// reduce.wgsl's sum_tokens) is the gradient of the per-sample vector.

struct Params {
    batch: u32,
    tokens: u32,
    cols: u32,
    chunks: u32,   // the in-place entries below: K, chunks per sample in ada
    chunk_a: u32,  // shift (ln_modulate) or gate (ada_gate)
    chunk_b: u32,  // scale (ln_modulate)
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;      // x (forward) or dy (backward)
@group(0) @binding(1) var<storage, read> h: array<f32>;      // h (gate), saved x / h (backward)
@group(0) @binding(2) var<storage, read> s: array<f32>;      // scale or gate, [B, C]
@group(0) @binding(3) var<storage, read> shift: array<f32>;  // shift, [B, C] (forward MODULATE only)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> prod: array<f32>; // dy * saved (modulate_backward)
@group(1) @binding(0) var<uniform> params: Params;

// MODE: MODULATE, MODULATE_BACKWARD, GATE or GATE_BACKWARD (generated from src/shaders.rs).
override MODE: u32 = 0u;
// ln_modulate_backward: add dx into what the output holds (a gradient summed in place).
override ACCUMULATE: bool = false;
// ada_gate_backward: write d_ada whole (zeros outside the gate's chunk) instead of adding into
// it, so that a gradient nothing has reached yet needs no fill pass of its own.
override BEGIN_D_ADA: bool = false;

const WG: u32 = 256u;
const ITEMS: u32 = 4u;

// The per-sample vector element of activation i: sample b, column c.
fn vector_at(i: u32) -> u32 {
    let b = i / (params.tokens * params.cols);
    return b * params.cols + i % params.cols;
}

// MODE MODULATE or GATE.
@compute @workgroup_size(WG)
fn modulate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = params.batch * params.tokens * params.cols;
    let start = workgroup_index(wid, nwg) * WG * ITEMS + lid;
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= n) { return; }
        let sv = vector_at(i);
        switch MODE {
            case MODULATE: { out[i] = x[i] * (1.0 + s[sv]) + shift[sv]; }
            case GATE: { out[i] = x[i] + s[sv] * h[i]; }
            default: {}
        }
    }
}

// MODE MODULATE_BACKWARD or GATE_BACKWARD: x binds dy and h the forward's saved input.
@compute @workgroup_size(WG)
fn modulate_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = params.batch * params.tokens * params.cols;
    let start = workgroup_index(wid, nwg) * WG * ITEMS + lid;
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= n) { return; }
        let sv = vector_at(i);
        switch MODE {
            case MODULATE_BACKWARD: { out[i] = x[i] * (1.0 + s[sv]); prod[i] = x[i] * h[i]; }
            case GATE_BACKWARD: { out[i] = x[i] * s[sv]; prod[i] = x[i] * h[i]; }
            default: {}
        }
    }
}

// ---- adaLN with the conditioning vectors read in place ----
// A DiT block's conditioning is one [B, K C] tensor `ada`, K chunks of C per sample (shift,
// scale, gate, ...). These entries read chunk j of sample b as ada[b K C + j C + c] instead of
// taking a copy of each chunk, and their backward entries add the chunk's gradient into the
// matching columns of d_ada. LayerNorm (no affine, eps from the params) and modulation are
// one pass:
//   ln_modulate:  y = LN(x) (1 + scale) + shift        (saves mean and 1/std per row)
//   ada_gate:     y = x + gate h
// Their backward:
//   ln_modulate_backward:       dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy (1 + scale),
//                               d_shift += sum_t dy,  d_scale += sum_t dy xhat
//   ada_gate_backward:          dh = gate dy,  d_gate += sum_t h dy     (dx is dy itself)

@group(0) @binding(0) var<storage, read> ada_x: array<f32>;          // x, or h for ada_gate_backward
@group(0) @binding(1) var<storage, read> ada_in: array<f32>;         // ada
@group(0) @binding(2) var<storage, read> ada_aux: array<f32>;        // h (ada_gate), stats (backward)
@group(0) @binding(3) var<storage, read> ada_dy: array<f32>;         // dy (backward)
@group(0) @binding(4) var<storage, read_write> ada_out: array<f32>;  // y, dx or dh
@group(0) @binding(5) var<storage, read_write> ada_out2: array<f32>; // stats (forward) or d_ada

const ROWS_WG: u32 = 64u;

// ada[b, chunk j, column c]
fn ada_at(b: u32, j: u32, c: u32) -> u32 {
    return (b * params.chunks + j) * params.cols + c;
}

@compute @workgroup_size(ROWS_WG)
fn ln_modulate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = workgroup_index(wid, nwg) * ROWS_WG + lid;
    if (row >= params.batch * params.tokens) { return; }
    let b = row / params.tokens;
    let n = params.cols;
    let base = row * n;
    var mean = 0.0;
    for (var c = 0u; c < n; c++) { mean += ada_x[base + c]; }
    mean /= f32(n);
    var var_ = 0.0;
    for (var c = 0u; c < n; c++) { let d = ada_x[base + c] - mean; var_ += d * d; }
    let rstd = inverseSqrt(var_ / f32(n) + params.eps);
    for (var c = 0u; c < n; c++) {
        let scale = ada_in[ada_at(b, params.chunk_b, c)];
        let shift = ada_in[ada_at(b, params.chunk_a, c)];
        ada_out[base + c] = (ada_x[base + c] - mean) * rstd * (1.0 + scale) + shift;
    }
    ada_out2[2u * row] = mean;
    ada_out2[2u * row + 1u] = rstd;
}

// One workgroup per sample b: its rows' dx (a row per invocation), then its columns' sums over
// its tokens (a column per invocation). Both only read the forward's values, so one dispatch
// does both with no barrier between.
@compute @workgroup_size(ROWS_WG)
fn ln_modulate_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = workgroup_index(wid, nwg);
    if (b >= params.batch) { return; }
    let n = params.cols;
    for (var t = lid; t < params.tokens; t += ROWS_WG) {
        let row = b * params.tokens + t;
        let base = row * n;
        let mean = ada_aux[2u * row];
        let rstd = ada_aux[2u * row + 1u];
        var sum_g = 0.0;
        var sum_gx = 0.0;
        for (var c = 0u; c < n; c++) {
            let xhat = (ada_x[base + c] - mean) * rstd;
            let g = ada_dy[base + c] * (1.0 + ada_in[ada_at(b, params.chunk_b, c)]);
            sum_g += g;
            sum_gx += g * xhat;
        }
        let mg = sum_g / f32(n);
        let mgx = sum_gx / f32(n);
        for (var c = 0u; c < n; c++) {
            let xhat = (ada_x[base + c] - mean) * rstd;
            let g = ada_dy[base + c] * (1.0 + ada_in[ada_at(b, params.chunk_b, c)]);
            let dx = rstd * (g - mg - xhat * mgx);
            if (ACCUMULATE) { ada_out[base + c] += dx; } else { ada_out[base + c] = dx; }
        }
    }
    for (var c = lid; c < n; c += ROWS_WG) {
        var d_shift = 0.0;
        var d_scale = 0.0;
        for (var t = 0u; t < params.tokens; t++) {
            let row = b * params.tokens + t;
            let xhat = (ada_x[row * n + c] - ada_aux[2u * row]) * ada_aux[2u * row + 1u];
            let dy = ada_dy[row * n + c];
            d_shift += dy;
            d_scale += dy * xhat;
        }
        ada_out2[ada_at(b, params.chunk_a, c)] += d_shift;
        ada_out2[ada_at(b, params.chunk_b, c)] += d_scale;
    }
}

// One row (sample b, token t) per invocation: the gate's index is worked out once per row.
@compute @workgroup_size(ROWS_WG)
fn ada_gate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = workgroup_index(wid, nwg) * ROWS_WG + lid;
    if (row >= params.batch * params.tokens) { return; }
    let gate0 = ada_at(row / params.tokens, params.chunk_a, 0u);
    let base = row * params.cols;
    for (var c = 0u; c < params.cols; c++) {
        ada_out[base + c] = ada_x[base + c] + ada_in[gate0 + c] * ada_aux[base + c];
    }
}

// One invocation per (sample, column): dh for each token, and the gate's gradient summed.
@compute @workgroup_size(ROWS_WG)
fn ada_gate_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = workgroup_index(wid, nwg) * ROWS_WG + lid;
    let n = params.cols;
    if (i >= params.batch * n) { return; }
    let b = i / n;
    let c = i % n;
    let gate = ada_in[ada_at(b, params.chunk_a, c)];
    var d_gate = 0.0;
    for (var t = 0u; t < params.tokens; t++) {
        let at = (b * params.tokens + t) * n + c;
        let dy = ada_dy[at];
        ada_out[at] = gate * dy;
        d_gate += ada_x[at] * dy;
    }
    if (BEGIN_D_ADA) {
        for (var j = 0u; j < params.chunks; j++) {
            ada_out2[ada_at(b, j, c)] = select(0.0, d_gate, j == params.chunk_a);
        }
    } else {
        ada_out2[ada_at(b, params.chunk_a, c)] += d_gate;
    }
}
