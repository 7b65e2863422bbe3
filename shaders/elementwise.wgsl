// Elementwise kernels: out[i] = f(x[i]) or f(x[i], y[i]). Each invocation handles ITEMS vec4s
// a workgroup-width apart (so consecutive invocations touch consecutive vec4s): fewer, fatter
// workgroups, since a CPU driver pays a fixed cost per workgroup, and a quarter of the load
// instructions, which are what such a driver pays for. Bindings are padded to whole vec4s, so
// every tensor can be read this way; the last, partial vec4 is written element by element.
// Bindings (x, y, out); unary and axpy leave y out. The operation is chosen by the override
// constant OP (codes OP_GELU, ... generated from src/shaders.rs), folded away when the pipeline
// is built. Filling is the GPU context's own kernel (fill.wgsl).

struct Params {
    n: u32,      // element count
    alpha: f32,  // scale factor (scale, axpy, scale_by) or clamp bound
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> y: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 256u;
const ITEMS: u32 = 8u;

// OP_CLAMP clamps to [-alpha, alpha]; OP_GELU_BACKWARD and OP_SILU_BACKWARD take x, the input of
// the forward, and y, the gradient of its output; OP_SCALE_BY is alpha * x * y[0], a scale that
// lives on the GPU.
override OP: u32 = 0u;

// first_element and store: shaders/common/vec4.wgsl.

// GELU, tanh approximation. The argument is clamped where tanh is already +-1 in f32, since some
// drivers compute tanh through exp and would return NaN for large inputs.
fn gelu(v: vec4<f32>) -> vec4<f32> {
    let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), vec4(-15.0), vec4(15.0));
    return 0.5 * v * (1.0 + tanh(u));
}

fn silu(v: vec4<f32>) -> vec4<f32> {
    return v / (1.0 + exp(-v));
}

// d gelu / dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
fn gelu_grad(v: vec4<f32>) -> vec4<f32> {
    let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), vec4(-15.0), vec4(15.0));
    let th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 0.134145 * v * v);
}

// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x)
fn silu_grad(v: vec4<f32>) -> vec4<f32> {
    let s = 1.0 / (1.0 + exp(-v));
    return s * (1.0 + v * (1.0 - s));
}

@compute @workgroup_size(WG)
fn unary(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let q = start + r * WG;
        if (4u * q >= params.n) { return; }
        let v = x[q];
        switch OP {
            case OP_GELU: { store(q, gelu(v)); }
            case OP_SILU: { store(q, silu(v)); }
            case OP_SCALE: { store(q, params.alpha * v); }
            case OP_CLAMP: { store(q, clamp(v, vec4(-params.alpha), vec4(params.alpha))); }
            default: { store(q, v); }
        }
    }
}

@compute @workgroup_size(WG)
fn binary(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let q = start + r * WG;
        if (4u * q >= params.n) { return; }
        switch OP {
            case OP_ADD: { store(q, x[q] + y[q]); }
            case OP_SUB: { store(q, x[q] - y[q]); }
            case OP_MUL: { store(q, x[q] * y[q]); }
            case OP_GELU_BACKWARD: { store(q, gelu_grad(x[q]) * y[q]); }
            case OP_SILU_BACKWARD: { store(q, silu_grad(x[q]) * y[q]); }
            case OP_SCALE_BY: { store(q, params.alpha * x[q] * y[0].x); }
            default: { store(q, x[q]); }
        }
    }
}

// out += alpha * x (in place; out is the accumulator).
@compute @workgroup_size(WG)
fn axpy(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let q = start + r * WG;
        if (4u * q >= params.n) { return; }
        store(q, fma(vec4(params.alpha), x[q], out[q]));
    }
}
