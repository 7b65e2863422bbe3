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
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;      // x (forward) or dy (backward)
@group(0) @binding(1) var<storage, read> h: array<f32>;      // h (gate), saved x / h (backward)
@group(0) @binding(2) var<storage, read> s: array<f32>;      // scale or gate, [B, C]
@group(0) @binding(3) var<storage, read> shift: array<f32>;  // shift, [B, C] (modulate only)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> prod: array<f32>; // dy * saved (backward only)
@group(1) @binding(0) var<uniform> params: Params;

const MODULATE: u32 = 0u;
const MODULATE_BACKWARD: u32 = 1u;
const GATE: u32 = 2u;
const GATE_BACKWARD: u32 = 3u;
override MODE: u32 = 0u;

const WG: u32 = 256u;
const ITEMS: u32 = 4u;

@compute @workgroup_size(WG)
fn modulate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = params.batch * params.tokens * params.cols;
    let start = (wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y) * WG * ITEMS + lid;
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= n) { return; }
        // The per-sample vector element for this activation: sample b, column c.
        let b = i / (params.tokens * params.cols);
        let sv = b * params.cols + i % params.cols;
        switch MODE {
            case MODULATE: { out[i] = x[i] * (1.0 + s[sv]) + shift[sv]; }
            case MODULATE_BACKWARD: { out[i] = x[i] * (1.0 + s[sv]); prod[i] = x[i] * h[i]; }
            case GATE: { out[i] = x[i] + s[sv] * h[i]; }
            case GATE_BACKWARD: { out[i] = x[i] * s[sv]; prod[i] = x[i] * h[i]; }
            default: {}
        }
    }
}
