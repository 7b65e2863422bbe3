// Elementwise kernels: out[i] = f(x[i]) or f(x[i], y[i]). Each invocation handles ITEMS
// elements a workgroup-width apart (so consecutive invocations touch consecutive elements):
// fewer, fatter workgroups, since a CPU driver pays a fixed cost per workgroup.
// Every entry binds (x, y, out); an entry that does not use x or y gets a placeholder buffer.
// The operation is chosen by the override constant OP, folded away when the pipeline is built.

struct Params {
    n: u32,      // element count
    alpha: f32,  // scale factor (scale, axpy) or fill value
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 256u;
const ITEMS: u32 = 8u;

// Unary ops.
const OP_GELU: u32 = 0u;
const OP_SILU: u32 = 1u;
const OP_SCALE: u32 = 2u;
const OP_CLAMP: u32 = 3u;  // clamp to [-alpha, alpha]
// Binary ops.
const OP_ADD: u32 = 10u;
const OP_SUB: u32 = 11u;
const OP_MUL: u32 = 12u;
const OP_GELU_BACKWARD: u32 = 13u;  // x: input of the forward, y: gradient of its output
const OP_SILU_BACKWARD: u32 = 14u;
const OP_SCALE_BY: u32 = 15u;       // alpha * x * y[0]: scale by a scalar that lives on the GPU

override OP: u32 = 0u;

// First element of this invocation; the workgroup grid may be split over x, y and z.
fn first_element(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y) * WG * ITEMS + lid;
}

// GELU, tanh approximation. The argument is clamped where tanh is already +-1 in f32, since some
// drivers compute tanh through exp and would return NaN for large inputs.
fn gelu(v: f32) -> f32 {
    let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return 0.5 * v * (1.0 + tanh(u));
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// d gelu / dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
fn gelu_grad(v: f32) -> f32 {
    let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    let th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 0.134145 * v * v);
}

// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x)
fn silu_grad(v: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-v));
    return s * (1.0 + v * (1.0 - s));
}

@compute @workgroup_size(WG)
fn unary(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= params.n) { return; }
        let v = x[i];
        switch OP {
            case OP_GELU: { out[i] = gelu(v); }
            case OP_SILU: { out[i] = silu(v); }
            case OP_SCALE: { out[i] = params.alpha * v; }
            case OP_CLAMP: { out[i] = clamp(v, -params.alpha, params.alpha); }
            default: { out[i] = v; }
        }
    }
}

@compute @workgroup_size(WG)
fn binary(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= params.n) { return; }
        switch OP {
            case OP_ADD: { out[i] = x[i] + y[i]; }
            case OP_SUB: { out[i] = x[i] - y[i]; }
            case OP_MUL: { out[i] = x[i] * y[i]; }
            case OP_GELU_BACKWARD: { out[i] = gelu_grad(x[i]) * y[i]; }
            case OP_SILU_BACKWARD: { out[i] = silu_grad(x[i]) * y[i]; }
            case OP_SCALE_BY: { out[i] = params.alpha * x[i] * y[0]; }
            default: { out[i] = x[i]; }
        }
    }
}

// out += alpha * x (in place; out is the accumulator).
@compute @workgroup_size(WG)
fn axpy(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= params.n) { return; }
        out[i] = fma(params.alpha, x[i], out[i]);
    }
}

// out = alpha.
@compute @workgroup_size(WG)
fn fill(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let i = start + r * WG;
        if (i >= params.n) { return; }
        out[i] = params.alpha;
    }
}
