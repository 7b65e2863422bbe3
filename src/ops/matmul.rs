//! Matrix multiply (`shaders/matmul.wgsl`): `A B`, `A B^T`, `A^T B`, batched, with an optional
//! bias and activation fused into the epilogue, and optional accumulation into the output. The
//! epilogue may also save the pre-activation beside the activated result, or multiply the
//! product by an activation's derivative ([`MatmulAux`]): a linear layer followed by an
//! activation and another linear layer then needs no separate activation pass, forward or
//! backward.
//!
//! Shapes: `A` is `[.., M, K]` (`[.., K, M]` with `trans_a`), `B` is `[.., K, N]` (`[.., N, K]`
//! with `trans_b`). Leading (batch) dimensions must match, or one side may have none, in which
//! case it is shared by every batch item. The result is `[.., M, N]`, f32. Either operand may be
//! stored as f16 (on devices with `SHADER_F16`): the kernels of `shaders::MATMUL_F16` convert it
//! as they load it, and sum in f32 (the f16 weights of `--f16`).

use super::ensure_f32;
use crate::error::{ensure_shape, Error, Result};
use crate::gpu::{kernel_params, kernels, Cost, Gpu, Kernel, KernelProfile, MatmulShape};
use crate::shaders::{
    activation, matmul_aux, MATMUL, MATMUL_F16A, MATMUL_F16AB, MATMUL_F16B, MATMUL_SUBGROUP,
    MATMUL_SUBGROUP_F16A, MATMUL_SUBGROUP_F16AB, MATMUL_SUBGROUP_F16B,
};
use crate::tensor::{DType, Tensor};

/// Lanes per subgroup the subgroup kernel is written for (a CPU driver's SIMD width).
const SUBGROUP_LANES: u32 = 8;

/// Activation applied in the epilogue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    #[default]
    None,
    /// GELU, tanh approximation.
    Gelu,
    Silu,
}

/// The three matmul designs (see docs/performance.md for what each is for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulDesign {
    /// GPUs: a workgroup stages tiles of A and B in workgroup memory.
    Tiled,
    /// CPU drivers without usable subgroups: barrier-free, every lane reads its own columns of
    /// B and the workgroup's rows of A straight from memory.
    Lanes,
    /// CPU drivers with subgroups of 8: each lane loads different data and shuffles it to the
    /// others, so every load serves the whole subgroup.
    Subgroup,
}

/// Tile shape of the matmul kernels:
///
/// - tiled (GPUs): a workgroup of `wg_m x wg_n` invocations, each computing `tm x tn` outputs,
///   stages `bk`-deep slices of A and B in workgroup memory; the tile of C is
///   `(wg_m tm) x (wg_n tn)`.
/// - lanes (CPU drivers such as lavapipe): `wg_n` invocations share `tm` rows and each owns `tn`
///   columns; no workgroup memory and no barriers (`wg_m` is 1, `bk` unused).
/// - subgroup (CPU drivers with subgroups of 8): one subgroup of 8 computes `tm x 32`, each lane
///   4 columns (`wg_n` 8, `tn` 4, `bk` 4); `tm` is 8, 16 or 32. Any shape: operands are read as
///   vec4s where their contiguous dimension allows, element by element otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulTiling {
    pub wg_m: u32,
    pub wg_n: u32,
    pub tm: u32,
    pub tn: u32,
    pub bk: u32,
    pub design: MatmulDesign,
}

impl MatmulTiling {
    /// A tiled (workgroup-memory) shape.
    pub const fn new(wg_m: u32, wg_n: u32, tm: u32, tn: u32, bk: u32) -> Self {
        MatmulTiling {
            wg_m,
            wg_n,
            tm,
            tn,
            bk,
            design: MatmulDesign::Tiled,
        }
    }

    /// A lanes (barrier-free) shape.
    pub const fn lanes(wg_n: u32, tm: u32, tn: u32) -> Self {
        MatmulTiling {
            wg_m: 1,
            wg_n,
            tm,
            tn,
            bk: 4,
            design: MatmulDesign::Lanes,
        }
    }

    /// A subgroup shape: `tm` rows (8, 16 or 32) by 32 columns per subgroup of 8.
    pub const fn subgroup(tm: u32) -> Self {
        MatmulTiling {
            wg_m: 1,
            wg_n: SUBGROUP_LANES,
            tm,
            tn: 4,
            bk: 4,
            design: MatmulDesign::Subgroup,
        }
    }

    /// The tile for an `m x n` output over `k` and `batch` items: the table tuned on this
    /// adapter (`ops::tune`, unless `RECTIFLOW_TUNE=off`) where the shape falls in one of its
    /// classes, else [`MatmulTiling::fixed_rule`].
    ///
    /// A subgroup tile is then cut to the fewest rows (8 or 16) that hold all of a short C: a
    /// layer with two outputs, computed transposed, has two rows, and a 16-row tile would
    /// compute 14 for nothing.
    pub fn choose(gpu: &Gpu, m: usize, n: usize, k: usize, batch: usize) -> Self {
        let t = super::tune::tuned_tiling(gpu, m, n, k, batch)
            .unwrap_or_else(|| Self::fixed_rule(gpu, m, n, batch));
        match t.design {
            MatmulDesign::Subgroup if (m as u32) < t.tm => {
                MatmulTiling::subgroup(t.tm.min((m as u32).next_power_of_two().max(8)))
            }
            _ => t,
        }
    }

    /// The tile measured fastest on this kind of adapter for an `m x n` output over `batch`
    /// items (see docs/performance.md), without tuning.
    ///
    /// CPU profile with subgroups of 8: 16-row tiles (8 when that leaves too few workgroups for
    /// the cores). 32-row tiles compute the same but measured 3x slower on lavapipe (most likely
    /// their unrolled body, twice as long, overflowing the core's instruction caches:
    /// docs/performance.md).
    /// CPU profile (lanes): as many lanes as N needs, at most 16 (a 128-column panel of B stays
    /// in cache; wider panels measured no faster at 1024 and slower at 2048), 8 x 8 outputs
    /// each; fewer rows per workgroup when there would be too few workgroups for the cores.
    /// GPU profile (tiled): a 64 x 64 tile, or 32 x 32 when that leaves too few workgroups.
    pub fn fixed_rule(gpu: &Gpu, m: usize, n: usize, batch: usize) -> Self {
        let workgroups = |t: MatmulTiling| {
            let (bm, bn) = t.tile();
            batch * m.div_ceil(bm as usize) * n.div_ceil(bn as usize)
        };
        if gpu.profile() == KernelProfile::Cpu && has_subgroups_of_8(gpu) {
            // The largest row block that still gives the cores work to share.
            Some(MatmulTiling::subgroup(16))
                .filter(|&t| workgroups(t) >= 16)
                .unwrap_or(MatmulTiling::subgroup(8))
        } else if gpu.profile() == KernelProfile::Cpu {
            let tn = if n > 4 { 8 } else { 4 };
            let wg_n = n.div_ceil(tn as usize).next_power_of_two().min(16) as u32;
            let mut t = MatmulTiling::lanes(wg_n, 8, tn);
            if workgroups(t) < 8 {
                t.tm = 4;
            }
            t
        } else {
            let big = MatmulTiling::new(16, 16, 4, 4, 16);
            if workgroups(big) >= 64 {
                big
            } else {
                MatmulTiling::new(8, 8, 4, 4, 16)
            }
        }
    }

    /// Rows and columns of C per workgroup.
    pub fn tile(&self) -> (u32, u32) {
        (self.wg_m * self.tm, self.wg_n * self.tn)
    }

    /// Whether this tile shape can run on `gpu` (invocation and workgroup-memory limits).
    pub fn validate(&self, gpu: &Gpu) -> Result<()> {
        let l = gpu.limits();
        let (bm, bn) = self.tile();
        let shared = 4 * self.bk * (bm + bn);
        let invocations = self.wg_m * self.wg_n;
        let fits = invocations >= 1
            && invocations <= l.max_compute_invocations_per_workgroup
            && invocations <= l.max_compute_workgroup_size_x;
        // The kernels hold at most 16 vec4 accumulators (TM x TN/4); the subgroup kernel 32.
        let ok = match self.design {
            MatmulDesign::Subgroup => {
                has_subgroups_of_8(gpu)
                    && *self == MatmulTiling::subgroup(self.tm)
                    && matches!(self.tm, 8 | 16 | 32)
            }
            MatmulDesign::Lanes => {
                fits && self.wg_m == 1
                    && matches!(self.tm, 4 | 8 | 16)
                    && matches!(self.tn, 4 | 8)
                    && self.tm * self.tn <= 64
            }
            MatmulDesign::Tiled => {
                fits && matches!(self.tm, 4 | 8)
                    && matches!(self.tn, 4 | 8)
                    && self.bk > 0
                    && self.bk.is_multiple_of(4)
                    && shared <= l.max_compute_workgroup_storage_size
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "matmul tiling {self:?} is not usable here: tiled shapes need tm and tn of 4 or 8, \
                 bk a multiple of 4 and 4*bk*(BM+BN) = {shared} bytes at most {}; lanes shapes \
                 need wg_m 1, tm of 4, 8 or 16, tn of 4 or 8 and tm*tn at most 64; both at most \
                 {} invocations; subgroup shapes need subgroups of exactly {SUBGROUP_LANES} lanes and tm \
                 of 8, 16 or 32",
                l.max_compute_workgroup_storage_size, l.max_compute_invocations_per_workgroup
            )))
        }
    }
}

/// The epilogue's auxiliary tensor: shaped like the output, or `[.., M]` for row sums.
#[derive(Clone, Copy, Debug, Default)]
pub enum MatmulAux<'a> {
    #[default]
    None,
    /// Also write the pre-activation `alpha op(A) op(B) + bias` here (the output holds the
    /// activation of it): what the backward of an activation needs, saved by the forward.
    /// Accumulating, the output's old value is part of the pre-activation: `C = act(C + alpha
    /// op(A) op(B) + bias)`, so a sum of several products is activated once (the MLP's first
    /// layer: input and time projections).
    SavePre(&'a Tensor),
    /// This holds a pre-activation `p`; the output is `alpha op(A) op(B) act'(p)`, with `act`
    /// the spec's activation (not applied to the output) and no bias: the gradient of `p`
    /// from that of `act(p)` when the product is that gradient (a linear layer's input
    /// gradient, where its input was `act(p)`).
    ActGrad(&'a Tensor),
    /// Also the sums of `op(A)`'s rows over K, `[M]` (not scaled by alpha), written here (added,
    /// when the product accumulates into its output): a linear layer's bias gradient
    /// `sum_tokens(dY)` beside its weight gradient `dY^T X`, from the values the product reads
    /// anyway. For an unbatched `A^T B`; where the subgroup kernel does not run (other designs,
    /// a narrow output computed transposed) the sums are a pass of their own.
    RowSums(&'a Tensor),
}

/// Options of a matmul beyond its two operands.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulSpec<'a> {
    pub trans_a: bool,
    pub trans_b: bool,
    /// Added to every row of the result, shape `[N]`.
    pub bias: Option<&'a Tensor>,
    pub activation: Activation,
    /// Multiplies the product before bias and activation (default 1 when `None`).
    pub alpha: Option<f32>,
    /// Tile shape; `None` picks [`MatmulTiling::choose`].
    pub tiling: Option<MatmulTiling>,
    /// A second tensor the epilogue writes or reads ([`MatmulAux`]).
    pub aux: MatmulAux<'a>,
}

kernel_params! {
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        batch: u32,
        a_stride: u32,
        b_stride: u32,
        c_stride: u32,
        tiles_m: u32,
        tiles_n: u32,
        alpha: f32,
        _pad: [u32; 2],
    }
}

kernels! {
    // a, b, bias (read only where HAS_BIAS), c, aux (used only where AUX says).
    MATMUL, Params {
        SCALAR = matmul(Read, Read, Read, ReadWrite, ReadWrite);
        VEC4 = matmul_vec4(Read, Read, Read, ReadWrite, ReadWrite);
        LANES = matmul_lanes(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_VEC4 = matmul_lanes_vec4(Read, Read, Read, ReadWrite, ReadWrite);
    }
    MATMUL_SUBGROUP, Params {
        SUBGROUP = matmul_subgroup(Read, Read, Read, ReadWrite, ReadWrite);
    }
    // The same kernels with f16 operands (A, B, both).
    MATMUL_F16A, Params {
        SCALAR_F16A = matmul(Read, Read, Read, ReadWrite, ReadWrite);
        VEC4_F16A = matmul_vec4(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_F16A = matmul_lanes(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_VEC4_F16A = matmul_lanes_vec4(Read, Read, Read, ReadWrite, ReadWrite);
    }
    MATMUL_F16B, Params {
        SCALAR_F16B = matmul(Read, Read, Read, ReadWrite, ReadWrite);
        VEC4_F16B = matmul_vec4(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_F16B = matmul_lanes(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_VEC4_F16B = matmul_lanes_vec4(Read, Read, Read, ReadWrite, ReadWrite);
    }
    MATMUL_F16AB, Params {
        SCALAR_F16AB = matmul(Read, Read, Read, ReadWrite, ReadWrite);
        VEC4_F16AB = matmul_vec4(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_F16AB = matmul_lanes(Read, Read, Read, ReadWrite, ReadWrite);
        LANES_VEC4_F16AB = matmul_lanes_vec4(Read, Read, Read, ReadWrite, ReadWrite);
    }
    MATMUL_SUBGROUP_F16A, Params {
        SUBGROUP_F16A = matmul_subgroup(Read, Read, Read, ReadWrite, ReadWrite);
    }
    MATMUL_SUBGROUP_F16B, Params {
        SUBGROUP_F16B = matmul_subgroup(Read, Read, Read, ReadWrite, ReadWrite);
    }
    MATMUL_SUBGROUP_F16AB, Params {
        SUBGROUP_F16AB = matmul_subgroup(Read, Read, Read, ReadWrite, ReadWrite);
    }
}

/// The kernel for a design and access width (`kernel_slot`), by operand storage: f32, A f16,
/// B f16, both.
static BY_STORAGE: [[&Kernel; 5]; 4] = [
    [&SUBGROUP, &SCALAR, &VEC4, &LANES, &LANES_VEC4],
    [
        &SUBGROUP_F16A,
        &SCALAR_F16A,
        &VEC4_F16A,
        &LANES_F16A,
        &LANES_VEC4_F16A,
    ],
    [
        &SUBGROUP_F16B,
        &SCALAR_F16B,
        &VEC4_F16B,
        &LANES_F16B,
        &LANES_VEC4_F16B,
    ],
    [
        &SUBGROUP_F16AB,
        &SCALAR_F16AB,
        &VEC4_F16AB,
        &LANES_F16AB,
        &LANES_VEC4_F16AB,
    ],
];

/// A design's column in [`BY_STORAGE`].
fn kernel_slot(design: MatmulDesign, vec4: bool) -> usize {
    match (design, vec4) {
        (MatmulDesign::Subgroup, _) => 0,
        (MatmulDesign::Tiled, false) => 1,
        (MatmulDesign::Tiled, true) => 2,
        (MatmulDesign::Lanes, false) => 3,
        (MatmulDesign::Lanes, true) => 4,
    }
}

/// Shapes of a matmul after checking: (batch dims, m, k, n, a batched, b batched).
struct Dims {
    batch_shape: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    a_batched: bool,
    b_batched: bool,
}

fn dims(a: &Tensor, b: &Tensor, spec: &MatmulSpec) -> Result<Dims> {
    let (sa, sb) = (a.shape(), b.shape());
    ensure_shape!(
        sa.len() >= 2 && sb.len() >= 2,
        "matmul needs operands of rank 2 or more, got {sa:?} and {sb:?}"
    );
    let (ra, ca) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (rb, cb) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (m, ka) = if spec.trans_a { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if spec.trans_b { (cb, rb) } else { (rb, cb) };
    ensure_shape!(
        ka == kb,
        "matmul inner dimensions differ: A {sa:?}{} has K = {ka}, B {sb:?}{} has K = {kb}",
        if spec.trans_a { " (transposed)" } else { "" },
        if spec.trans_b { " (transposed)" } else { "" }
    );
    let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let batch_shape = match (ba.is_empty(), bb.is_empty()) {
        (_, true) => ba.to_vec(),
        (true, false) => bb.to_vec(),
        (false, false) => {
            ensure_shape!(
                ba == bb,
                "matmul batch dimensions differ: {ba:?} and {bb:?} (or give one operand none)"
            );
            ba.to_vec()
        }
    };
    if let Some(bias) = spec.bias {
        ensure_f32("matmul bias", bias)?;
        ensure_shape!(
            bias.shape() == [n],
            "matmul bias must have shape [{n}], got {:?}",
            bias.shape()
        );
    }
    Ok(Dims {
        batch_shape,
        m,
        k: ka,
        n,
        a_batched: !ba.is_empty(),
        b_batched: !bb.is_empty(),
    })
}

/// `A B`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_with(a, b, &MatmulSpec::default())
}

/// `act(alpha op(A) op(B) + bias)` into a new tensor.
pub fn matmul_with(a: &Tensor, b: &Tensor, spec: &MatmulSpec) -> Result<Tensor> {
    let d = dims(a, b, spec)?;
    let mut shape = d.batch_shape.clone();
    shape.extend([d.m, d.n]);
    let out = Tensor::uninit(a.gpu(), &shape, DType::F32)?;
    record(a, b, spec, &d, &out, false)?;
    Ok(out)
}

/// Like [`matmul_with`], writing into `out` (`[.., M, N]`); with `accumulate` the result is added
/// to what `out` holds (gradient accumulation).
pub fn matmul_into(
    a: &Tensor,
    b: &Tensor,
    spec: &MatmulSpec,
    out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let d = dims(a, b, spec)?;
    let mut shape = d.batch_shape.clone();
    shape.extend([d.m, d.n]);
    ensure_shape!(
        out.shape() == shape.as_slice(),
        "matmul output must have shape {shape:?}, got {:?}",
        out.shape()
    );
    ensure_f32("matmul output", out)?;
    record(a, b, spec, &d, out, accumulate)
}

fn record(
    a: &Tensor,
    b: &Tensor,
    spec: &MatmulSpec,
    d: &Dims,
    out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    // Operands may be stored as f16 (the loads convert; the sums and the output are f32).
    // Tensors of f16 exist only on devices with SHADER_F16, which the f16 kernels need.
    for (name, t) in [("A", a), ("B", b)] {
        ensure_shape!(
            matches!(t.dtype(), DType::F32 | DType::F16),
            "matmul operand {name} must be f32 or f16, got {:?}",
            t.dtype()
        );
    }
    for t in [a, b].into_iter().chain(spec.bias) {
        ensure_shape!(
            !t.same_buffer(out),
            "matmul output must not share a buffer with an input"
        );
    }
    let (aux, aux_code) = match spec.aux {
        MatmulAux::None => (None, matmul_aux::NONE),
        MatmulAux::SavePre(p) => (Some(p), matmul_aux::SAVE_PRE),
        MatmulAux::ActGrad(p) => {
            ensure_shape!(
                spec.activation != Activation::None && spec.bias.is_none(),
                "a matmul times an activation's derivative needs that activation and no bias"
            );
            (Some(p), matmul_aux::ACT_GRAD)
        }
        MatmulAux::RowSums(p) => {
            ensure_shape!(
                spec.trans_a && d.batch_shape.is_empty(),
                "a matmul with row sums must be an unbatched A^T B (trans_a)"
            );
            (Some(p), matmul_aux::ROW_SUMS)
        }
    };
    let (aux_shape, whose) = match spec.aux {
        MatmulAux::RowSums(_) => (vec![d.m], "one sum per row of op(A):"),
        _ => (out.shape().to_vec(), "the output's shape"),
    };
    if let Some(p) = aux {
        ensure_f32("matmul auxiliary tensor", p)?;
        ensure_shape!(
            p.shape() == aux_shape.as_slice(),
            "the matmul's auxiliary tensor must have {whose} {aux_shape:?}, got {:?}",
            p.shape()
        );
        for t in [a, b].into_iter().chain(spec.bias) {
            ensure_shape!(
                !t.same_buffer(p),
                "the matmul's auxiliary tensor must not share a buffer with another operand"
            );
        }
        // Row sums and the output are both read-write bindings, so they may be views of one
        // buffer (a weight's and a bias's gradient in the flat gradient buffer) that do not
        // overlap.
        let apart = matches!(spec.aux, MatmulAux::RowSums(_)) && !out.overlaps(p);
        ensure_shape!(
            apart || !out.same_buffer(p),
            "the matmul's auxiliary tensor must not share a buffer with another operand"
        );
    }
    let gpu = a.gpu();
    // A weight shared by a batch of row-major A (a linear layer over [batch, tokens, features])
    // is one product of batch * M rows: the same addresses, but whole tiles where M alone
    // (16 tokens) would leave half of a 32-row tile idle.
    let folded;
    let d = if d.a_batched && !d.b_batched && !spec.trans_a {
        folded = Dims {
            batch_shape: Vec::new(),
            m: d.batch_shape.iter().product::<usize>() * d.m,
            a_batched: false,
            ..*d
        };
        &folded
    } else {
        d
    };
    if let MatmulAux::RowSums(sums) = spec.aux {
        // Only the subgroup kernel sums rows, and not for a narrow output it computes
        // transposed: elsewhere the sums are a pass of their own (A is [K, M] here: its rows
        // summed over K are its columns' sums), once however the product is split.
        let tiling = spec
            .tiling
            .unwrap_or_else(|| MatmulTiling::choose(gpu, d.m, d.n, d.k, 1));
        if tiling.design != MatmulDesign::Subgroup || transposed_output(&tiling, d) {
            ensure_f32("matmul with row sums: A", a)?;
            let plain = MatmulSpec {
                aux: MatmulAux::None,
                ..*spec
            };
            record(a, b, &plain, d, out, accumulate)?;
            return super::reduce::sum_tokens_into(a, sums, accumulate);
        }
    }
    if let Some(chunk) = k_chunk(gpu, a, b, spec, d) {
        // One dispatch per slice of K, each adding into the output.
        for k0 in (0..d.k).step_by(chunk) {
            let kc = chunk.min(d.k - k0);
            let slice = Dims {
                batch_shape: Vec::new(),
                k: kc,
                ..*d
            };
            let first = MatmulSpec {
                bias: spec.bias.filter(|_| k0 == 0),
                ..*spec
            };
            record(
                &a.view(k0 * d.m, &[kc, d.m])?,
                &b.view(k0 * d.n, &[kc, d.n])?,
                &first,
                &slice,
                out,
                accumulate || k0 > 0,
            )?;
        }
        return Ok(());
    }
    let batch: usize = d.batch_shape.iter().product();
    let mut tiling = spec
        .tiling
        .unwrap_or_else(|| MatmulTiling::choose(gpu, d.m, d.n, d.k, batch));
    tiling.validate(gpu)?;
    // The subgroup kernel's tiles are 32 columns wide: a narrow C (a layer with a few outputs)
    // is computed as C^T = op(B)^T op(A)^T, whose rows are the narrow side, and stored
    // transposed.
    let transposed = transposed_output(&tiling, d);
    let swapped;
    let (a, b, spec, d) = if transposed {
        swapped = (
            MatmulSpec {
                trans_a: !spec.trans_b,
                trans_b: !spec.trans_a,
                ..*spec
            },
            Dims {
                batch_shape: d.batch_shape.clone(),
                m: d.n,
                k: d.k,
                n: d.m,
                a_batched: d.b_batched,
                b_batched: d.a_batched,
            },
        );
        if spec.tiling.is_none() {
            tiling = MatmulTiling::choose(gpu, d.n, d.m, d.k, batch);
        }
        (b, a, &swapped.0, &swapped.1)
    } else {
        (a, b, spec, d)
    };
    // vec4 access needs each operand's contiguous dimension, and N, to be multiples of 4.
    let a_contig = if spec.trans_a { d.m } else { d.k };
    let b_contig = if spec.trans_b { d.k } else { d.n };
    let aligned = [a, b, out].iter().all(|t| t.vec4_aligned());
    let (bm, bn) = tiling.tile();
    let (tiles_m, tiles_n) = (d.m.div_ceil(bm as usize), d.n.div_ceil(bn as usize));
    let p = Params {
        m: d.m as u32,
        n: d.n as u32,
        k: d.k as u32,
        batch: batch as u32,
        a_stride: if d.a_batched { (d.m * d.k) as u32 } else { 0 },
        b_stride: if d.b_batched { (d.k * d.n) as u32 } else { 0 },
        c_stride: (d.m * d.n) as u32,
        tiles_m: tiles_m as u32,
        tiles_n: tiles_n as u32,
        alpha: spec.alpha.unwrap_or(1.0),
        _pad: [0; 2],
    };
    // (The lanes kernels read only B and C as vec4s.)
    let lanes = tiling.design == MatmulDesign::Lanes;
    let vec4 = (lanes || a_contig.is_multiple_of(4))
        && b_contig.is_multiple_of(4)
        && d.n.is_multiple_of(4)
        && aligned;
    let act = match spec.activation {
        Activation::None => activation::NONE,
        Activation::Gelu => activation::GELU,
        Activation::Silu => activation::SILU,
    };
    let b2 = |v: bool| if v { 1.0 } else { 0.0 };
    let epilogue = [
        ("TRANS_A", b2(spec.trans_a)),
        ("TRANS_B", b2(spec.trans_b)),
        ("HAS_BIAS", b2(spec.bias.is_some())),
        ("ACT", act as f64),
        ("ACCUMULATE", b2(accumulate)),
        ("AUX", aux_code as f64),
    ];
    // The subgroup kernel reads each operand, and writes C, as vec4s where it can.
    let subgroup_shape = [
        ("TM", tiling.tm as f64),
        ("TRANS_C", b2(transposed)),
        ("A_VEC4", b2(a_contig.is_multiple_of(4) && a.vec4_aligned())),
        ("B_VEC4", b2(b_contig.is_multiple_of(4) && b.vec4_aligned())),
        ("C_VEC4", b2(d.n.is_multiple_of(4) && out.vec4_aligned())),
    ];
    let shape: &[(&'static str, f64)] = match tiling.design {
        MatmulDesign::Subgroup => &subgroup_shape,
        _ => &[
            ("WG_M", tiling.wg_m as f64),
            ("WG_N", tiling.wg_n as f64),
            ("TM", tiling.tm as f64),
            ("TN", tiling.tn as f64),
            ("BK", tiling.bk as f64),
        ],
    };
    let overrides: Vec<(&'static str, f64)> = shape.iter().chain(&epilogue).copied().collect();

    let bias = spec.bias.map_or(gpu.absent(), |t| t.binding());
    let aux_binding = aux.map_or(gpu.absent_writable(), |t| t.binding());
    let groups = (batch * tiles_m * tiles_n) as u64;
    let storage = (a.dtype() == DType::F16) as usize + 2 * (b.dtype() == DType::F16) as usize;
    let kernel = BY_STORAGE[storage][kernel_slot(tiling.design, vec4)];
    let cost = Cost {
        flops: 2.0 * (batch * d.m * d.n * d.k) as f64,
        bytes: (a.byte_len()
            + b.byte_len()
            + 4 * (batch * d.m * d.n * (1 + accumulate as usize + aux.is_some() as usize)) as u64)
            as f64,
        matmul: Some(MatmulShape {
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            batch: batch as u32,
            trans_a: spec.trans_a,
            trans_b: spec.trans_b,
        }),
    };
    gpu.dispatch_costed(
        kernel,
        &overrides,
        &[a.binding(), b.binding(), bias, out.binding(), aux_binding],
        &p,
        groups,
        cost,
    )
}

/// Rows of K per dispatch for `A^T B` over many rows (a weight gradient `dY^T X` over every
/// token of a batch) on a CPU driver.
///
/// Why: each tile of such a product walks all of K, streaming a 32-column strip of A and one of
/// B (at K = 4096, 512 KB each), so the strips the next tiles share have left the core's cache
/// by the time they are read again. Slices of K make every dispatch's operands small enough to
/// stay cached while all tiles use them. Measured on the 2-core EPYC through lavapipe
/// (docs/performance.md, "Second round"): 1.2-1.4x at K = 4096-8192 with slices of 512 (1024
/// was better on one shape of three, 256 slower); with the 16-row subgroup tiles of the third
/// round, slices of 1024 beat 512 by about 1.1x ("Fourth round").
const CPU_K_CHUNK: usize = 1024;

/// The K slice for [`record`] to split a product into, if it should: `A^T B` with K beyond
/// two slices, unbatched, without an epilogue that is not linear in the sum (an activation,
/// an auxiliary tensor other than row sums, which add up over slices as C does), on the CPU
/// profile, where every slice's views are aligned (a slice is 4096 bytes per column, 2048 for
/// f16, so with wgpu's alignments of at most 256 bytes always: checked because a misaligned
/// view would be refused).
fn k_chunk(gpu: &Gpu, a: &Tensor, b: &Tensor, spec: &MatmulSpec, d: &Dims) -> Option<usize> {
    let align = gpu.limits().min_storage_buffer_offset_alignment as usize;
    let aligned = |cols: usize, t: &Tensor| {
        (CPU_K_CHUNK * cols * t.dtype().size() as usize).is_multiple_of(align)
    };
    (gpu.profile() == KernelProfile::Cpu
        && spec.trans_a
        && !spec.trans_b
        && d.batch_shape.is_empty()
        && d.k > 2 * CPU_K_CHUNK
        && spec.activation == Activation::None
        && matches!(spec.aux, MatmulAux::None | MatmulAux::RowSums(_))
        && spec.tiling.is_none()
        && aligned(d.m, a)
        && aligned(d.n, b))
    .then_some(CPU_K_CHUNK)
}

/// Whether the subgroup kernel computes `C^T` for this product: C narrower than 16 columns
/// and taller than wide (its 32-column tiles would be mostly idle).
fn transposed_output(tiling: &MatmulTiling, d: &Dims) -> bool {
    tiling.design == MatmulDesign::Subgroup && d.n < 16 && d.m > d.n
}

/// Whether the subgroup kernel can run here: subgroups of exactly 8 lanes.
fn has_subgroups_of_8(gpu: &Gpu) -> bool {
    gpu.subgroup_size() == Some(SUBGROUP_LANES)
}
