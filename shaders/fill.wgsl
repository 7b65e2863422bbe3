// Fill a storage range with one 32-bit word (zeros, a value's bits, or the NaN that poisons new
// tensors): the GPU context's own kernel (src/gpu/mod.rs), below tensors and ops. Each invocation
// writes ITEMS vec4s a workgroup-width apart; the last, partial vec4 word by word.

struct Params {
    n: u32,      // words
    value: u32,  // the word written
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<vec4<u32>>;
@group(1) @binding(0) var<uniform> params: Params;

const WG: u32 = 256u;
const ITEMS: u32 = 8u;

@compute @workgroup_size(WG)
fn fill(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let start = workgroup_index(wid, nwg) * WG * ITEMS + lid;
    for (var r = 0u; r < ITEMS; r++) {
        let q = start + r * WG;
        if (4u * q >= params.n) { return; }
        if (4u * q + 3u < params.n) {
            out[q] = vec4(params.value);
        } else {
            for (var j = 0u; j < 4u; j++) {
                if (4u * q + j < params.n) { out[q][j] = params.value; }
            }
        }
    }
}
