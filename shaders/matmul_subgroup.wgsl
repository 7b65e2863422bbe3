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
// Needs vec4 access: the contiguous dimension of each operand and N multiples of 4.

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

@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
@group(1) @binding(0) var<uniform> params: Params;

override TM: u32 = 32u;     // rows per subgroup tile: 8, 16 or 32
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;     // 0 none, 1 GELU (tanh), 2 SiLU
override ACCUMULATE: bool = false;

const LANES: u32 = 8u;

var<private> acc: array<vec4<f32>, 32>;  // row i of the tile, this lane's 4 columns
var<private> a_reg: array<vec4<f32>, 4>; // TM / 8 vec4 of A (which rows and k: see below)
var<private> b_reg: array<vec4<f32>, 4>; // this lane's 4 columns at k0 + q

fn act(v: f32) -> f32 {
    if (ACT == 1u) {
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        return 0.5 * v * (1.0 + tanh(u));
    }
    if (ACT == 2u) {
        return v / (1.0 + exp(-v));
    }
    return v;
}

@compute @workgroup_size(8)
fn matmul_subgroup(@builtin(subgroup_invocation_id) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y;
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
    // This lane's columns, clamped in range (columns past N are computed, never stored).
    let col = min(n0 + 4u * lane, N - 4u);
    for (var k0 = 0u; k0 < K; k0 += 4u) {
        // B at k0 .. k0 + 4 for this lane's columns; k past K reads as 0.
        if (TRANS_B) {
            // Stored N x K: four consecutive k of each column, transposed in registers.
            let r0 = b4[(b_base + min(n0 + 4u * lane, N - 1u) * K + k0) / 4u];
            let r1 = b4[(b_base + min(n0 + 4u * lane + 1u, N - 1u) * K + k0) / 4u];
            let r2 = b4[(b_base + min(n0 + 4u * lane + 2u, N - 1u) * K + k0) / 4u];
            let r3 = b4[(b_base + min(n0 + 4u * lane + 3u, N - 1u) * K + k0) / 4u];
            b_reg[0] = vec4(r0.x, r1.x, r2.x, r3.x);
            b_reg[1] = vec4(r0.y, r1.y, r2.y, r3.y);
            b_reg[2] = vec4(r0.z, r1.z, r2.z, r3.z);
            b_reg[3] = vec4(r0.w, r1.w, r2.w, r3.w);
        } else {
            for (var q = 0u; q < 4u; q++) {
                let k = min(k0 + q, K - 1u);
                b_reg[q] = select(b4[(b_base + k * N + col) / 4u], vec4(0.0), k0 + q >= K);
            }
        }
        // A: TM rows x 4 k, TM / 8 vec4 per lane.
        for (var v = 0u; v < TM / LANES; v++) {
            if (TRANS_A) {
                // Stored K x M: vec4 number e = 8 v + lane holds rows m0 + 4 (e % (TM / 4)) .. + 4
                // at k0 + e / (TM / 4).
                let e = LANES * v + lane;
                let q = e / (TM / 4u);
                let k = min(k0 + q, K - 1u);
                let m = min(m0 + 4u * (e % (TM / 4u)), M - 4u);
                a_reg[v] = select(a4[(a_base + k * M + m) / 4u], vec4(0.0), k0 + q >= K);
            } else {
                // Stored M x K: vec4 v holds row m0 + 8 v + lane at k0 .. k0 + 4.
                a_reg[v] = a4[(a_base + min(m0 + LANES * v + lane, M - 1u) * K + k0) / 4u];
            }
        }
        // Small constant loops: the compiler unrolls them, so every index below is a constant
        // and the arrays live in registers.
        for (var q = 0u; q < 4u; q++) {
            let bq = b_reg[q];
            if (TRANS_A) {
                // Rows 4 j .. 4 j + 4 at k0 + q are vec4 number e = q (TM / 4) + j.
                for (var j = 0u; j < TM / 4u; j++) {
                    let e = q * (TM / 4u) + j;
                    let v = a_reg[e / LANES];
                    let src = e % LANES;
                    acc[4u * j] = fma(vec4(subgroupShuffle(v.x, src)), bq, acc[4u * j]);
                    acc[4u * j + 1u] = fma(vec4(subgroupShuffle(v.y, src)), bq, acc[4u * j + 1u]);
                    acc[4u * j + 2u] = fma(vec4(subgroupShuffle(v.z, src)), bq, acc[4u * j + 2u]);
                    acc[4u * j + 3u] = fma(vec4(subgroupShuffle(v.w, src)), bq, acc[4u * j + 3u]);
                }
            } else {
                // Row 8 v + s at k0 + q is component q of lane s's vec4 v.
                for (var v = 0u; v < TM / LANES; v++) {
                    let x = a_reg[v][q];
                    for (var s = 0u; s < LANES; s++) {
                        acc[LANES * v + s] = fma(vec4(subgroupShuffle(x, s)), bq, acc[LANES * v + s]);
                    }
                }
            }
        }
    }
    let own = n0 + 4u * lane;
    if (own >= N) { return; }
    var b = vec4(0.0);
    if (HAS_BIAS) { b = vec4(bias[own], bias[own + 1u], bias[own + 2u], bias[own + 3u]); }
    for (var i = 0u; i < TM; i++) {
        let row = m0 + i;
        if (row < M) {
            let idx = (c_base + row * N + own) / 4u;
            let v = params.alpha * acc[i] + b;
            var out = vec4(act(v.x), act(v.y), act(v.z), act(v.w));
            if (ACCUMULATE) { out += c4[idx]; }
            c4[idx] = out;
        }
    }
}
