// Passes over n f32 elements as vec4s (library: elementwise.wgsl, solver.wgsl). The shader
// declares the constants WG (invocations per workgroup) and ITEMS (vec4s per invocation), its
// output `out: array<vec4<f32>>` and `params.n`, the element count.

// First vec4 of this invocation; the workgroup grid may be split over x, y and z.
fn first_element(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return workgroup_index(wid, nwg) * WG * ITEMS + lid;
}

// Store vec4 number q: whole where it lies inside the n elements, else element by element.
fn store(q: u32, v: vec4<f32>) {
    if (4u * q + 3u < params.n) {
        out[q] = v;
    } else {
        for (var j = 0u; j < 4u; j++) {
            if (4u * q + j < params.n) { out[q][j] = v[j]; }
        }
    }
}
