// Conversions between f32 and f16 storage (needs the device feature SHADER_F16).

enable f16;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src32: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst16: array<f16>;
@group(1) @binding(0) var<uniform> params: Params;

// Four values per invocation (params.n counts vec4s): the flat parameter buffer's f16 copy.
@group(0) @binding(0) var<storage, read> src32x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst16x4: array<vec4<f16>>;

// The f16 -> f32 direction reuses binding slots with the other element types.
@group(0) @binding(0) var<storage, read> src16: array<f16>;
@group(0) @binding(1) var<storage, read_write> dst32: array<f32>;

const WG: u32 = 256u;

fn element(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return workgroup_index(wid, nwg) * WG + lid;
}

@compute @workgroup_size(WG)
fn f32_to_f16(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(lid, wid, nwg);
    if (i >= params.n) { return; }
    dst16[i] = f16(src32[i]);
}

@compute @workgroup_size(WG)
fn f16_to_f32(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(lid, wid, nwg);
    if (i >= params.n) { return; }
    dst32[i] = f32(src16[i]);
}

@compute @workgroup_size(WG)
fn f32_to_f16_vec4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(lid, wid, nwg);
    if (i >= params.n) { return; }
    dst16x4[i] = vec4<f16>(src32x4[i]);
}
