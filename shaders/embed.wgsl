// Embeddings, forward and backward side by side.
//   timestep: emb[b, i] = cos(scale t_b f_i), emb[b, half + i] = sin(scale t_b f_i),
//             f_i = exp(-ln(max_period) i / half), half = dim / 2 (an odd last column is 0)
//   lookup:   out[b, :] = table[label_b, :] (labels stored as f32 integers)
// The lookup's backward sums, for each table row, the gradients of every sample that used it
// (one invocation per table element: no atomics needed).

struct Params {
    batch: u32,
    dim: u32,
    rows: u32,       // lookup: table rows
    scale: f32,      // timestep: multiplies t before the frequencies
    max_period: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;       // t [B] or labels [B]
@group(0) @binding(1) var<storage, read> b: array<f32>;       // table [rows, dim] or dy [B, dim]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 64u;

fn index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return workgroup_index(wid, nwg) * WG + lid;
}

fn frequency(i: u32) -> f32 {
    let half = params.dim / 2u;
    return exp(-log(params.max_period) * f32(i) / f32(half));
}

// Frequencies each invocation of `timestep` computes: both halves of the row from one argument,
// and one integer division and remainder per 16 outputs (a CPU driver divides vectors lane by
// lane).
const FREQS: u32 = 8u;

// out [B, dim]; invocation e: row e / chunks, frequencies FREQS * (e % chunks) and on.
@compute @workgroup_size(WG)
fn timestep(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    let half = params.dim / 2u;
    let chunks = max(1u, (half + FREQS - 1u) / FREQS);
    if (e >= params.batch * chunks) { return; }
    let row = e / chunks;
    let first = (e % chunks) * FREQS;
    let base = row * params.dim;
    let scaled = params.scale * a[row];
    for (var i = first; i < min(first + FREQS, half); i++) {
        let arg = scaled * frequency(i);
        out[base + i] = cos(arg);
        out[base + half + i] = sin(arg);
    }
    if (first == 0u && params.dim > 2u * half) { out[base + params.dim - 1u] = 0.0; }
}

// dt [B] = sum_i dy[b, i] * d emb[b, i] / dt   (b binds dy)
@compute @workgroup_size(WG)
fn timestep_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = index(lid, wid, nwg);
    if (row >= params.batch) { return; }
    let half = params.dim / 2u;
    var acc = 0.0;
    for (var i = 0u; i < half; i++) {
        let f = params.scale * frequency(i);
        let arg = a[row] * f;
        acc += b[row * params.dim + i] * (-f * sin(arg)) + b[row * params.dim + half + i] * (f * cos(arg));
    }
    out[row] = acc;
}

// out [B, dim] = table[labels]
@compute @workgroup_size(WG)
fn lookup(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    if (e >= params.batch * params.dim) { return; }
    let label = min(u32(a[e / params.dim]), params.rows - 1u);
    out[e] = b[label * params.dim + e % params.dim];
}

// dtable [rows, dim] += sum over samples with that label of dy  (b binds dy)
@compute @workgroup_size(WG)
fn lookup_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(lid, wid, nwg);
    if (e >= params.rows * params.dim) { return; }
    let row = e / params.dim;
    let col = e % params.dim;
    var acc = 0.0;
    for (var s = 0u; s < params.batch; s++) {
        if (min(u32(a[s]), params.rows - 1u) == row) { acc += b[s * params.dim + col]; }
    }
    out[e] += acc;
}
