// Standard normals from the counter-based generator (the library philox.wgsl): element i of
// stream `stream` at (seed, step) is normal(w.x, w.y) of the words of counter (i, step, stream, 0),
// as src/rng.rs computes it on the CPU.

struct Params {
    n: u32,        // elements
    step: u32,
    stream: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn random_normal(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = workgroup_index(wid, nwg) * WG + lid;
    if (i >= params.n) { return; }
    let w = random_words(vec2(params.seed_lo, params.seed_hi), params.step, params.stream, i);
    out[i] = normal(w.x, w.y);
}
