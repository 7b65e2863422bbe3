// The adaptive ODE solver's vector work (src/rk45.rs drives it; the f64 references are in
// tests/common/reference.rs): a linear combination of up to six stage velocities in one pass
// (an embedded Runge-Kutta step forms seven of them per step, each from up to six terms), and
// the weighted squares of the error estimate whose sum decides whether a step is accepted.
// Elementwise in the layout of elementwise.wgsl: each invocation handles ITEMS vec4s a
// workgroup-width apart; bindings are padded to whole vec4s, the last partial vec4 is written
// element by element.
// Bindings: base, k0..k5, out. error_weights reads e, z and z_new through base, k0 and k1.

struct Params {
    n: u32,       // element count
    terms: u32,   // combine: how many of k0..k5 are read (the rest may be the absent buffer)
    base: f32,    // combine: the coefficient of base (0: base is not read)
    c0: f32,      // combine: the coefficients of k0..k5; error_weights: c0 = atol, c1 = rtol
    c1: f32,
    c2: f32,
    c3: f32,
    c4: f32,
    c5: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> base: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> k0: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k1: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k2: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k3: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> k4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> k5: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 256u;
const ITEMS: u32 = 4u;

// first_element and store: shaders/common/vec4.wgsl.

// out = base * base_coefficient + sum_{j < terms} c_j k_j. Absent inputs are never read.
@compute @workgroup_size(WG)
fn combine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    let m = params.terms;
    for (var r = 0u; r < ITEMS; r++) {
        let q = start + r * WG;
        if (4u * q >= params.n) { return; }
        var acc = vec4(0.0);
        if (params.base != 0.0) { acc = params.base * base[q]; }
        if (m > 0u) { acc = fma(vec4(params.c0), k0[q], acc); }
        if (m > 1u) { acc = fma(vec4(params.c1), k1[q], acc); }
        if (m > 2u) { acc = fma(vec4(params.c2), k2[q], acc); }
        if (m > 3u) { acc = fma(vec4(params.c3), k3[q], acc); }
        if (m > 4u) { acc = fma(vec4(params.c4), k4[q], acc); }
        if (m > 5u) { acc = fma(vec4(params.c5), k5[q], acc); }
        store(q, acc);
    }
}

// out = (e / (atol + rtol max(|z|, |z_new|)))^2 with e = base, z = k0, z_new = k1: the terms of
// the error norm's mean square.
@compute @workgroup_size(WG)
fn error_weights(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = first_element(lid, wid, nwg);
    for (var r = 0u; r < ITEMS; r++) {
        let q = start + r * WG;
        if (4u * q >= params.n) { return; }
        let ratio = base[q] / (params.c0 + params.c1 * max(abs(k0[q]), abs(k1[q])));
        store(q, ratio * ratio);
    }
}
