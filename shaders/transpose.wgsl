// Batched transpose of the last two dimensions: out[b, c, r] = x[b, r, c].
// A 16x16 tile passes through workgroup memory so that both the reads and the writes walk
// memory contiguously; the tile is padded by one column to avoid bank conflicts.

struct Params {
    batch: u32,
    rows: u32,
    cols: u32,
    tiles_c: u32,  // ceil(cols / 16)
    tiles_r: u32,  // ceil(rows / 16)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

const T: u32 = 16u;

var<workgroup> tile: array<f32, 272>; // T * (T + 1)

@compute @workgroup_size(16, 16)
fn transpose(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y;
    let per_batch = params.tiles_c * params.tiles_r;
    let b = g / per_batch;
    if (b >= params.batch) { return; }
    let tr = (g % per_batch) / params.tiles_c;
    let tc = g % params.tiles_c;
    let base = b * params.rows * params.cols;

    let r = tr * T + lid.y;
    let c = tc * T + lid.x;
    if (r < params.rows && c < params.cols) {
        tile[lid.y * (T + 1u) + lid.x] = x[base + r * params.cols + c];
    }
    workgroupBarrier();
    // Write: the output row is an input column.
    let oc = tr * T + lid.x; // output column = input row
    let orow = tc * T + lid.y; // output row = input column
    if (orow < params.cols && oc < params.rows) {
        out[base + orow * params.rows + oc] = tile[lid.x * (T + 1u) + lid.y];
    }
}

// Without workgroup memory: each invocation writes 8 consecutive output elements (reading a
// column of the input). For CPU drivers, whose caches serve the strided reads and for which a
// barrier costs more than the tile saves.
@compute @workgroup_size(256)
fn transpose_direct(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = ((wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y) * 256u + lid) * 8u;
    let per_batch = params.rows * params.cols;
    let total = params.batch * per_batch;
    for (var e = first; e < min(first + 8u, total); e++) {
        // e indexes the output [b, c, r].
        let b = e / per_batch;
        let c = (e % per_batch) / params.rows;
        let r = e % params.rows;
        out[e] = x[b * per_batch + r * params.cols + c];
    }
}
