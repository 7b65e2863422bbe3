// The prelude: prepended to every engine shader when its module is made (src/shaders.rs), after
// nothing and before the shader's generated constants, libraries and own text.

const PI: f32 = 3.14159265358979;

// The linear number of this workgroup. A dispatch's workgroup count is linear; rectiflow splits
// it over x, y and z where it exceeds the device's per-dimension limit (gpu::split_groups), and
// every kernel folds the three back into one index with this.
fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y;
}
