// Tiled matrix multiply with a fused epilogue, batched:
//   C[b] = act(alpha * op(A[b]) op(B[b]) + bias)      (+ C[b] when ACCUMULATE)
// and, with the auxiliary tensor P (same shape as C; see activation.wgsl's AUX): AUX_SAVE_PRE also
// writes the pre-activation to P (with ACCUMULATE, C's old value is part of the pre-activation:
// C = act(C + alpha op(A) op(B) + bias), the sum of several products activated once);
// AUX_ACT_GRAD writes alpha op(A) op(B) act'(P) instead.
// op(A) is A (M x K) or, with TRANS_A, the transpose of a stored K x M matrix; op(B) is B (K x N)
// or, with TRANS_B, the transpose of a stored N x K matrix. A batch stride of 0 shares a matrix
// across the batch (a weight applied to every sample).
//
// Each workgroup computes a BM x BN tile of C. Per step along K it stages a BM x BK slice of
// op(A) and a BK x BN slice of op(B) in workgroup memory, k-major, so that every invocation
// reads its TM rows of A and TN columns of B as vec4s and does TM * TN fused multiply-adds per
// k from registers. Tile shape comes from override constants so it can be tuned per adapter.
// `matmul` loads scalars and handles any shape; `matmul_vec4` loads and stores vec4s and needs
// the contiguous dimension of each operand, and N, to be multiples of 4.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_stride: u32,  // elements between consecutive batch items of A (0 = shared)
    b_stride: u32,
    c_stride: u32,
    tiles_m: u32,   // ceil(m / BM)
    tiles_n: u32,   // ceil(n / BN)
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

// How A and B are stored: f32 here; the f16 variants (src/shaders.rs) make either f16. Every
// load converts to f32, so tiles, accumulators and C stay f32.
alias A_ELEM = f32;
alias B_ELEM = f32;

@group(0) @binding(0) var<storage, read> a: array<A_ELEM>;
@group(0) @binding(1) var<storage, read> b: array<B_ELEM>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> aux: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

// The same bindings seen as vec4 arrays, used by `matmul_vec4` only.
@group(0) @binding(0) var<storage, read> a4: array<vec4<A_ELEM>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<B_ELEM>>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> aux4: array<vec4<f32>>;

override WG_M: u32 = 16u;   // invocations along M
override WG_N: u32 = 16u;   // invocations along N
override TM: u32 = 4u;      // rows of C per invocation: 4 or 8
override TN: u32 = 4u;      // columns of C per invocation: 4 or 8
override BK: u32 = 16u;     // depth of a K step, a multiple of 4
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;     // ACT_NONE, ACT_GELU (tanh) or ACT_SILU (activation.wgsl)
override ACCUMULATE: bool = false;
override AUX: u32 = 0u;     // AUX_NONE, AUX_SAVE_PRE or AUX_ACT_GRAD (activation.wgsl)

override BM: u32 = WG_M * TM;
override BN: u32 = WG_N * TN;
override WG_SIZE: u32 = WG_M * WG_N;
override AS_LEN: u32 = BK * BM / 4u;
override BS_LEN: u32 = BK * BN / 4u;

var<workgroup> As: array<vec4<f32>, AS_LEN>;  // As[kk][m], m fastest, 4 per vec4
var<workgroup> Bs: array<vec4<f32>, BS_LEN>;  // Bs[kk][n], n fastest, 4 per vec4
var<private> acc: array<vec4<f32>, 16>;       // TM x TN/4 accumulators (at most 8 x 2)

struct Tile {
    a_base: u32,
    b_base: u32,
    c_base: u32,
    m0: u32,
    n0: u32,
    valid: bool,
}

// Which tile of which batch item this workgroup computes (the grid may be split over x, y, z).
fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> Tile {
    let g = workgroup_index(wid, nwg);
    let per_batch = params.tiles_m * params.tiles_n;
    let item = g / per_batch;
    let r = g % per_batch;
    return Tile(item * params.a_stride, item * params.b_stride, item * params.c_stride,
                (r / params.tiles_n) * BM, (r % params.tiles_n) * BN, item < params.batch);
}

// act(v), finish(v, p): the library activation.wgsl.

// alpha * sum + bias (the pre-activation) for four consecutive columns starting at `col`.
fn epilogue(sum: vec4<f32>, col: u32) -> vec4<f32> {
    var v = params.alpha * sum;
    if (HAS_BIAS) {
        for (var q = 0u; q < 4u; q++) {
            if (col + q < params.n) { v[q] += bias[col + q]; }
        }
    }
    return v;
}

fn clear_acc() {
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4(0.0); }
}

// TM x TN multiply-adds per k, all operands from workgroup memory into registers.
fn compute_tile(tx: u32, ty: u32) {
    for (var kk = 0u; kk < BK; kk++) {
        var ra: array<vec4<f32>, 2>;
        var rb: array<vec4<f32>, 2>;
        for (var i = 0u; i < TM / 4u; i++) { ra[i] = As[(kk * BM + ty * TM) / 4u + i]; }
        for (var j = 0u; j < TN / 4u; j++) { rb[j] = Bs[(kk * BN + tx * TN) / 4u + j]; }
        for (var i = 0u; i < TM; i++) {
            let av = vec4(ra[i / 4u][i % 4u]);
            for (var j = 0u; j < TN / 4u; j++) {
                acc[i * (TN / 4u) + j] = fma(av, rb[j], acc[i * (TN / 4u) + j]);
            }
        }
    }
}

// ---- scalar path: any shape ----

fn load_scalar(t: Tile, k0: u32, lid: u32) {
    for (var e = lid; e < BM * BK; e += WG_SIZE) {
        var mm: u32;
        var kk: u32;
        // Walk the operand's contiguous dimension with consecutive invocations.
        if (TRANS_A) { mm = e % BM; kk = e / BM; } else { kk = e % BK; mm = e / BK; }
        let m = t.m0 + mm;
        let k = k0 + kk;
        var v = 0.0;
        if (m < params.m && k < params.k) {
            if (TRANS_A) { v = f32(a[t.a_base + k * params.m + m]); } else { v = f32(a[t.a_base + m * params.k + k]); }
        }
        As[(kk * BM + mm) / 4u][mm % 4u] = v;
    }
    for (var e = lid; e < BN * BK; e += WG_SIZE) {
        var nn: u32;
        var kk: u32;
        if (TRANS_B) { kk = e % BK; nn = e / BK; } else { nn = e % BN; kk = e / BN; }
        let n = t.n0 + nn;
        let k = k0 + kk;
        var v = 0.0;
        if (n < params.n && k < params.k) {
            if (TRANS_B) { v = f32(b[t.b_base + n * params.k + k]); } else { v = f32(b[t.b_base + k * params.n + n]); }
        }
        Bs[(kk * BN + nn) / 4u][nn % 4u] = v;
    }
}

fn store_scalar(t: Tile, tx: u32, ty: u32) {
    for (var i = 0u; i < TM; i++) {
        let row = t.m0 + ty * TM + i;
        if (row >= params.m) { break; }
        for (var j = 0u; j < TN / 4u; j++) {
            let col = t.n0 + tx * TN + 4u * j;
            let v = epilogue(acc[i * (TN / 4u) + j], col);
            for (var q = 0u; q < 4u; q++) {
                if (col + q < params.n) {
                    let idx = t.c_base + row * params.n + col + q;
                    var pre = v[q];
                    if (ACCUMULATE && AUX == AUX_SAVE_PRE) { pre += c[idx]; }
                    if (AUX == AUX_SAVE_PRE) { aux[idx] = pre; }
                    var p = 0.0;
                    if (AUX == AUX_ACT_GRAD) { p = aux[idx]; }
                    var out = finish(pre, p);
                    if (ACCUMULATE && AUX != AUX_SAVE_PRE) { out += c[idx]; }
                    c[idx] = out;
                }
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = tile_of(wid, nwg);
    if (!t.valid) { return; }
    let tx = lid % WG_N;
    let ty = lid / WG_N;
    clear_acc();
    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        load_scalar(t, k0, lid);
        workgroupBarrier();
        compute_tile(tx, ty);
        workgroupBarrier();
    }
    store_scalar(t, tx, ty);
}

// ---- vec4 path: contiguous dimensions and N multiples of 4 ----

fn load_vec4(t: Tile, k0: u32, lid: u32) {
    for (var e = lid; e < BM * BK / 4u; e += WG_SIZE) {
        if (TRANS_A) {
            // Stored K x M: four consecutive rows m of one k.
            let mq = e % (BM / 4u);
            let kk = e / (BM / 4u);
            let m = t.m0 + 4u * mq;
            let k = k0 + kk;
            var v = vec4(0.0);
            if (m < params.m && k < params.k) { v = vec4<f32>(a4[(t.a_base + k * params.m + m) / 4u]); }
            As[kk * BM / 4u + mq] = v;
        } else {
            // Stored M x K: four consecutive k of one row m.
            let kq = e % (BK / 4u);
            let mm = e / (BK / 4u);
            let m = t.m0 + mm;
            let k = k0 + 4u * kq;
            var v = vec4(0.0);
            if (m < params.m && k < params.k) { v = vec4<f32>(a4[(t.a_base + m * params.k + k) / 4u]); }
            for (var q = 0u; q < 4u; q++) { As[((4u * kq + q) * BM + mm) / 4u][mm % 4u] = v[q]; }
        }
    }
    for (var e = lid; e < BN * BK / 4u; e += WG_SIZE) {
        if (TRANS_B) {
            // Stored N x K: four consecutive k of one column n.
            let kq = e % (BK / 4u);
            let nn = e / (BK / 4u);
            let n = t.n0 + nn;
            let k = k0 + 4u * kq;
            var v = vec4(0.0);
            if (n < params.n && k < params.k) { v = vec4<f32>(b4[(t.b_base + n * params.k + k) / 4u]); }
            for (var q = 0u; q < 4u; q++) { Bs[((4u * kq + q) * BN + nn) / 4u][nn % 4u] = v[q]; }
        } else {
            // Stored K x N: four consecutive columns n of one k.
            let nq = e % (BN / 4u);
            let kk = e / (BN / 4u);
            let n = t.n0 + 4u * nq;
            let k = k0 + kk;
            var v = vec4(0.0);
            if (n < params.n && k < params.k) { v = vec4<f32>(b4[(t.b_base + k * params.n + n) / 4u]); }
            Bs[kk * BN / 4u + nq] = v;
        }
    }
}

fn store_vec4(t: Tile, tx: u32, ty: u32) {
    for (var i = 0u; i < TM; i++) {
        let row = t.m0 + ty * TM + i;
        if (row >= params.m) { break; }
        for (var j = 0u; j < TN / 4u; j++) {
            let col = t.n0 + tx * TN + 4u * j;
            if (col < params.n) {
                let idx = (t.c_base + row * params.n + col) / 4u;
                var v = epilogue(acc[i * (TN / 4u) + j], col);
                if (ACCUMULATE && AUX == AUX_SAVE_PRE) { v += c4[idx]; }
                if (AUX == AUX_SAVE_PRE) { aux4[idx] = v; }
                var p = vec4(0.0);
                if (AUX == AUX_ACT_GRAD) { p = aux4[idx]; }
                var out = vec4(finish(v.x, p.x), finish(v.y, p.y), finish(v.z, p.z), finish(v.w, p.w));
                if (ACCUMULATE && AUX != AUX_SAVE_PRE) { out += c4[idx]; }
                c4[idx] = out;
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn matmul_vec4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = tile_of(wid, nwg);
    if (!t.valid) { return; }
    let tx = lid % WG_N;
    let ty = lid / WG_N;
    clear_acc();
    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        load_vec4(t, k0, lid);
        workgroupBarrier();
        compute_tile(tx, ty);
        workgroupBarrier();
    }
    store_vec4(t, tx, ty);
}

// ---- lanes path: for drivers that run a workgroup as SIMD lanes on a CPU (lavapipe) ----
// No workgroup memory and no barriers. A CPU driver runs a workgroup's lanes as coroutines and
// switches between them at every barrier, which costs more than the reuse it buys; the CPU's
// caches do the tiling instead (measured in docs/performance.md). All invocations share the
// workgroup's TM rows (WG_M = 1), so every read of A is the same for all lanes: one scalar load,
// broadcast. Invocation `l` owns the TN consecutive columns from n0 + l * TN, read from B as
// vec4s (`matmul_lanes_vec4`) or as scalars (`matmul_lanes`, any shape).

// One k step: acc[i][j] += A[m0 + i, k] * bv[j].
fn lanes_fma(t: Tile, k: u32, bv: array<vec4<f32>, 2>) {
    for (var i = 0u; i < TM; i++) {
        // Rows past the edge are clamped: their sums are computed but never stored.
        let m = min(t.m0 + i, params.m - 1u);
        var av: f32;
        if (TRANS_A) { av = f32(a[t.a_base + k * params.m + m]); } else { av = f32(a[t.a_base + m * params.k + k]); }
        for (var j = 0u; j < TN / 4u; j++) {
            acc[i * (TN / 4u) + j] = fma(vec4(av), bv[j], acc[i * (TN / 4u) + j]);
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn matmul_lanes(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = tile_of(wid, nwg);
    if (!t.valid) { return; }
    clear_acc();
    let col0 = t.n0 + lid * TN;
    for (var k = 0u; k < params.k; k++) {
        var bv: array<vec4<f32>, 2>;
        for (var j = 0u; j < TN / 4u; j++) {
            for (var q = 0u; q < 4u; q++) {
                let n = min(col0 + 4u * j + q, params.n - 1u);
                if (TRANS_B) { bv[j][q] = f32(b[t.b_base + n * params.k + k]); } else { bv[j][q] = f32(b[t.b_base + k * params.n + n]); }
            }
        }
        lanes_fma(t, k, bv);
    }
    store_scalar(t, lid, 0u);
}

@compute @workgroup_size(WG_SIZE)
fn matmul_lanes_vec4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = tile_of(wid, nwg);
    if (!t.valid) { return; }
    clear_acc();
    let col0 = t.n0 + lid * TN;
    for (var k = 0u; k < params.k; k++) {
        var bv: array<vec4<f32>, 2>;
        for (var j = 0u; j < TN / 4u; j++) {
            if (TRANS_B) {
                for (var q = 0u; q < 4u; q++) {
                    let idx = t.b_base + min(col0 + 4u * j + q, params.n - 1u) * params.k + k;
                    bv[j][q] = f32(b4[idx / 4u][idx % 4u]);
                }
            } else {
                let n = min(col0 + 4u * j, params.n - 4u);
                bv[j] = vec4<f32>(b4[(t.b_base + k * params.n + n) / 4u]);
            }
        }
        lanes_fma(t, k, bv);
    }
    store_vec4(t, lid, 0u);
}
