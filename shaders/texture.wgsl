// Samples into pictures a host draws: images [n, C, H, W] with values in [-1, 1] become pixels
// in [0, 1] (v * 0.5 + 0.5, clamped; the product by 0.5 is exact, so fused or not the result is
// the same), tiled in a grid of `columns` images from (origin_x, origin_y): image i's pixel (y, x)
// lands at (origin_x + (i % columns) W + x, origin_y + (i / columns) H + y). One channel is gray
// (alpha 1), three are RGB (alpha 1), four are RGBA. One invocation per image pixel.
// Entry points: into an rgba8unorm or an rgba32float storage texture, or packed as RGBA8 words
// (red in the lowest byte, pack4x8unorm's rounding) into a storage buffer with rows of
// `row_words` words starting at word `word_offset`. Each entry uses only its own output binding.

struct Params {
    n: u32,          // images
    channels: u32,   // 1, 3 or 4
    height: u32,
    width: u32,
    columns: u32,    // images per row of the grid
    origin_x: u32,
    origin_y: u32,
    row_words: u32,  // packed output: words per row of pixels
    word_offset: u32,// packed output: the first pixel's word
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> samples: array<f32>;
@group(0) @binding(1) var rgba8: texture_storage_2d<rgba8unorm, write>;
@group(0) @binding(2) var rgba32: texture_storage_2d<rgba32float, write>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 64u;

// The image pixel of this invocation; the workgroup grid may be split over x and y.
fn pixel_index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return workgroup_index(wid, nwg) * WG + lid;
}

// Image i's pixel (y, x) in [0, 1].
fn colour(i: u32, y: u32, x: u32) -> vec4<f32> {
    let plane = params.height * params.width;
    let at = i * params.channels * plane + y * params.width + x;
    var v = vec4<f32>(samples[at], samples[at], samples[at], 1.0);
    if (params.channels >= 3u) {
        v.y = samples[at + plane];
        v.z = samples[at + 2u * plane];
    }
    var c = clamp(v * 0.5 + 0.5, vec4<f32>(0.0), vec4<f32>(1.0));
    if (params.channels == 4u) {
        c.w = clamp(samples[at + 3u * plane] * 0.5 + 0.5, 0.0, 1.0);
    } else {
        c.w = 1.0;
    }
    return c;
}

// (image, y, x) of pixel p and where it lands in the grid.
fn place(p: u32) -> array<u32, 5> {
    let plane = params.height * params.width;
    let i = p / plane;
    let r = p % plane;
    let y = r / params.width;
    let x = r % params.width;
    let gx = params.origin_x + (i % params.columns) * params.width + x;
    let gy = params.origin_y + (i / params.columns) * params.height + y;
    return array<u32, 5>(i, y, x, gx, gy);
}

@compute @workgroup_size(WG)
fn to_rgba8(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = pixel_index(lid, wid, nwg);
    if (p >= params.n * params.height * params.width) { return; }
    let at = place(p);
    textureStore(rgba8, vec2<u32>(at[3], at[4]), colour(at[0], at[1], at[2]));
}

@compute @workgroup_size(WG)
fn to_rgba32f(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = pixel_index(lid, wid, nwg);
    if (p >= params.n * params.height * params.width) { return; }
    let at = place(p);
    textureStore(rgba32, vec2<u32>(at[3], at[4]), colour(at[0], at[1], at[2]));
}

@compute @workgroup_size(WG)
fn to_packed_rgba8(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = pixel_index(lid, wid, nwg);
    if (p >= params.n * params.height * params.width) { return; }
    let at = place(p);
    packed[params.word_offset + at[4] * params.row_words + at[3]] =
        pack4x8unorm(colour(at[0], at[1], at[2]));
}
