// Multi-head scaled dot-product attention, fused, flash-style: forward and backward side by side.
//
// Input `qkv` is [B, T, 3, H, D] (the output of one linear layer: queries, keys, values of every
// head, heads side by side); the output `o` is [B, T, H, D] (heads merged). Heads are split and
// merged by indexing, with no separate permute pass. Softmax is computed online (running max and
// sum), so no T x T matrix ever exists: memory is O(T) per head. The forward saves the row's
// log-sum-exp `lse` [B, H, T]; the backward recomputes the probabilities from it.
//
// One invocation owns one query (forward, dQ) or one key (dK, dV) and keeps its D-vectors in
// registers. A workgroup covers WG consecutive rows of one (sample, head), so all its lanes walk
// the same keys (or queries) in step. With TILED, each block of BLOCK rows of the other side is
// first staged in workgroup memory by the whole workgroup (GPU profile); without, it is read
// straight from memory, where every lane reads the same address (CPU profile: a broadcast).

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,  // = HEAD_DIM (kept for readers of the parameter block)
    scale: f32,   // usually 1 / sqrt(head_dim)
    blocks: u32,  // ceil(tokens / WG)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

// Backward bindings: qkv, o, lse and do are inputs; dqkv ([B, T, 3, H, D]) and delta
// (rowsum(dO * O), [B, H, T]) are written.
@group(0) @binding(1) var<storage, read> bw_o: array<f32>;
@group(0) @binding(2) var<storage, read> bw_lse: array<f32>;
@group(0) @binding(3) var<storage, read> d_o: array<f32>;
@group(0) @binding(4) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
// dQ and dK/dV read delta (attention_backward_delta wrote it).
@group(0) @binding(5) var<storage, read> delta_in: array<f32>;

const WG: u32 = 64u;
const MAX_D: u32 = 128u;
const BLOCK: u32 = 16u;
override TILED: bool = false;
// The head dimension is a pipeline constant, not a parameter: with a constant trip count the
// compiler unrolls the loops over it and keeps the per-invocation vectors in registers.
override HEAD_DIM: u32 = 32u;

var<workgroup> tile_a: array<f32, 2048>;  // BLOCK x MAX_D
var<workgroup> tile_b: array<f32, 2048>;

struct Row {
    b: u32,
    h: u32,
    i: u32,       // this invocation's row (query or key)
    valid: bool,  // i < tokens (invalid lanes still take part in barriers)
    ok: bool,     // the workgroup is inside the grid
}

fn row_of(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> Row {
    let g = workgroup_index(wid, nwg);
    let bh = g / params.blocks;
    let i = (g % params.blocks) * WG + lid;
    return Row(bh / params.heads, bh % params.heads, i, i < params.tokens,
               bh < params.batch * params.heads);
}

// Offset of element 0 of part (0 q, 1 k, 2 v) of token t, head h, sample b in qkv.
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    return (((b * params.tokens + t) * 3u + part) * params.heads + h) * HEAD_DIM;
}

// Offset of element 0 of token t, head h, sample b in o / dO.
fn o_at(b: u32, t: u32, h: u32) -> u32 {
    return ((b * params.tokens + t) * params.heads + h) * HEAD_DIM;
}

fn stat_at(b: u32, h: u32, t: u32) -> u32 {
    return (b * params.heads + h) * params.tokens + t;
}

// Stage rows j0..j0+BLOCK of parts `pa` and `pb` of qkv in workgroup memory. Called by every
// lane of the workgroup, between barriers.
fn stage(r: Row, lid: u32, j0: u32, pa: u32, pb: u32) {
    let d = HEAD_DIM;
    for (var e = lid; e < BLOCK * d; e += WG) {
        let j = j0 + e / d;
        if (j < params.tokens) {
            tile_a[e] = qkv[qkv_at(r.b, j, pa, r.h) + e % d];
            tile_b[e] = qkv[qkv_at(r.b, j, pb, r.h) + e % d];
        }
    }
}

// The same with rows of dO in place of part pb (the dK/dV pass; only it binds dO).
fn stage_with_do(r: Row, lid: u32, j0: u32, pa: u32) {
    let d = HEAD_DIM;
    for (var e = lid; e < BLOCK * d; e += WG) {
        let j = j0 + e / d;
        if (j < params.tokens) {
            tile_a[e] = qkv[qkv_at(r.b, j, pa, r.h) + e % d];
            tile_b[e] = d_o[o_at(r.b, j, r.h) + e % d];
        }
    }
}

// Element c of row jj of the current block of part pa (tile_a) or pb (tile_b), or of dO.
fn elem_a(r: Row, j0: u32, jj: u32, pa: u32, c: u32) -> f32 {
    if (TILED) { return tile_a[jj * HEAD_DIM + c]; }
    return qkv[qkv_at(r.b, j0 + jj, pa, r.h) + c];
}

fn elem_b(r: Row, j0: u32, jj: u32, pb: u32, c: u32) -> f32 {
    if (TILED) { return tile_b[jj * HEAD_DIM + c]; }
    return qkv[qkv_at(r.b, j0 + jj, pb, r.h) + c];
}

fn elem_do(r: Row, j0: u32, jj: u32, c: u32) -> f32 {
    if (TILED) { return tile_b[jj * HEAD_DIM + c]; }
    return d_o[o_at(r.b, j0 + jj, r.h) + c];
}

@compute @workgroup_size(WG)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lid, wid, nwg);
    if (!r.ok) { return; }
    let d = HEAD_DIM;
    let i = min(r.i, params.tokens - 1u);
    var q: array<f32, MAX_D>;
    var acc: array<f32, MAX_D>;
    for (var c = 0u; c < d; c++) { q[c] = qkv[qkv_at(r.b, i, 0u, r.h) + c] * params.scale; acc[c] = 0.0; }
    var m = bitcast<f32>(0xff800000u); // -inf
    var l = 0.0;
    for (var j0 = 0u; j0 < params.tokens; j0 += BLOCK) {
        if (TILED) { stage(r, lid, j0, 1u, 2u); workgroupBarrier(); }
        let jn = min(BLOCK, params.tokens - j0);
        for (var jj = 0u; jj < jn; jj++) {
            var s = 0.0;
            for (var c = 0u; c < d; c++) { s += q[c] * elem_a(r, j0, jj, 1u, c); }
            let m_new = max(m, s);
            let correction = exp(m - m_new);
            let p = exp(s - m_new);
            l = l * correction + p;
            for (var c = 0u; c < d; c++) { acc[c] = acc[c] * correction + p * elem_b(r, j0, jj, 2u, c); }
            m = m_new;
        }
        if (TILED) { workgroupBarrier(); }
    }
    if (r.valid) {
        for (var c = 0u; c < d; c++) { o[o_at(r.b, r.i, r.h) + c] = acc[c] / l; }
        lse[stat_at(r.b, r.h, r.i)] = m + log(l);
    }
}

// delta[b, h, i] = sum_c dO[b, i, h, c] * O[b, i, h, c]
@compute @workgroup_size(WG)
fn attention_backward_delta(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lid, wid, nwg);
    if (!r.ok || !r.valid) { return; }
    var s = 0.0;
    for (var c = 0u; c < HEAD_DIM; c++) {
        let at = o_at(r.b, r.i, r.h) + c;
        s += d_o[at] * bw_o[at];
    }
    delta[stat_at(r.b, r.h, r.i)] = s;
}

// dQ_i = scale * sum_j p_ij (dO_i . V_j - delta_i) K_j
@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lid, wid, nwg);
    if (!r.ok) { return; }
    let d = HEAD_DIM;
    let i = min(r.i, params.tokens - 1u);
    var q: array<f32, MAX_D>;
    var g: array<f32, MAX_D>;
    var dq: array<f32, MAX_D>;
    for (var c = 0u; c < d; c++) {
        q[c] = qkv[qkv_at(r.b, i, 0u, r.h) + c] * params.scale;
        g[c] = d_o[o_at(r.b, i, r.h) + c];
        dq[c] = 0.0;
    }
    let lse_i = bw_lse[stat_at(r.b, r.h, i)];
    let delta_i = delta_in[stat_at(r.b, r.h, i)];
    for (var j0 = 0u; j0 < params.tokens; j0 += BLOCK) {
        if (TILED) { stage(r, lid, j0, 1u, 2u); workgroupBarrier(); }
        let jn = min(BLOCK, params.tokens - j0);
        for (var jj = 0u; jj < jn; jj++) {
            var s = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < d; c++) {
                s += q[c] * elem_a(r, j0, jj, 1u, c);
                dp += g[c] * elem_b(r, j0, jj, 2u, c);
            }
            let ds = exp(s - lse_i) * (dp - delta_i);
            for (var c = 0u; c < d; c++) { dq[c] += ds * elem_a(r, j0, jj, 1u, c); }
        }
        if (TILED) { workgroupBarrier(); }
    }
    if (r.valid) {
        for (var c = 0u; c < d; c++) { dqkv[qkv_at(r.b, r.i, 0u, r.h) + c] = dq[c] * params.scale; }
    }
}

// For key j:  dV_j = sum_i p_ij dO_i,   dK_j = scale * sum_i p_ij (dO_i . V_j - delta_i) Q_i
@compute @workgroup_size(WG)
fn attention_backward_dkv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = row_of(lid, wid, nwg);
    if (!r.ok) { return; }
    let d = HEAD_DIM;
    let j = min(r.i, params.tokens - 1u);
    var k: array<f32, MAX_D>;
    var v: array<f32, MAX_D>;
    var dk: array<f32, MAX_D>;
    var dv: array<f32, MAX_D>;
    for (var c = 0u; c < d; c++) {
        k[c] = qkv[qkv_at(r.b, j, 1u, r.h) + c] * params.scale;
        v[c] = qkv[qkv_at(r.b, j, 2u, r.h) + c];
        dk[c] = 0.0;
        dv[c] = 0.0;
    }
    for (var i0 = 0u; i0 < params.tokens; i0 += BLOCK) {
        // Stage queries (part 0) and their output gradients (3 = dO).
        if (TILED) { stage_with_do(r, lid, i0, 0u); workgroupBarrier(); }
        let in_ = min(BLOCK, params.tokens - i0);
        for (var ii = 0u; ii < in_; ii++) {
            let i = i0 + ii;
            var s = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < d; c++) {
                s += k[c] * elem_a(r, i0, ii, 0u, c);
                dp += v[c] * elem_do(r, i0, ii, c);
            }
            let p = exp(s - bw_lse[stat_at(r.b, r.h, i)]);
            let ds = p * (dp - delta_in[stat_at(r.b, r.h, i)]);
            for (var c = 0u; c < d; c++) {
                dv[c] += p * elem_do(r, i0, ii, c);
                dk[c] += ds * elem_a(r, i0, ii, 0u, c);
            }
        }
        if (TILED) { workgroupBarrier(); }
    }
    if (r.valid) {
        for (var c = 0u; c < d; c++) {
            dqkv[qkv_at(r.b, r.i, 1u, r.h) + c] = dk[c] * params.scale;
            dqkv[qkv_at(r.b, r.i, 2u, r.h) + c] = dv[c];
        }
    }
}
