// The activation of a matmul epilogue (library: matmul.wgsl, matmul_subgroup.wgsl), chosen by
// the shader's override constant ACT (ACT_NONE, ACT_GELU, ACT_SILU: generated from Rust).

fn act(v: f32) -> f32 {
    if (ACT == ACT_GELU) {
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        return 0.5 * v * (1.0 + tanh(u));
    }
    if (ACT == ACT_SILU) {
        return v / (1.0 + exp(-v));
    }
    return v;
}
