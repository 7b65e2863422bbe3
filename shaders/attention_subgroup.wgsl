// Multi-head attention for CPU drivers with subgroups of 8 (lavapipe): the same contract as
// attention.wgsl (qkv [B, T, 3, H, D] in, o [B, T, H, D] and the row log-sum-exp [B, H, T] out;
// the backward writes dqkv and delta = rowsum(dO * O)), for head dimensions that are multiples
// of 4.
//
// Why a second design: a CPU driver runs 8 invocations as the lanes of one SIMD register, where a
// load from memory costs tens of cycles per instruction whether or not its address is shared, and
// arithmetic is cheap. The lanes design reads every key and value element with its own load in
// every lane. Here each lane of a subgroup owns one query (forward, dQ) or one key (dK, dV); the
// subgroup walks the other side 8 rows at a time, each lane loading one row as vec4s, and
// `subgroupShuffle` hands the rows to the other lanes: one load serves 8 lanes, and scores of a
// block of 8 are computed before one softmax rescale.
//
// One workgroup is one subgroup: 8 rows of one (sample, head).

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
    blocks: u32,  // ceil(tokens / 8)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

// Backward bindings: qkv, o, lse and dO in; dqkv and delta out.
@group(0) @binding(1) var<storage, read> bw_o: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bw_lse: array<f32>;
@group(0) @binding(3) var<storage, read> d_o: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dqkv: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
// dK/dV reads delta (attention_subgroup_dq wrote it).
@group(0) @binding(5) var<storage, read> delta_in: array<f32>;

const LANES: u32 = 8u;
const MAX_D4: u32 = 32u;
// The head dimension, a multiple of 4 (a pipeline constant, so loops over it unroll).
override HEAD_DIM: u32 = 32u;
override D4: u32 = HEAD_DIM / 4u;

// This lane's own row (query or key) and its running results, D4 vec4s each.
var<private> mine_a: array<vec4<f32>, MAX_D4>;
var<private> mine_b: array<vec4<f32>, MAX_D4>;
var<private> acc_a: array<vec4<f32>, MAX_D4>;
var<private> acc_b: array<vec4<f32>, MAX_D4>;
// The row of the other side this lane loaded for the current block of 8, shared by shuffles.
var<private> other_a: array<vec4<f32>, MAX_D4>;
var<private> other_b: array<vec4<f32>, MAX_D4>;

struct Row {
    b: u32,
    h: u32,
    i: u32,       // this lane's row
    valid: bool,  // i < tokens (invalid lanes still compute, to take part in the shuffles)
    ok: bool,     // the workgroup is inside the grid
}

fn row_of(lane: u32, wid: vec3<u32>, nwg: vec3<u32>) -> Row {
    let g = workgroup_index(wid, nwg);
    let bh = g / params.blocks;
    let i = (g % params.blocks) * LANES + lane;
    return Row(bh / params.heads, bh % params.heads, i, i < params.tokens,
               bh < params.batch * params.heads);
}

// vec4 index of element 0 of part (0 q, 1 k, 2 v) of token t in qkv, and of token t in o / dO.
fn qkv_at(r: Row, t: u32, part: u32) -> u32 {
    return (((r.b * params.tokens + t) * 3u + part) * params.heads + r.h) * D4;
}
fn o_at(r: Row, t: u32) -> u32 {
    return ((r.b * params.tokens + t) * params.heads + r.h) * D4;
}
fn stat_at(r: Row, t: u32) -> u32 {
    return (r.b * params.heads + r.h) * params.tokens + t;
}

const NEG_INF: f32 = -3.4028235e38;

// Dot products of `mine` with the 8 rows of the block (row j held by lane j), in one pass.
struct Eight {
    v0: f32, v1: f32, v2: f32, v3: f32, v4: f32, v5: f32, v6: f32, v7: f32,
}

fn dots_a() -> Eight {
    var e = Eight(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var c = 0u; c < D4; c++) {
        let x = mine_a[c];
        let y = other_a[c];
        e.v0 += dot(x, subgroupShuffle(y, 0u));
        e.v1 += dot(x, subgroupShuffle(y, 1u));
        e.v2 += dot(x, subgroupShuffle(y, 2u));
        e.v3 += dot(x, subgroupShuffle(y, 3u));
        e.v4 += dot(x, subgroupShuffle(y, 4u));
        e.v5 += dot(x, subgroupShuffle(y, 5u));
        e.v6 += dot(x, subgroupShuffle(y, 6u));
        e.v7 += dot(x, subgroupShuffle(y, 7u));
    }
    return e;
}

fn dots_b() -> Eight {
    var e = Eight(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var c = 0u; c < D4; c++) {
        let x = mine_b[c];
        let y = other_b[c];
        e.v0 += dot(x, subgroupShuffle(y, 0u));
        e.v1 += dot(x, subgroupShuffle(y, 1u));
        e.v2 += dot(x, subgroupShuffle(y, 2u));
        e.v3 += dot(x, subgroupShuffle(y, 3u));
        e.v4 += dot(x, subgroupShuffle(y, 4u));
        e.v5 += dot(x, subgroupShuffle(y, 5u));
        e.v6 += dot(x, subgroupShuffle(y, 6u));
        e.v7 += dot(x, subgroupShuffle(y, 7u));
    }
    return e;
}

// acc_a = acc_a * keep + sum_j w_j other_a[lane j]
fn gather_a(w: Eight, keep: f32) {
    for (var c = 0u; c < D4; c++) {
        let y = other_a[c];
        var a = acc_a[c] * keep;
        a = fma(vec4(w.v0), subgroupShuffle(y, 0u), a);
        a = fma(vec4(w.v1), subgroupShuffle(y, 1u), a);
        a = fma(vec4(w.v2), subgroupShuffle(y, 2u), a);
        a = fma(vec4(w.v3), subgroupShuffle(y, 3u), a);
        a = fma(vec4(w.v4), subgroupShuffle(y, 4u), a);
        a = fma(vec4(w.v5), subgroupShuffle(y, 5u), a);
        a = fma(vec4(w.v6), subgroupShuffle(y, 6u), a);
        a = fma(vec4(w.v7), subgroupShuffle(y, 7u), a);
        acc_a[c] = a;
    }
}

// acc_b += sum_j w_j other_b[lane j]
fn gather_b(w: Eight) {
    for (var c = 0u; c < D4; c++) {
        let y = other_b[c];
        var a = acc_b[c];
        a = fma(vec4(w.v0), subgroupShuffle(y, 0u), a);
        a = fma(vec4(w.v1), subgroupShuffle(y, 1u), a);
        a = fma(vec4(w.v2), subgroupShuffle(y, 2u), a);
        a = fma(vec4(w.v3), subgroupShuffle(y, 3u), a);
        a = fma(vec4(w.v4), subgroupShuffle(y, 4u), a);
        a = fma(vec4(w.v5), subgroupShuffle(y, 5u), a);
        a = fma(vec4(w.v6), subgroupShuffle(y, 6u), a);
        a = fma(vec4(w.v7), subgroupShuffle(y, 7u), a);
        acc_b[c] = a;
    }
}

// Rows j0 + j at or past the end score -inf (weight 0).
fn mask(e: Eight, j0: u32, fill: f32) -> Eight {
    let n = params.tokens;
    return Eight(select(fill, e.v0, j0 < n), select(fill, e.v1, j0 + 1u < n),
                 select(fill, e.v2, j0 + 2u < n), select(fill, e.v3, j0 + 3u < n),
                 select(fill, e.v4, j0 + 4u < n), select(fill, e.v5, j0 + 5u < n),
                 select(fill, e.v6, j0 + 6u < n), select(fill, e.v7, j0 + 7u < n));
}

fn max8(e: Eight) -> f32 {
    return max(max(max(e.v0, e.v1), max(e.v2, e.v3)), max(max(e.v4, e.v5), max(e.v6, e.v7)));
}

fn exp8(e: Eight, m: f32) -> Eight {
    return Eight(exp(e.v0 - m), exp(e.v1 - m), exp(e.v2 - m), exp(e.v3 - m),
                 exp(e.v4 - m), exp(e.v5 - m), exp(e.v6 - m), exp(e.v7 - m));
}

fn sum8(e: Eight) -> f32 {
    return ((e.v0 + e.v1) + (e.v2 + e.v3)) + ((e.v4 + e.v5) + (e.v6 + e.v7));
}

// p_j (dp_j - delta_j) for the block.
fn ds8(p: Eight, dp: Eight, d: Eight) -> Eight {
    return Eight(p.v0 * (dp.v0 - d.v0), p.v1 * (dp.v1 - d.v1), p.v2 * (dp.v2 - d.v2),
                 p.v3 * (dp.v3 - d.v3), p.v4 * (dp.v4 - d.v4), p.v5 * (dp.v5 - d.v5),
                 p.v6 * (dp.v6 - d.v6), p.v7 * (dp.v7 - d.v7));
}

fn splat8(x: f32) -> Eight {
    return Eight(x, x, x, x, x, x, x, x);
}

// The 8 lanes' values of x.
fn spread8(x: f32) -> Eight {
    return Eight(subgroupShuffle(x, 0u), subgroupShuffle(x, 1u), subgroupShuffle(x, 2u),
                 subgroupShuffle(x, 3u), subgroupShuffle(x, 4u), subgroupShuffle(x, 5u),
                 subgroupShuffle(x, 6u), subgroupShuffle(x, 7u));
}

// Load rows t of parts pa into other_a and pb into other_b (part 3: dO).
fn load_other(r: Row, t: u32, pa: u32, pb: u32) {
    let a0 = qkv_at(r, t, pa);
    var b0: u32;
    if (pb == 3u) { b0 = o_at(r, t); } else { b0 = qkv_at(r, t, pb); }
    for (var c = 0u; c < D4; c++) {
        other_a[c] = qkv[a0 + c];
        if (pb == 3u) { other_b[c] = d_o[b0 + c]; } else { other_b[c] = qkv[b0 + c]; }
    }
}

@compute @workgroup_size(8)
fn attention_subgroup(@builtin(subgroup_invocation_id) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lane, wid, nwg);
    if (!r.ok) { return; }
    let n = params.tokens;
    let i = min(r.i, n - 1u);
    let q0 = qkv_at(r, i, 0u);
    for (var c = 0u; c < D4; c++) { mine_a[c] = qkv[q0 + c] * params.scale; }
    var m = NEG_INF;
    var l = 0.0;
    for (var j0 = 0u; j0 < n; j0 += LANES) {
        // other_a: keys, other_b: values of rows j0 .. j0 + 8.
        let j = min(j0 + lane, n - 1u);
        let k0 = qkv_at(r, j, 1u);
        let v0 = qkv_at(r, j, 2u);
        for (var c = 0u; c < D4; c++) {
            other_a[c] = qkv[k0 + c];
            other_b[c] = qkv[v0 + c];
        }
        let s = mask(dots_a(), j0, NEG_INF);
        let m_new = max(m, max8(s));
        let keep = exp(m - m_new);
        let p = mask(exp8(s, m_new), j0, 0.0);
        l = l * keep + sum8(p);
        // acc (in acc_a) = acc * keep + sum_j p_j V_j
        for (var c = 0u; c < D4; c++) {
            let y = other_b[c];
            var a = acc_a[c] * keep;
            a = fma(vec4(p.v0), subgroupShuffle(y, 0u), a);
            a = fma(vec4(p.v1), subgroupShuffle(y, 1u), a);
            a = fma(vec4(p.v2), subgroupShuffle(y, 2u), a);
            a = fma(vec4(p.v3), subgroupShuffle(y, 3u), a);
            a = fma(vec4(p.v4), subgroupShuffle(y, 4u), a);
            a = fma(vec4(p.v5), subgroupShuffle(y, 5u), a);
            a = fma(vec4(p.v6), subgroupShuffle(y, 6u), a);
            a = fma(vec4(p.v7), subgroupShuffle(y, 7u), a);
            acc_a[c] = a;
        }
        m = m_new;
    }
    if (r.valid) {
        let o0 = o_at(r, r.i);
        for (var c = 0u; c < D4; c++) { o[o0 + c] = acc_a[c] / l; }
        lse[stat_at(r, r.i)] = m + log(l);
    }
}

// dQ_i = scale sum_j p_ij (dO_i . V_j - delta_i) K_j, and delta_i = dO_i . O_i on the way.
@compute @workgroup_size(8)
fn attention_subgroup_dq(@builtin(subgroup_invocation_id) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lane, wid, nwg);
    if (!r.ok) { return; }
    let n = params.tokens;
    let i = min(r.i, n - 1u);
    let q0 = qkv_at(r, i, 0u);
    let g0 = o_at(r, i);
    var delta_i = 0.0;
    for (var c = 0u; c < D4; c++) {
        mine_a[c] = qkv[q0 + c] * params.scale;
        let g = d_o[g0 + c];
        mine_b[c] = g;
        delta_i += dot(g, bw_o[g0 + c]);
    }
    let lse_i = bw_lse[stat_at(r, i)];
    for (var j0 = 0u; j0 < n; j0 += LANES) {
        load_other(r, min(j0 + lane, n - 1u), 1u, 2u);
        let s = dots_a();
        let dp = dots_b();
        let p = mask(exp8(s, lse_i), j0, 0.0);
        gather_a(ds8(p, dp, splat8(delta_i)), 1.0);
    }
    if (r.valid) {
        let d0 = qkv_at(r, r.i, 0u);
        for (var c = 0u; c < D4; c++) { dqkv[d0 + c] = acc_a[c] * params.scale; }
        delta[stat_at(r, r.i)] = delta_i;
    }
}

// For key j: dV_j = sum_i p_ij dO_i,  dK_j = scale sum_i p_ij (dO_i . V_j - delta_i) Q_i.
// Needs delta from attention_subgroup_dq.
@compute @workgroup_size(8)
fn attention_subgroup_dkv(@builtin(subgroup_invocation_id) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lane, wid, nwg);
    if (!r.ok) { return; }
    let n = params.tokens;
    let j = min(r.i, n - 1u);
    let k0 = qkv_at(r, j, 1u);
    let v0 = qkv_at(r, j, 2u);
    for (var c = 0u; c < D4; c++) {
        mine_a[c] = qkv[k0 + c] * params.scale;
        mine_b[c] = qkv[v0 + c];
    }
    for (var i0 = 0u; i0 < n; i0 += LANES) {
        // other_a: queries, other_b: their output gradients, rows i0 .. i0 + 8.
        let i = min(i0 + lane, n - 1u);
        load_other(r, i, 0u, 3u);
        let lse_i = spread8(bw_lse[stat_at(r, i)]);
        let delta_i = spread8(delta_in[stat_at(r, i)]);
        let s = dots_a();
        let dp = dots_b();
        let p = mask(Eight(exp(s.v0 - lse_i.v0), exp(s.v1 - lse_i.v1), exp(s.v2 - lse_i.v2),
                           exp(s.v3 - lse_i.v3), exp(s.v4 - lse_i.v4), exp(s.v5 - lse_i.v5),
                           exp(s.v6 - lse_i.v6), exp(s.v7 - lse_i.v7)), i0, 0.0);
        gather_b(p);                       // dV (in acc_b) += p_i dO_i
        gather_a(ds8(p, dp, delta_i), 1.0); // dK (in acc_a) += ds_i Q_i
    }
    if (r.valid) {
        let dk0 = qkv_at(r, r.i, 1u);
        let dv0 = qkv_at(r, r.i, 2u);
        for (var c = 0u; c < D4; c++) {
            dqkv[dk0 + c] = acc_a[c] * params.scale;
            dqkv[dv0 + c] = acc_b[c];
        }
    }
}
