//! The WGSL sources, embedded in the binary. One file per op family; see `shaders/`.

use crate::gpu::Shader;

macro_rules! shader {
    ($ident:ident, $name:literal, $requires:expr) => {
        pub static $ident: Shader = Shader {
            name: $name,
            source: include_str!(concat!("../shaders/", $name, ".wgsl")),
            requires: $requires,
        };
    };
}

shader!(ELEMENTWISE, "elementwise", wgpu::Features::empty());
shader!(REDUCE, "reduce", wgpu::Features::empty());
shader!(LAYOUT, "layout", wgpu::Features::empty());
shader!(NORM, "norm", wgpu::Features::empty());
shader!(MODULATE, "modulate", wgpu::Features::empty());
shader!(EMBED, "embed", wgpu::Features::empty());
shader!(ATTENTION, "attention", wgpu::Features::empty());
shader!(
    ATTENTION_SUBGROUP,
    "attention_subgroup",
    wgpu::Features::SUBGROUP
);
shader!(OPTIM, "optim", wgpu::Features::empty());
shader!(FLOW, "flow", wgpu::Features::empty());
shader!(MATMUL, "matmul", wgpu::Features::empty());
shader!(MATMUL_SUBGROUP, "matmul_subgroup", wgpu::Features::SUBGROUP);
shader!(CAST, "cast", wgpu::Features::SHADER_F16);
shader!(TEXTURE, "texture", wgpu::Features::empty());

/// Every shader, for validation tests.
pub static ALL: &[&Shader] = &[
    &ELEMENTWISE,
    &REDUCE,
    &LAYOUT,
    &MATMUL,
    &MATMUL_SUBGROUP,
    &CAST,
    &NORM,
    &MODULATE,
    &EMBED,
    &ATTENTION,
    &ATTENTION_SUBGROUP,
    &OPTIM,
    &FLOW,
    &TEXTURE,
];
