//! The adaptive ODE solver's vector work (`shaders/solver.wgsl`): a linear combination of up to
//! six tensors and a base in one pass (a Runge-Kutta stage from its earlier stages), and the
//! weighted squares of an error estimate (summed with [`super::sum_rows`] into the error norm
//! that accepts or rejects a step).

use super::{ensure_f32, groups};
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels};
use crate::shaders::SOLVER;
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        n: u32,
        /// combine: how many terms are read.
        terms: u32,
        /// combine: the base's coefficient (0: not read).
        base: f32,
        /// combine: the terms' coefficients; error_weights: c0 = atol, c1 = rtol.
        c0: f32,
        c1: f32,
        c2: f32,
        c3: f32,
        c4: f32,
        c5: f32,
        _pad: [u32; 3],
    }
}

kernels! {
    SOLVER, Params {
        // base, k0..k5, out.
        COMBINE = combine(Read, Read, Read, Read, Read, Read, Read, ReadWrite);
        // e, z, z_new, out.
        ERROR_WEIGHTS = error_weights(Read, Read, Read, Unused, Unused, Unused, Unused, ReadWrite);
    }
}

/// Elements per workgroup: 256 invocations x 4 vec4s each (as in the shader).
const PER_GROUP: usize = 256 * 4 * 4;

/// Most terms [`linear_combination`] takes.
pub const MAX_TERMS: usize = 6;

fn check_like(op: &str, first: &Tensor, t: &Tensor) -> Result<()> {
    ensure_f32(op, t)?;
    ensure_shape!(
        t.shape() == first.shape(),
        "{op} needs equal shapes, got {:?} and {:?}",
        first.shape(),
        t.shape()
    );
    Ok(())
}

/// `beta base + sum_j c_j k_j` for `base = Some((beta, base))` and `terms = [(c_j, k_j)]` (at
/// most [`MAX_TERMS`], at least one tensor in all), a new tensor of their common shape. The sum
/// is accumulated in f32 in the order given, each term with one fused multiply-add.
pub fn linear_combination(
    base: Option<(f32, &Tensor)>,
    terms: &[(f32, &Tensor)],
) -> Result<Tensor> {
    ensure_shape!(
        terms.len() <= MAX_TERMS,
        "linear_combination takes at most {MAX_TERMS} terms, got {}",
        terms.len()
    );
    let first = match (base, terms.first()) {
        (Some((_, b)), _) => b,
        (None, Some((_, k))) => k,
        (None, None) => {
            return Err(crate::Error::Shape(
                "linear_combination of nothing: give a base or a term".into(),
            ))
        }
    };
    for t in base.iter().map(|b| b.1).chain(terms.iter().map(|t| t.1)) {
        check_like("linear_combination", first, t)?;
    }
    let gpu = first.gpu();
    let n = first.numel();
    let out = Tensor::uninit(gpu, first.shape(), DType::F32)?;
    let mut c = [0.0f32; MAX_TERMS];
    for (slot, (coefficient, _)) in c.iter_mut().zip(terms) {
        *slot = *coefficient;
    }
    // A zero base coefficient means "not read" to the kernel.
    let (beta, base) = match base {
        Some((beta, b)) if beta != 0.0 => (beta, Some(b)),
        _ => (0.0, None),
    };
    let p = Params {
        n: n as u32,
        terms: terms.len() as u32,
        base: beta,
        c0: c[0],
        c1: c[1],
        c2: c[2],
        c3: c[3],
        c4: c[4],
        c5: c[5],
        _pad: [0; 3],
    };
    let k = |j: usize| terms.get(j).map(|t| t.1);
    let bindings = super::bind(
        &COMBINE,
        gpu,
        [base, k(0), k(1), k(2), k(3), k(4), k(5), Some(&out)],
    );
    gpu.dispatch(&COMBINE, &[], &bindings, &p, groups(n, PER_GROUP))?;
    Ok(out)
}

/// `(e / (atol + rtol max(|z|, |z_new|)))^2` elementwise: the terms whose mean is the square of
/// an embedded Runge-Kutta pair's error norm (`e` the error estimate, `z` and `z_new` the state
/// before and after the step).
pub fn error_weights(
    e: &Tensor,
    z: &Tensor,
    z_new: &Tensor,
    atol: f32,
    rtol: f32,
) -> Result<Tensor> {
    ensure_f32("error_weights", e)?;
    check_like("error_weights", e, z)?;
    check_like("error_weights", e, z_new)?;
    let gpu = e.gpu();
    let n = e.numel();
    let out = Tensor::uninit(gpu, e.shape(), DType::F32)?;
    let p = Params {
        n: n as u32,
        c0: atol,
        c1: rtol,
        ..Params::default()
    };
    let bindings = super::bind(
        &ERROR_WEIGHTS,
        gpu,
        [
            Some(e),
            Some(z),
            Some(z_new),
            None,
            None,
            None,
            None,
            Some(&out),
        ],
    );
    gpu.dispatch(&ERROR_WEIGHTS, &[], &bindings, &p, groups(n, PER_GROUP))?;
    Ok(out)
}
