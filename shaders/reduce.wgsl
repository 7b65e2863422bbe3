// Row reductions over the last dimension: out[r] = reduce_j x[r, j] for sum, mean and max.
// One workgroup per row: each invocation folds a strided slice of the row, then a tree
// reduction in workgroup memory combines the partial results.

struct Params {
    rows: u32,
    cols: u32,
    tokens: u32,  // sum_tokens only
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// The same bindings as vec4 arrays (sum_tokens_vec4).
@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
// sum_tokens_pair's second input and output (and as vec4 arrays).
@group(0) @binding(2) var<storage, read> x_second: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_second: array<f32>;
@group(0) @binding(2) var<storage, read> x_second4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out_second4: array<vec4<f32>>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 128u;
// OP: OP_SUM, OP_MEAN or OP_MAX (generated from src/shaders.rs).

override OP: u32 = 0u;
override ACCUMULATE: bool = false;  // sum_tokens: add into out instead of overwriting it

var<workgroup> partial: array<f32, WG>;

fn combine(a: f32, b: f32) -> f32 {
    if (OP == OP_MAX) { return max(a, b); }
    return a + b;
}

@compute @workgroup_size(WG)
fn reduce_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = workgroup_index(wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    // -inf is the identity of max (bit pattern; WGSL has no infinity literal).
    var acc = select(0.0, bitcast<f32>(0xff800000u), OP == OP_MAX);
    for (var j = lid; j < params.cols; j += WG) {
        acc = combine(acc, x[base + j]);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] = combine(partial[lid], partial[lid + stride]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var r = partial[0];
        if (OP == OP_MEAN) { r = r / f32(params.cols); }
        out[row] = r;
    }
}

// One row per invocation, folded serially: no workgroup memory and no barriers. For CPU drivers
// (where a barrier switches coroutines) and for rows too short to share among a workgroup.
@compute @workgroup_size(64)
fn reduce_rows_serial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = workgroup_index(wid, nwg) * 64u + lid;
    if (row >= params.rows) { return; }
    let base = row * params.cols;
    var acc = select(0.0, bitcast<f32>(0xff800000u), OP == OP_MAX);
    for (var j = 0u; j < params.cols; j++) {
        acc = combine(acc, x[base + j]);
    }
    if (OP == OP_MEAN) { acc = acc / f32(params.cols); }
    out[row] = acc;
}

// Sums over the middle axis: out[b, c] = sum_t x[b, t, c] for x of shape [B, T, C] (rows = B,
// cols = C, and T in the third parameter). One invocation per output; consecutive invocations
// read consecutive columns. Bias gradients are the case B = 1.
@compute @workgroup_size(64)
fn sum_tokens(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = workgroup_index(wid, nwg) * 64u + lid;
    if (e >= params.rows * params.cols) { return; }
    let b = e / params.cols;
    let c = e % params.cols;
    let tokens = params.tokens;
    var acc = 0.0;
    for (var t = 0u; t < tokens; t++) {
        acc += x[(b * tokens + t) * params.cols + c];
    }
    if (ACCUMULATE) { out[e] += acc; } else { out[e] = acc; }
}

// sum_tokens four columns at a time, for C a multiple of 4 (and vec4-aligned bindings): one
// vec4 load per token where the scalar kernel issues four loads (what a CPU driver charges
// for), in the same order, so the sums are the same. SUM_WG invocations per workgroup: a CPU
// driver's SIMD width there, so that a narrow C still spreads over its cores.
override SUM_WG: u32 = 64u;

@compute @workgroup_size(SUM_WG)
fn sum_tokens_vec4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = workgroup_index(wid, nwg) * SUM_WG + lid;
    let c4 = params.cols / 4u;
    if (e >= params.rows * c4) { return; }
    let b = e / c4;
    let c = e % c4;
    let tokens = params.tokens;
    var acc = vec4(0.0);
    for (var t = 0u; t < tokens; t++) {
        acc += x4[(b * tokens + t) * c4 + c];
    }
    if (ACCUMULATE) { out4[e] += acc; } else { out4[e] = acc; }
}

// Two sums over tokens in one dispatch: out[c] = sum_t x[t, c] and out_second[c] =
// sum_t x_second[t, c], both [T, C] (QK-norm's two scale gradients, whose views in the flat
// gradient buffer are not contiguous). Invocation e < C sums the first input's column e, the
// next C the second's.
@compute @workgroup_size(64)
fn sum_tokens_pair(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = workgroup_index(wid, nwg) * 64u + lid;
    let cols = params.cols;
    if (e >= 2u * cols) { return; }
    let second = e >= cols;
    let c = select(e, e - cols, second);
    var acc = 0.0;
    for (var t = 0u; t < params.tokens; t++) {
        if (second) { acc += x_second[t * cols + c]; } else { acc += x[t * cols + c]; }
    }
    if (second) {
        if (ACCUMULATE) { out_second[c] += acc; } else { out_second[c] = acc; }
    } else {
        if (ACCUMULATE) { out[c] += acc; } else { out[c] = acc; }
    }
}

// sum_tokens_pair four columns at a time (C a multiple of 4, vec4-aligned bindings), SUM_WG
// invocations per workgroup as sum_tokens_vec4.
@compute @workgroup_size(SUM_WG)
fn sum_tokens_pair_vec4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = workgroup_index(wid, nwg) * SUM_WG + lid;
    let c4 = params.cols / 4u;
    if (e >= 2u * c4) { return; }
    let second = e >= c4;
    let c = select(e, e - c4, second);
    var acc = vec4(0.0);
    for (var t = 0u; t < params.tokens; t++) {
        if (second) { acc += x_second4[t * c4 + c]; } else { acc += x4[t * c4 + c]; }
    }
    if (second) {
        if (ACCUMULATE) { out_second4[c] += acc; } else { out_second4[c] = acc; }
    } else {
        if (ACCUMULATE) { out4[c] += acc; } else { out4[c] = acc; }
    }
}
