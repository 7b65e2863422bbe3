// Data movement: transpose of the last two dimensions, copies of token blocks (concat and
// split along the token axis), and patchify / unpatchify (images to tokens and back).
// Each is its own inverse's backward, so there are no separate backward kernels.

struct Params {
    batch: u32,
    rows: u32,     // transpose: rows; copy_rows: rows copied per sample; patchify: channels
    cols: u32,     // transpose: cols; copy_rows: row length; patchify: height
    tiles_c: u32,  // transpose: ceil(cols / 16); copy_rows: source rows per sample; patchify: width
    tiles_r: u32,  // transpose: ceil(rows / 16); copy_rows: destination rows per sample; patchify: patch
    src_row0: u32, // copy_rows: first source row
    dst_row0: u32, // copy_rows: first destination row
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(1) @binding(0) var<uniform> params: Params;

const T: u32 = 16u;

var<workgroup> tile: array<f32, 272>; // T * (T + 1)

// Batched transpose of the last two dimensions: out[b, c, r] = x[b, r, c]. A 16x16 tile passes
// through workgroup memory so that both reads and writes walk memory contiguously; the tile is
// padded by one column to avoid bank conflicts.
@compute @workgroup_size(16, 16)
fn transpose(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = workgroup_index(wid, nwg);
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
    let first = (workgroup_index(wid, nwg) * 256u + lid) * 8u;
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

// out[b, dst_row0 + r, :] = x[b, src_row0 + r, :] for r < rows: concat is two copies into one
// tensor, split two copies out of it.
@compute @workgroup_size(256)
fn copy_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = (workgroup_index(wid, nwg) * 256u + lid) * 4u;
    let per_batch = params.rows * params.cols;
    let total = params.batch * per_batch;
    for (var e = first; e < min(first + 4u, total); e++) {
        let b = e / per_batch;
        let r = (e % per_batch) / params.cols;
        let c = e % params.cols;
        out[(b * params.tiles_r + params.dst_row0 + r) * params.cols + c] =
            x[(b * params.tiles_c + params.src_row0 + r) * params.cols + c];
    }
}

// Images [B, C, H, W] <-> tokens [B, (H/p)(W/p), C p p]; token (gy, gx) is number gy (W/p) + gx
// and its features are ordered (c, py, px). PATCHIFY = false runs the inverse. Each invocation
// writes one output element.
override PATCHIFY: bool = true;

@compute @workgroup_size(256)
fn patchify(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = workgroup_index(wid, nwg) * 256u + lid;
    let ch = params.rows;
    let height = params.cols;
    let width = params.tiles_c;
    let p = params.tiles_r;
    let per_image = ch * height * width;
    if (e >= params.batch * per_image) { return; }
    // Both directions map the same (image element, token element) pair.
    if (PATCHIFY) {
        // e indexes tokens: [b, token, feature]
        let b = e / per_image;
        let feat_len = ch * p * p;
        let token = (e % per_image) / feat_len;
        let f = e % feat_len;
        let c = f / (p * p);
        let py = (f / p) % p;
        let px = f % p;
        let gy = token / (width / p);
        let gx = token % (width / p);
        out[e] = x[((b * ch + c) * height + gy * p + py) * width + gx * p + px];
    } else {
        // e indexes images: [b, c, y, x]
        let b = e / per_image;
        let c = (e / (height * width)) % ch;
        let yy = (e / width) % height;
        let xx = e % width;
        let token = (yy / p) * (width / p) + xx / p;
        let f = (c * p + yy % p) * p + xx % p;
        out[e] = x[(b * (height / p) * (width / p) + token) * ch * p * p + f];
    }
}
