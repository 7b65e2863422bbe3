// Philox4x32-10, the counter-based generator (library: random.wgsl, gather.wgsl, flow.wgsl).
// Counter (index, step, stream, 0), key = the 64-bit seed; bit-identical to src/rng.rs. A number
// depends only on (seed, step, stream, element index), not on the dispatch. Uniforms take the
// top 24 bits, centred (never 0 or 1); normals use Box-Muller's cosine branch.

fn mulhi(a: u32, b: u32) -> u32 {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let cross = (lo_lo >> 16u) + (hi_lo & 0xffffu) + lo_hi; // < 2^32: no overflow
    return a_hi * b_hi + (hi_lo >> 16u) + (cross >> 16u);
}

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) { k += vec2(0x9E3779B9u, 0xBB67AE85u); }
        let hi0 = mulhi(0xD2511F53u, c.x);
        let lo0 = 0xD2511F53u * c.x;
        let hi1 = mulhi(0xCD9E8D57u, c.z);
        let lo1 = 0xCD9E8D57u * c.z;
        c = vec4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// The four words of element `index` of `stream` at `step` under `seed` (lo, hi).
fn random_words(seed: vec2<u32>, step: u32, stream: u32, index: u32) -> vec4<u32> {
    return philox(vec4(index, step, stream, 0u), seed);
}

fn unit_uniform(w: u32) -> f32 {
    return (f32(w >> 8u) + 0.5) * (1.0 / 16777216.0);
}

fn normal(w0: u32, w1: u32) -> f32 {
    return sqrt(-2.0 * log(unit_uniform(w0))) * cos(2.0 * PI * unit_uniform(w1));
}
