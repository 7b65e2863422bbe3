// A training batch gathered on the GPU: sample b takes data row floor(u * rows) with u from the
// counter generator's STREAM_BATCH (counter = first_sample + b; the library philox.wgsl), and its
// label. first_sample is 0 for a whole batch; a rank of a data-parallel run gathers its slice of
// the global batch, samples first_sample.. of it, exactly as one process would draw them.

struct Params {
    batch: u32,
    dim: u32,
    rows: u32,     // examples in the data set
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
    first_sample: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> data: array<f32>;            // [rows, D]
@group(0) @binding(1) var<storage, read> labels: array<f32>;          // [rows]
@group(0) @binding(2) var<storage, read_write> gathered: array<f32>;  // [B, D]
@group(0) @binding(3) var<storage, read_write> gathered_labels: array<f32>; // [B]
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn gather_batch(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = workgroup_index(wid, nwg) * WG + lid;
    if (e >= params.batch * params.dim) { return; }
    let sample = e / params.dim;
    let seed = vec2(params.seed_lo, params.seed_hi);
    let u = unit_uniform(random_words(seed, params.step, STREAM_BATCH, params.first_sample + sample).x);
    let row = min(u32(u * f32(params.rows)), params.rows - 1u);
    gathered[e] = data[row * params.dim + e % params.dim];
    if (e % params.dim == 0u) { gathered_labels[sample] = labels[row]; }
}
