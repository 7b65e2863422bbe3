//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011): a
//! counter-based generator, so the random numbers of an element depend only on (seed, step,
//! element index, stream), never on how the work is split. This is the CPU reference of the
//! WGSL implementation in `shaders/flow.wgsl` (the two agree bit for bit).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The four words for an element: counter `(index, step, stream, 0)`, key = the 64-bit seed.
pub fn words(seed: u64, step: u32, stream: u32, index: u32) -> [u32; 4] {
    philox4x32_10([index, step, stream, 0], [seed as u32, (seed >> 32) as u32])
}

/// A word to a uniform in (0, 1): the top 24 bits, centred in their interval (never 0 or 1,
/// so logarithms and logits stay finite).
pub fn uniform(word: u32) -> f32 {
    ((word >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Box-Muller: two words to one standard normal (the cosine branch).
pub fn normal(w0: u32, w1: u32) -> f32 {
    let r = (-2.0 * uniform(w0).ln()).sqrt();
    r * (std::f32::consts::TAU * uniform(w1)).cos()
}
