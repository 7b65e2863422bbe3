// The activation of a matmul epilogue (library: matmul.wgsl, matmul_subgroup.wgsl), chosen by
// the shader's override constant ACT (ACT_NONE, ACT_GELU, ACT_SILU: generated from Rust), its
// derivative, and the epilogue's use of the auxiliary tensor (AUX: AUX_NONE, AUX_SAVE_PRE,
// AUX_ACT_GRAD).

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

// d act / dv (the same formulas as elementwise.wgsl's gelu_grad and silu_grad).
fn act_grad(v: f32) -> f32 {
    if (ACT == ACT_GELU) {
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        let th = tanh(u);
        return 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 0.134145 * v * v);
    }
    if (ACT == ACT_SILU) {
        let s = 1.0 / (1.0 + exp(-v));
        return s * (1.0 + v * (1.0 - s));
    }
    return 1.0;
}

// The epilogue's output for one element given v = alpha * sum (+ bias; + C's old value with
// AUX_SAVE_PRE and ACCUMULATE: the pre-activation) and, with AUX_ACT_GRAD,
// the pre-activation p that the auxiliary tensor holds: act(v), or v act'(p) (the gradient of a
// pre-activation from that of its activation: a linear layer's input gradient, fused).
fn finish(v: f32, p: f32) -> f32 {
    if (AUX == AUX_ACT_GRAD) { return v * act_grad(p); }
    return act(v);
}
