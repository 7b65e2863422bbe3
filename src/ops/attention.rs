//! Fused multi-head attention (`shaders/attention.wgsl`), forward and backward.
//!
//! `qkv` is `[B, T, 3 H D]` (per token: all heads' queries, then keys, then values), the output
//! `[B, T, H D]` (heads merged). Softmax is online, so no `T x T` matrix is ever allocated; the
//! forward saves the log-sum-exp of each row (`[B, H, T]`) and the backward recomputes the
//! probabilities from it. The GPU profile stages blocks of keys in workgroup memory; the CPU
//! profile reads them directly (every lane of a workgroup reads the same key).

use super::{bind, ensure_f32};
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Cost, KernelProfile};
use crate::shaders::{ATTENTION, ATTENTION_SUBGROUP};
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        batch: u32,
        tokens: u32,
        heads: u32,
        head_dim: u32,
        /// `1 / sqrt(head_dim)`.
        scale: f32,
        /// Row blocks per (sample, head).
        blocks: u32,
        _pad: [u32; 2],
    }
}

kernels! {
    // Forward: qkv, o, lse. Backward: qkv, o, lse, d_o, dqkv, delta (written by the delta
    // pass, or by the subgroup dQ on the way, and read by the others).
    ATTENTION, Params {
        FORWARD = attention(Read, ReadWrite, ReadWrite);
        BACKWARD_DELTA = attention_backward_delta(Unused, Read, Unused, Read, Unused, ReadWrite);
        BACKWARD_DQ = attention_backward_dq(Read, Unused, Read, Read, ReadWrite, Read);
        BACKWARD_DKV = attention_backward_dkv(Read, Unused, Read, Read, ReadWrite, Read);
    }
    ATTENTION_SUBGROUP, Params {
        SUBGROUP_FORWARD = attention_subgroup(Read, ReadWrite, ReadWrite);
        SUBGROUP_DQ = attention_subgroup_dq(Read, Read, Read, Read, ReadWrite, ReadWrite);
        SUBGROUP_DKV = attention_subgroup_dkv(Read, Unused, Read, Read, ReadWrite, Read);
    }
}
/// Rows per workgroup, as in the shaders: 64 (attention.wgsl), one subgroup of 8
/// (attention_subgroup.wgsl).
const WG: usize = 64;
const SUBGROUP_LANES: usize = 8;
/// Largest head dimension the kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 128;

/// (batch, tokens, head_dim) after checking `qkv`'s shape.
fn dims(qkv: &Tensor, heads: usize) -> Result<(usize, usize, usize)> {
    ensure_f32("attention", qkv)?;
    let s = qkv.shape();
    ensure_shape!(
        s.len() == 3 && heads > 0 && s[2].is_multiple_of(3 * heads) && s[1] > 0,
        "attention takes qkv [B, T, 3 * heads * head_dim] with {heads} heads, got {s:?}"
    );
    let d = s[2] / (3 * heads);
    ensure_shape!(
        (1..=MAX_HEAD_DIM).contains(&d),
        "attention supports head dimensions 1..={MAX_HEAD_DIM}, got {d}"
    );
    Ok((s[0], s[1], d))
}

/// Which design runs: the subgroup kernels on CPU drivers with subgroups of 8 and head
/// dimensions that are multiples of 4 (vec4 rows), else attention.wgsl.
fn use_subgroup(qkv: &Tensor, d: usize) -> bool {
    let gpu = qkv.gpu();
    gpu.profile() == KernelProfile::Cpu
        && gpu.subgroup_size() == Some(SUBGROUP_LANES as u32)
        && d.is_multiple_of(4)
        && qkv.vec4_aligned()
}

fn params(b: usize, t: usize, heads: usize, d: usize, rows_per_group: usize) -> (Params, u64) {
    let blocks = t.div_ceil(rows_per_group);
    let p = Params {
        batch: b as u32,
        tokens: t as u32,
        heads: heads as u32,
        head_dim: d as u32,
        scale: 1.0 / (d as f32).sqrt(),
        blocks: blocks as u32,
        _pad: [0; 2],
    };
    (p, (b * heads * blocks) as u64)
}

/// Pipeline constants: the design (tiled for the GPU profile; none for the subgroup kernels)
/// and the head dimension.
fn overrides(qkv: &Tensor, head_dim: usize, subgroup: bool) -> Vec<(&'static str, f64)> {
    let gpu_profile = qkv.gpu().profile() == KernelProfile::Gpu;
    let mut o = vec![("HEAD_DIM", head_dim as f64)];
    if !subgroup {
        o.push(("TILED", if gpu_profile { 1.0 } else { 0.0 }));
    }
    o
}

/// `softmax(Q K^T / sqrt(D)) V` for every head. Returns the output `[B, T, H D]` and the
/// log-sum-exp `[B, H, T]` for [`attention_backward`].
pub fn attention(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let (b, t, d) = dims(qkv, heads)?;
    let gpu = qkv.gpu();
    let o = Tensor::uninit(gpu, &[b, t, heads * d], DType::F32)?;
    let lse = Tensor::uninit(gpu, &[b, heads, t], DType::F32)?;
    let subgroup = use_subgroup(qkv, d);
    let (kernel, rows) = if subgroup {
        (&SUBGROUP_FORWARD, SUBGROUP_LANES)
    } else {
        (&FORWARD, WG)
    };
    let (p, groups) = params(b, t, heads, d, rows);
    let flops = 4.0 * (b * heads * t * t * d) as f64;
    gpu.dispatch_costed(
        kernel,
        &overrides(qkv, d, subgroup),
        &[qkv.binding(), o.binding(), lse.binding()],
        &p,
        groups,
        Cost {
            flops,
            bytes: 4.0 * (qkv.numel() + o.numel() + lse.numel()) as f64,
            ..Cost::default()
        },
    )?;
    Ok((o, lse))
}

/// Gradient of [`attention`] with respect to `qkv`, from its output `o`, log-sum-exp `lse` and
/// the output gradient `d_o`. Three dispatches: the row sums `delta = rowsum(dO * O)`, then dQ
/// (one invocation per query) and dK, dV (one per key), each recomputing the probabilities; the
/// subgroup design computes delta with dQ (two dispatches).
pub fn attention_backward(
    qkv: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (b, t, d) = dims(qkv, heads)?;
    ensure_shape!(
        o.shape() == [b, t, heads * d] && d_o.shape() == o.shape(),
        "attention_backward: o and d_o must be [{b}, {t}, {}], got {:?} and {:?}",
        heads * d,
        o.shape(),
        d_o.shape()
    );
    ensure_shape!(
        lse.shape() == [b, heads, t],
        "attention_backward: lse must be [{b}, {heads}, {t}]"
    );
    let gpu = qkv.gpu();
    let dqkv = Tensor::uninit(gpu, qkv.shape(), DType::F32)?;
    let delta = Tensor::uninit(gpu, &[b, heads, t], DType::F32)?;
    let subgroup = use_subgroup(qkv, d);
    let (p, groups) = params(b, t, heads, d, if subgroup { SUBGROUP_LANES } else { WG });
    let given = [
        Some(qkv),
        Some(o),
        Some(lse),
        Some(d_o),
        Some(&dqkv),
        Some(&delta),
    ];
    let overrides = overrides(qkv, d, subgroup);
    // The usual count: the backward's five products, 2.5x the forward's two; dQ takes two of
    // them (with the recomputed scores), dK and dV three.
    let forward = 4.0 * (b * heads * t * t * d) as f64;
    let cost = |share: f64| Cost {
        flops: share * forward,
        ..Cost::default()
    };
    let (dq, dkv) = if subgroup {
        (&SUBGROUP_DQ, &SUBGROUP_DKV)
    } else {
        let bindings = bind(&BACKWARD_DELTA, gpu, given);
        gpu.dispatch(&BACKWARD_DELTA, &overrides, &bindings, &p, groups)?;
        (&BACKWARD_DQ, &BACKWARD_DKV)
    };
    let bindings = bind(dq, gpu, given);
    gpu.dispatch_costed(dq, &overrides, &bindings, &p, groups, cost(1.0))?;
    let bindings = bind(dkv, gpu, given);
    gpu.dispatch_costed(dkv, &overrides, &bindings, &p, groups, cost(1.5))?;
    Ok(dqkv)
}
