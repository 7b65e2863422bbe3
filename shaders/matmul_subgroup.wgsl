// Matrix multiply for CPU drivers with subgroups of 8 (lavapipe): the same contract as
// matmul.wgsl (batched op(A) op(B), alpha, bias, activation, accumulate; the same Params).
//
// Why: a CPU driver runs 8 invocations as the lanes of one SIMD register. Arithmetic is then
// cheap, but a load from a buffer is not (tens of cycles per load instruction, whether its
// address is uniform or not), and a lane's data can only come from a load. So each lane loads
// *different* data, and `subgroupShuffle` (a register permute on such a driver) hands it to the
// other lanes: every loaded value then serves 8 lanes. Measured: 2-4x the barrier-free lanes
// kernel for A B^T, on a par or better elsewhere (docs/performance.md).
//
// One subgroup computes a TM x 32 tile of C: lane l owns the 4 columns n0 + 4 l .. + 4 (one vec4)
// of all TM rows. Per step of 4 along K each lane loads 4 vec4 of B (its columns at those 4 k)
// and TM / 8 vec4 of A, which the shuffles spread: TM / 8 + 4 loads for 16 TM multiply-adds.
// Operands whose contiguous dimension is a multiple of 4 are read as vec4s, others element by
// element (A_VEC4, B_VEC4; an element is picked out of its vec4, since bindings are padded to
// whole vec4s), and C is written as vec4s when N is a multiple of 4 (C_VEC4), so any shape runs
// here; edge rows and columns are computed from clamped indices, never stored. The auxiliary
// tensor (AUX, as in matmul.wgsl) is read and written at C's indices; with AUX_ROW_SUMS (this
// kernel only) it is `[batch, M]` and gets the sums of op(A)'s rows over K (not scaled): a
// linear layer's bias gradient (the sum of dY over tokens) beside its weight gradient dY^T X,
// from the A values the product loads anyway.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    tiles_m: u32,
    tiles_n: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

// How A and B are stored: f32 here; the f16 variants (src/shaders.rs) make either f16. Every
// load converts to f32, so registers, accumulators and C stay f32.
alias A_ELEM = f32;
alias B_ELEM = f32;

@group(0) @binding(0) var<storage, read> a4: array<vec4<A_ELEM>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<B_ELEM>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> aux4: array<vec4<f32>>;
@group(1) @binding(0) var<uniform> params: Params;

// Element i of an operand seen as vec4s (bindings are padded to whole vec4s).
fn a_at(i: u32) -> f32 { return f32(a4[i / 4u][i % 4u]); }
fn b_at(i: u32) -> f32 { return f32(b4[i / 4u][i % 4u]); }

override TM: u32 = 32u;     // rows per subgroup tile: 8, 16 or 32
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;     // ACT_NONE, ACT_GELU (tanh) or ACT_SILU (activation.wgsl)
override ACCUMULATE: bool = false;
override AUX: u32 = 0u;     // AUX_NONE, AUX_SAVE_PRE, AUX_ACT_GRAD or AUX_ROW_SUMS
override A_VEC4: bool = true;
override B_VEC4: bool = true;
override C_VEC4: bool = true;
// Store C transposed: this kernel then computes C^T = op(B)^T op(A)^T for a narrow C (its
// rows, M here, are C's columns; the bias runs along them).
override TRANS_C: bool = false;

const LANES: u32 = 8u;

var<private> acc: array<vec4<f32>, 32>;  // row i of the tile, this lane's 4 columns
var<private> a_reg: array<vec4<f32>, 4>; // TM / 8 vec4 of A (which rows and k: see below)
var<private> b_reg: array<vec4<f32>, 4>; // this lane's 4 columns at k0 + q
var<private> row_sums: array<f32, 32>;   // AUX_ROW_SUMS: row i of op(A) summed over K so far

// act(v), finish(v, p): the library activation.wgsl.

// Element i of the output and the auxiliary tensor: finish and store it (any layout).
// With AUX_SAVE_PRE, ACCUMULATE adds C's old value to the pre-activation (matmul.wgsl).
fn store_element(e: u32, v: f32) {
    var p = 0.0;
    var pre = v;
    if (ACCUMULATE && AUX == AUX_SAVE_PRE) { pre += c4[e / 4u][e % 4u]; }
    if (AUX == AUX_SAVE_PRE) { aux4[e / 4u][e % 4u] = pre; }
    if (AUX == AUX_ACT_GRAD) { p = aux4[e / 4u][e % 4u]; }
    let out = finish(pre, p);
    if (ACCUMULATE && AUX != AUX_SAVE_PRE) { c4[e / 4u][e % 4u] += out; } else { c4[e / 4u][e % 4u] = out; }
}

// Loads of four consecutive elements along an operand's contiguous dimension: one vec4 where
// that dimension is a multiple of 4, else four elements. Indices past the edge are clamped
// (rows and columns: computed, never stored) or read as 0 (k past K).

// A stored M x K: row m (clamped) at k0 .. k0 + 4.
fn load_a_row(base: u32, m: u32, k0: u32) -> vec4<f32> {
    let K = params.k;
    let at = base + min(m, params.m - 1u) * K + k0;
    if (A_VEC4) { return vec4<f32>(a4[at / 4u]); }
    var v: vec4<f32>;
    for (var j = 0u; j < 4u; j++) { v[j] = select(0.0, a_at(at + j), k0 + j < K); }
    return v;
}

// A stored K x M: rows m .. m + 4 (clamped) at k (0 past K).
fn load_a_rows(base: u32, k: u32, m: u32) -> vec4<f32> {
    let M = params.m;
    let at = base + min(k, params.k - 1u) * M;
    var v: vec4<f32>;
    if (A_VEC4) {
        v = vec4<f32>(a4[(at + min(m, M - 4u)) / 4u]);
    } else {
        for (var j = 0u; j < 4u; j++) { v[j] = a_at(at + min(m + j, M - 1u)); }
    }
    return select(v, vec4(0.0), k >= params.k);
}

// B stored N x K: column n (clamped) at k0 .. k0 + 4.
fn load_b_row(base: u32, n: u32, k0: u32) -> vec4<f32> {
    let K = params.k;
    let at = base + min(n, params.n - 1u) * K + k0;
    if (B_VEC4) { return vec4<f32>(b4[at / 4u]); }
    var v: vec4<f32>;
    for (var j = 0u; j < 4u; j++) { v[j] = select(0.0, b_at(at + j), k0 + j < K); }
    return v;
}

// B stored K x N: columns n .. n + 4 (clamped) at k (0 past K).
fn load_b_cols(base: u32, k: u32, n: u32) -> vec4<f32> {
    let N = params.n;
    let at = base + min(k, params.k - 1u) * N;
    var v: vec4<f32>;
    if (B_VEC4) {
        v = vec4<f32>(b4[(at + min(n, N - 4u)) / 4u]);
    } else {
        for (var j = 0u; j < 4u; j++) { v[j] = b_at(at + min(n + j, N - 1u)); }
    }
    return select(v, vec4(0.0), k >= params.k);
}

// The products of one K step for row `i` of the tile, whose A values at k0 .. k0 + 4 are the
// broadcasts `av`: summed in registers first, so an accumulator (which lives in memory on a CPU
// driver, and whose update in a loop is masked) is read and written once per 4 multiply-adds.
fn row_step(i: u32, av: vec4<f32>) {
    acc[i] += fma(vec4(av.x), b_reg[0], fma(vec4(av.y), b_reg[1],
              fma(vec4(av.z), b_reg[2], vec4(av.w) * b_reg[3])));
    if (AUX == AUX_ROW_SUMS) { row_sums[i] += (av.x + av.y) + (av.z + av.w); }
}

@compute @workgroup_size(8)
fn matmul_subgroup(@builtin(subgroup_invocation_id) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = workgroup_index(wid, nwg);
    let per_batch = params.tiles_m * params.tiles_n;
    let item = g / per_batch;
    if (item >= params.batch) { return; }
    let r = g % per_batch;
    let m0 = (r / params.tiles_n) * TM;
    let n0 = (r % params.tiles_n) * (4u * LANES);
    let a_base = item * params.a_stride;
    let b_base = item * params.b_stride;
    let c_base = item * params.c_stride;
    let M = params.m;
    let N = params.n;
    let K = params.k;
    for (var k0 = 0u; k0 < K; k0 += 4u) {
        // B at k0 .. k0 + 4 for this lane's columns; k past K reads as 0.
        let n = n0 + 4u * lane;
        if (TRANS_B) {
            // Stored N x K: four consecutive k of each column, transposed in registers.
            let r0 = load_b_row(b_base, n, k0);
            let r1 = load_b_row(b_base, n + 1u, k0);
            let r2 = load_b_row(b_base, n + 2u, k0);
            let r3 = load_b_row(b_base, n + 3u, k0);
            b_reg[0] = vec4(r0.x, r1.x, r2.x, r3.x);
            b_reg[1] = vec4(r0.y, r1.y, r2.y, r3.y);
            b_reg[2] = vec4(r0.z, r1.z, r2.z, r3.z);
            b_reg[3] = vec4(r0.w, r1.w, r2.w, r3.w);
        } else {
            for (var q = 0u; q < 4u; q++) {
                b_reg[q] = load_b_cols(b_base, k0 + q, n);
            }
        }
        // A: TM rows x 4 k, TM / 8 vec4 per lane.
        for (var v = 0u; v < TM / LANES; v++) {
            if (TRANS_A) {
                // Stored K x M: vec4 number e = 8 v + lane holds rows m0 + 4 (e % (TM / 4)) .. + 4
                // at k0 + e / (TM / 4).
                let e = LANES * v + lane;
                a_reg[v] = load_a_rows(a_base, k0 + e / (TM / 4u), m0 + 4u * (e % (TM / 4u)));
            } else {
                // Stored M x K: vec4 v holds row m0 + 8 v + lane at k0 .. k0 + 4.
                a_reg[v] = load_a_row(a_base, m0 + LANES * v + lane, k0);
            }
        }
        // Small constant loops: the compiler unrolls them, so every index below is a constant
        // and the arrays live in registers.
        if (TRANS_A) {
            // Row 4 j + x at k0 + q is component x of vec4 number e = q (TM / 4) + j, which
            // lane e % 8 holds as its a_reg[e / 8].
            for (var j = 0u; j < TM / 4u; j++) {
                for (var x = 0u; x < 4u; x++) {
                    var av: vec4<f32>;
                    for (var q = 0u; q < 4u; q++) {
                        let e = q * (TM / 4u) + j;
                        av[q] = subgroupShuffle(a_reg[e / LANES][x], e % LANES);
                    }
                    row_step(4u * j + x, av);
                }
            }
        } else {
            // Row 8 v + s at k0 .. k0 + 4 is lane s's vec4 v.
            for (var v = 0u; v < TM / LANES; v++) {
                let x = a_reg[v];
                for (var s = 0u; s < LANES; s++) {
                    let av = vec4(subgroupShuffle(x.x, s), subgroupShuffle(x.y, s),
                                  subgroupShuffle(x.z, s), subgroupShuffle(x.w, s));
                    row_step(LANES * v + s, av);
                }
            }
        }
    }
    if (AUX == AUX_ROW_SUMS && n0 == 0u && lane == 0u) {
        // Every lane holds the same sums (A's values are broadcast): one writes them, in the
        // first column tile.
        for (var i = 0u; i < TM; i++) {
            let row = m0 + i;
            if (row < M) {
                let e = item * M + row;
                if (ACCUMULATE) {
                    aux4[e / 4u][e % 4u] += row_sums[i];
                } else {
                    aux4[e / 4u][e % 4u] = row_sums[i];
                }
            }
        }
    }
    let own = n0 + 4u * lane;
    if (own >= N) { return; }
    var bv = vec4(0.0);
    if (HAS_BIAS && !TRANS_C) {
        bv = vec4(bias[own], bias[min(own + 1u, N - 1u)], bias[min(own + 2u, N - 1u)],
                  bias[min(own + 3u, N - 1u)]);
    }
    for (var i = 0u; i < TM; i++) {
        let row = m0 + i;
        if (row < M) {
            if (HAS_BIAS && TRANS_C) { bv = vec4(bias[row]); }
            var v = params.alpha * acc[i] + bv;
            if (TRANS_C) {
                // Element (row, own + j) of C^T is element (own + j, row) of C, stored [N, M].
                for (var j = 0u; j < 4u; j++) {
                    if (own + j < N) { store_element(c_base + (own + j) * M + row, v[j]); }
                }
                continue;
            }
            let at = c_base + row * N + own;
            if (C_VEC4) {
                var p = vec4(0.0);
                if (ACCUMULATE && AUX == AUX_SAVE_PRE) { v += c4[at / 4u]; }
                if (AUX == AUX_SAVE_PRE) { aux4[at / 4u] = v; }
                if (AUX == AUX_ACT_GRAD) { p = aux4[at / 4u]; }
                let out = vec4(finish(v.x, p.x), finish(v.y, p.y), finish(v.z, p.z), finish(v.w, p.w));
                if (ACCUMULATE && AUX != AUX_SAVE_PRE) { c4[at / 4u] += out; } else { c4[at / 4u] = out; }
            } else {
                for (var j = 0u; j < 4u; j++) {
                    if (own + j < N) { store_element(at + j, v[j]); }
                }
            }
        }
    }
}
