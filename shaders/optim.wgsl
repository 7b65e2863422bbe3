// The optimiser over the flat parameter buffer: global gradient norm, clipping, AdamW and the EMA
// of the weights. Nothing is read back: the clip factor goes from the norm kernels to the AdamW
// kernel through a small buffer.
//   norm_partial:  partial[i] = sum of grad^2 over invocation i's grid-stride share (one
//                  sum per invocation: no workgroup memory and no barriers, which a CPU driver
//                  pays for by switching between a workgroup's SIMD groups at each one)
//   norm_finish:   stats = (norm, clip) with clip = min(1, max_norm / (norm + 1e-6))
//                  (clip = 1 when max_norm <= 0: clipping off)
//   adamw:         g = clip * grad
//                  m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
//                  p -= lr (m / bc1) / (sqrt(v / bc2) + eps) + lr wd p
//                  ema = decay ema + (1 - decay) p          (when decay > 0)

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,       // 1 - beta1^step
    bc2: f32,       // 1 - beta2^step
    ema_decay: f32, // 0: no EMA
    max_norm: f32,
    parts: u32,     // invocations of norm_partial (PARTS * NORM_WG in src/ops/optim.rs; NORM_WG is WG)
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

// norm_finish: partial -> stats
@group(0) @binding(0) var<storage, read> fin_partial: array<f32>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>;

// adamw
@group(0) @binding(0) var<storage, read> ad_grad: array<f32>;
@group(0) @binding(1) var<storage, read> ad_stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> ema: array<f32>;

const WG: u32 = 256u;
var<workgroup> sums: array<f32, WG>;

fn tree_sum(lid: u32, value: f32) -> f32 {
    sums[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) { sums[lid] += sums[lid + stride]; }
        workgroupBarrier();
    }
    return sums[0];
}

@compute @workgroup_size(WG)
fn norm_partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.x * WG + lid;
    var acc = 0.0;
    for (var i = id; i < params.n; i += params.parts) {
        acc += grad[i] * grad[i];
    }
    partial[id] = acc;
}

@compute @workgroup_size(WG)
fn norm_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < params.parts; i += WG) { acc += fin_partial[i]; }
    let total = tree_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt(total);
        stats[0] = norm;
        stats[1] = select(1.0, min(1.0, params.max_norm / (norm + 1e-6)), params.max_norm > 0.0);
    }
}

@compute @workgroup_size(WG)
fn adamw(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = workgroup_index(wid, nwg) * WG * 4u + lid;
    let clip = ad_stats[1];
    for (var r = 0u; r < 4u; r++) {
        let i = start + r * WG;
        if (i >= params.n) { return; }
        let g = clip * ad_grad[i];
        let mi = params.beta1 * m[i] + (1.0 - params.beta1) * g;
        let vi = params.beta2 * v[i] + (1.0 - params.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        var p = param[i];
        p -= params.lr * ((mi / params.bc1) / (sqrt(vi / params.bc2) + params.eps) + params.weight_decay * p);
        param[i] = p;
        if (params.ema_decay > 0.0) {
            ema[i] = params.ema_decay * ema[i] + (1.0 - params.ema_decay) * p;
        }
    }
}
