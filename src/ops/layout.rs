//! Data movement (`shaders/layout.wgsl`): transpose of the last two dimensions, copies of
//! token blocks (concat and split along the token axis), patchify and unpatchify.

use super::ensure_f32;
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Binding, KernelProfile};
use crate::shaders::LAYOUT;
use crate::tensor::{DType, Tensor};

const TILE: usize = 16;

kernel_params! {
    struct Params {
        batch: u32,
        rows: u32,
        cols: u32,
        tiles_c: u32,
        tiles_r: u32,
        src_row0: u32,
        dst_row0: u32,
        _pad: u32,
    }
}

kernels! {
    LAYOUT, Params {
        TRANSPOSE_KERNEL = transpose(Read, ReadWrite);
        TRANSPOSE_DIRECT = transpose_direct(Read, ReadWrite);
        COPY_ROWS = copy_rows(Read, ReadWrite);
        PATCHIFY = patchify(Read, ReadWrite);
    }
}

/// Swap the last two dimensions.
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    ensure_f32("transpose", x)?;
    let s = x.shape();
    ensure_shape!(
        s.len() >= 2,
        "transpose needs at least two dimensions, got {s:?}"
    );
    let (rows, cols) = (s[s.len() - 2], s[s.len() - 1]);
    let batch = x.numel() / (rows * cols).max(1);
    let mut out_shape = s.to_vec();
    out_shape.swap(s.len() - 2, s.len() - 1);
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, &out_shape, DType::F32)?;
    let p = Params {
        batch: batch as u32,
        rows: rows as u32,
        cols: cols as u32,
        tiles_c: cols.div_ceil(TILE) as u32,
        tiles_r: rows.div_ceil(TILE) as u32,
        src_row0: 0,
        dst_row0: 0,
        _pad: 0,
    };
    // CPU drivers: no tile, no barrier (their caches serve the strided reads).
    if gpu.profile() == KernelProfile::Cpu {
        let groups = x.numel().div_ceil(256 * 8) as u64;
        gpu.dispatch(
            &TRANSPOSE_DIRECT,
            &[],
            &[x.binding(), out.binding()],
            &p,
            groups,
        )?;
    } else {
        let groups = (batch * rows.div_ceil(TILE) * cols.div_ceil(TILE)) as u64;
        gpu.dispatch(
            &TRANSPOSE_KERNEL,
            &[],
            &[x.binding(), out.binding()],
            &p,
            groups,
        )?;
    }
    Ok(out)
}

/// `dst[b, dst_row0 + r, :] = src[b, src_row0 + r, :]` for `r < rows`.
fn copy_rows(
    src: &Tensor,
    src_row0: usize,
    dst: &Tensor,
    dst_row0: usize,
    rows: usize,
) -> Result<()> {
    let (ss, ds) = (src.shape(), dst.shape());
    let p = Params {
        batch: ss[0] as u32,
        rows: rows as u32,
        cols: ss[2] as u32,
        tiles_c: ss[1] as u32,
        tiles_r: ds[1] as u32,
        src_row0: src_row0 as u32,
        dst_row0: dst_row0 as u32,
        _pad: 0,
    };
    let groups = (ss[0] * rows * ss[2]).div_ceil(256 * 4) as u64;
    src.gpu()
        .dispatch(&COPY_ROWS, &[], &[src.binding(), dst.binding()], &p, groups)
}

/// Concatenate `[B, T1, C]` and `[B, T2, C]` along the token axis into `[B, T1 + T2, C]`.
pub fn concat_tokens(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure_f32("concat_tokens", a)?;
    ensure_f32("concat_tokens", b)?;
    let (sa, sb) = (a.shape(), b.shape());
    ensure_shape!(
        sa.len() == 3 && sb.len() == 3 && sa[0] == sb[0] && sa[2] == sb[2],
        "concat_tokens takes [B, T1, C] and [B, T2, C], got {sa:?} and {sb:?}"
    );
    let out = Tensor::uninit(a.gpu(), &[sa[0], sa[1] + sb[1], sa[2]], DType::F32)?;
    copy_rows(a, 0, &out, 0, sa[1])?;
    copy_rows(b, 0, &out, sa[1], sb[1])?;
    Ok(out)
}

/// Split `[B, T, C]` along the token axis into `[B, first, C]` and `[B, T - first, C]`.
pub fn split_tokens(x: &Tensor, first: usize) -> Result<(Tensor, Tensor)> {
    ensure_f32("split_tokens", x)?;
    let s = x.shape();
    ensure_shape!(
        s.len() == 3 && first <= s[1],
        "split_tokens takes [B, T, C] and a split point at most T, got {s:?} and {first}"
    );
    let gpu = x.gpu();
    let a = Tensor::uninit(gpu, &[s[0], first, s[2]], DType::F32)?;
    let b = Tensor::uninit(gpu, &[s[0], s[1] - first, s[2]], DType::F32)?;
    copy_rows(x, 0, &a, 0, first)?;
    copy_rows(x, first, &b, 0, s[1] - first)?;
    Ok((a, b))
}

/// Images `[B, C, H, W]` to tokens `[B, (H/p)(W/p), C p p]`: token `gy (W/p) + gx` holds the
/// patch at row `gy`, column `gx`, its features ordered `(c, py, px)`.
pub fn patchify(images: &Tensor, p: usize) -> Result<Tensor> {
    ensure_f32("patchify", images)?;
    let s = images.shape();
    ensure_shape!(
        s.len() == 4 && p > 0 && s[2].is_multiple_of(p) && s[3].is_multiple_of(p),
        "patchify takes images [B, C, H, W] with H and W multiples of the patch size {p}, got {s:?}"
    );
    let out_shape = [s[0], (s[2] / p) * (s[3] / p), s[1] * p * p];
    permute_patches(images, &out_shape, s, p, true)
}

/// The inverse of [`patchify`]: tokens `[B, (H/p)(W/p), C p p]` to images `[B, C, H, W]`.
pub fn unpatchify(
    tokens: &Tensor,
    channels: usize,
    height: usize,
    width: usize,
    p: usize,
) -> Result<Tensor> {
    ensure_f32("unpatchify", tokens)?;
    let want = [
        tokens.shape()[0],
        (height / p) * (width / p),
        channels * p * p,
    ];
    ensure_shape!(
        tokens.shape().len() == 3 && p > 0 && height.is_multiple_of(p) && width.is_multiple_of(p) && tokens.shape() == want,
        "unpatchify to [_, {channels}, {height}, {width}] with patch {p} takes tokens {want:?}, got {:?}",
        tokens.shape()
    );
    let image_shape = [tokens.shape()[0], channels, height, width];
    permute_patches(tokens, &image_shape, &image_shape, p, false)
}

fn permute_patches(
    x: &Tensor,
    out_shape: &[usize],
    image: &[usize],
    p: usize,
    forward: bool,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, out_shape, DType::F32)?;
    let params = Params {
        batch: image[0] as u32,
        rows: image[1] as u32,
        cols: image[2] as u32,
        tiles_c: image[3] as u32,
        tiles_r: p as u32,
        src_row0: 0,
        dst_row0: 0,
        _pad: 0,
    };
    let overrides = [("PATCHIFY", if forward { 1.0 } else { 0.0 })];
    let groups = x.numel().div_ceil(256) as u64;
    gpu.dispatch(
        &PATCHIFY,
        &overrides,
        &[x.binding(), out.binding()],
        &params,
        groups,
    )?;
    Ok(out)
}

/// A copy of `x` in a new buffer (one buffer-to-buffer copy, ordered with the dispatches).
pub fn copy(x: &Tensor) -> Result<Tensor> {
    let out = Tensor::uninit(x.gpu(), x.shape(), x.dtype())?;
    copy_into(x, &out)?;
    Ok(out)
}

/// Copy `src` into `dst` (same number of elements and dtype).
pub fn copy_into(src: &Tensor, dst: &Tensor) -> Result<()> {
    ensure_shape!(
        src.numel() == dst.numel() && src.dtype() == dst.dtype(),
        "copy: {:?} {:?} into {:?} {:?}",
        src.shape(),
        src.dtype(),
        dst.shape(),
        dst.dtype()
    );
    if let (
        Binding::Buffer {
            storage: s,
            offset: so,
            size: n,
        },
        Binding::Buffer {
            storage: d,
            offset: doff,
            ..
        },
    ) = (src.binding(), dst.binding())
    {
        if n > 0 {
            src.gpu().copy(s, so, d, doff, n.div_ceil(4) * 4);
        }
    }
    Ok(())
}

/// Copy `rows` token rows of `src` (`[B, Ts, C]`) from row `src_row0` into `dst` (`[B, Td, C]`)
/// at row `dst_row0`, for every sample.
pub fn copy_tokens(
    src: &Tensor,
    src_row0: usize,
    dst: &Tensor,
    dst_row0: usize,
    rows: usize,
) -> Result<()> {
    ensure_f32("copy_tokens", src)?;
    ensure_f32("copy_tokens", dst)?;
    let (ss, ds) = (src.shape(), dst.shape());
    ensure_shape!(
        ss.len() == 3
            && ds.len() == 3
            && ss[0] == ds[0]
            && ss[2] == ds[2]
            && src_row0 + rows <= ss[1]
            && dst_row0 + rows <= ds[1],
        "copy_tokens: rows {src_row0}..+{rows} of {ss:?} into rows {dst_row0}.. of {ds:?}"
    );
    copy_rows(src, src_row0, dst, dst_row0, rows)
}
