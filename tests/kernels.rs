//! Every kernel of the engine foundation against its CPU f64 reference, on random inputs of sizes
//! 1, 7, 63, 65, 127, 257 and non-square shapes, with outputs poisoned (NaN) before each run.

mod common;

use common::{
    assert_close, assert_rel, both_profiles, f64s, gpu, gpu_other_profile, gpu_without_subgroups,
    rand_vec, reference as cpu,
};
use rectiflow::gpu::{GpuOptions, KernelProfile, TuneMode};
use rectiflow::ops::{self, Activation, MatmulAux, MatmulDesign, MatmulSpec, MatmulTiling};
use rectiflow::Gpu;
use rectiflow::{Error, Tensor};

type BinaryOp = fn(&Tensor, &Tensor) -> rectiflow::Result<Tensor>;
type BinaryCase = (&'static str, BinaryOp, fn(f64, f64) -> f64);

const SIZES: [usize; 6] = [1, 7, 63, 65, 127, 257];

/// Element counts for the elementwise kernels: the sizes above and a few larger ones.
fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = SIZES.to_vec();
    v.extend([63 * 65, 127 * 257, 100_003]);
    v
}

#[test]
fn binary_ops_match_reference() {
    // f32 add/sub/mul are correctly rounded: error at most half an ulp of the result.
    for (i, &n) in lengths().iter().enumerate() {
        let (x, y) = (rand_vec(n, 10 + i as u64), rand_vec(n, 20 + i as u64));
        let tx = Tensor::from_slice(gpu(), &[n], &x).unwrap();
        let ty = Tensor::from_slice(gpu(), &[n], &y).unwrap();
        let cases: [BinaryCase; 3] = [
            ("add", ops::add, |a, b| a + b),
            ("sub", ops::sub, |a, b| a - b),
            ("mul", ops::mul, |a, b| a * b),
        ];
        for (name, op, f) in cases {
            let got = op(&tx, &ty).unwrap().to_vec().unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&y)
                .map(|(&a, &b)| f(a as f64, b as f64))
                .collect();
            assert_rel(&format!("{name} n={n}"), &got, &want, 6e-8, 1e-30);
        }
    }
}

#[test]
fn unary_ops_match_reference() {
    for (i, &n) in lengths().iter().enumerate() {
        // Spread inputs over [-8, 8) so GELU and SiLU see both tails.
        let x: Vec<f32> = rand_vec(n, 30 + i as u64).iter().map(|v| 8.0 * v).collect();
        let tx = Tensor::from_slice(gpu(), &[n], &x).unwrap();
        let xd = f64s(&x);

        let got = ops::scale(&tx, -1.5).unwrap().to_vec().unwrap();
        let want: Vec<f64> = xd.iter().map(|v| -1.5 * v).collect();
        assert_rel(&format!("scale n={n}"), &got, &want, 6e-8, 1e-30);

        // tanh and exp are not correctly rounded on GPUs: a few ulp, plus an absolute floor
        // where the result is near 0 and cancellation dominates.
        let got = ops::gelu(&tx).unwrap().to_vec().unwrap();
        let want: Vec<f64> = xd.iter().map(|&v| cpu::gelu(v)).collect();
        assert_rel(&format!("gelu n={n}"), &got, &want, 2e-6, 2e-6);

        let got = ops::clamp(&tx, 2.5).unwrap().to_vec().unwrap();
        let want: Vec<f64> = xd.iter().map(|&v| v.clamp(-2.5, 2.5)).collect();
        assert_rel(&format!("clamp n={n}"), &got, &want, 0.0, 0.0);

        let got = ops::silu(&tx).unwrap().to_vec().unwrap();
        let want: Vec<f64> = xd.iter().map(|&v| cpu::silu(v)).collect();
        assert_rel(&format!("silu n={n}"), &got, &want, 2e-6, 2e-6);
    }
}

#[test]
fn gelu_and_silu_stay_finite_for_huge_inputs() {
    let x = [-1e30f32, -100.0, -20.0, 20.0, 100.0, 1e30];
    let t = Tensor::from_slice(gpu(), &[6], &x).unwrap();
    let g = ops::gelu(&t).unwrap().to_vec().unwrap();
    let s = ops::silu(&t).unwrap().to_vec().unwrap();
    let want_g: Vec<f64> = x
        .iter()
        .map(|&v| if v > 0.0 { v as f64 } else { 0.0 })
        .collect();
    assert_rel("gelu tails", &g, &want_g, 1e-6, 1e-6);
    assert_rel("silu tails", &s, &want_g, 1e-6, 1e-6);
}

#[test]
fn axpy_and_fill_work_in_place() {
    for (i, &n) in lengths().iter().enumerate() {
        let (x, y) = (rand_vec(n, 40 + i as u64), rand_vec(n, 50 + i as u64));
        let tx = Tensor::from_slice(gpu(), &[n], &x).unwrap();
        let ty = Tensor::from_slice(gpu(), &[n], &y).unwrap();
        ops::axpy(0.75, &tx, &ty).unwrap();
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| 0.75 * a as f64 + b as f64)
            .collect();
        // One fused multiply-add: one rounding, relative to the larger of the terms.
        let tol: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| 1.2e-7 * (0.75 * (a as f64).abs() + (b as f64).abs()) + 1e-30)
            .collect();
        assert_close(&format!("axpy n={n}"), &ty.to_vec().unwrap(), &want, &tol);

        ops::fill(&ty, 3.25).unwrap();
        assert!(
            ty.to_vec().unwrap().iter().all(|&v| v == 3.25),
            "fill n={n}"
        );
    }
}

#[test]
fn binary_ops_reject_mismatched_shapes() {
    let a = Tensor::zeros(gpu(), &[3, 4]).unwrap();
    let b = Tensor::zeros(gpu(), &[4, 3]).unwrap();
    let err = ops::add(&a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert!(
        err.to_string().contains("[3, 4]") && err.to_string().contains("[4, 3]"),
        "{err}"
    );
    assert!(matches!(ops::axpy(1.0, &a, &a), Err(Error::Shape(_))));
}

/// Sums over tokens (`[B, T, C] -> [B, C]`, `[T, C] -> [C]`: bias gradients), written and
/// accumulated, with C a multiple of 4 (the vec4 kernel) and not (the scalar one), on both
/// profiles, and of a view at an offset into its buffer.
#[test]
fn sum_tokens_matches_reference() {
    let mut seed = 9000;
    for g in both_profiles() {
        for shape in [
            vec![7, 12],
            vec![300, 64],
            vec![3, 17, 36],
            vec![2, 5, 7],
            vec![1, 1],
            vec![65, 257],
        ] {
            let (b, t, c) = match shape[..] {
                [t, c] => (1, t, c),
                [b, t, c] => (b, t, c),
                _ => unreachable!(),
            };
            let x = rand_vec(b * t * c, seed);
            let init = rand_vec(b * c, seed + 1);
            seed += 10;
            let tx = Tensor::from_slice(g, &shape, &x).unwrap();
            let out_shape = if shape.len() == 2 {
                vec![c]
            } else {
                vec![b, c]
            };
            let sums = ops::sum_tokens(&tx).unwrap();
            let added = Tensor::from_slice(g, &out_shape, &init).unwrap();
            ops::sum_tokens_into(&tx, &added, true).unwrap();
            let mut want = vec![0.0f64; b * c];
            let mut mag = vec![0.0f64; b * c];
            for bi in 0..b {
                for ti in 0..t {
                    for ci in 0..c {
                        let v = x[(bi * t + ti) * c + ci] as f64;
                        want[bi * c + ci] += v;
                        mag[bi * c + ci] += v.abs();
                    }
                }
            }
            let eps = f32::EPSILON as f64 / 2.0;
            let tol: Vec<f64> = mag
                .iter()
                .map(|m| (t as f64 + 2.0) * eps * m + 1e-30)
                .collect();
            assert_eq!(sums.shape(), out_shape.as_slice());
            assert_close(
                &format!("sum_tokens {shape:?}"),
                &sums.to_vec().unwrap(),
                &want,
                &tol,
            );
            let want_added: Vec<f64> = want.iter().zip(&init).map(|(w, &i)| w + i as f64).collect();
            let tol_added: Vec<f64> = tol
                .iter()
                .zip(&init)
                .map(|(t, &i)| t + eps * (i.abs() as f64))
                .collect();
            assert_close(
                &format!("sum_tokens_into (accumulate) {shape:?}"),
                &added.to_vec().unwrap(),
                &want_added,
                &tol_added,
            );
        }
        // A [4, 8] view 8 elements (32 bytes) into its buffer: the rows before it are not summed.
        let x = rand_vec(40, 9999);
        let whole = Tensor::from_slice(g, &[5, 8], &x).unwrap();
        let view = whole.view(8, &[4, 8]).unwrap();
        let got = ops::sum_tokens(&view).unwrap().to_vec().unwrap();
        let want: Vec<f64> = (0..8)
            .map(|ci| (1..5).map(|ti| x[ti * 8 + ci] as f64).sum())
            .collect();
        assert_close("sum_tokens of a view", &got, &want, &[1e-5; 8]);
    }
}

/// Two sums over tokens in one dispatch (vec4 and scalar paths, both profiles), written (into
/// NaN) and added, with the outputs two views of one buffer (two parameters' gradients in the
/// flat buffer) and the gap between them left as it was.
#[test]
fn sum_tokens_pair_matches_reference() {
    let mut seed = 9500;
    for g in both_profiles() {
        for (t, c) in [(7, 12), (300, 5), (1, 1), (65, 40), (33, 16)] {
            let (x, y) = (rand_vec(t * c, seed), rand_vec(t * c, seed + 1));
            seed += 10;
            let (tx, ty) = (
                Tensor::from_slice(g, &[t, c], &x).unwrap(),
                Tensor::from_slice(g, &[t, c], &y).unwrap(),
            );
            let sums = |v: &[f32], f: fn(f64) -> f64| -> Vec<f64> {
                (0..c)
                    .map(|ci| (0..t).map(|ti| f(v[ti * c + ci] as f64)).sum())
                    .collect()
            };
            let eps = f32::EPSILON as f64 / 2.0;
            for accumulate in [false, true] {
                // Views 256 bytes apart (the largest storage-offset alignment).
                let init = rand_vec(128, seed + 2);
                let whole = if accumulate {
                    Tensor::from_slice(g, &[128], &init).unwrap()
                } else {
                    Tensor::full(g, &[128], f32::NAN).unwrap()
                };
                let (first, second) = (whole.view(0, &[c]).unwrap(), whole.view(64, &[c]).unwrap());
                ops::sum_tokens_pair_into(&tx, &ty, &first, &second, accumulate).unwrap();
                let got = whole.to_vec().unwrap();
                for (name, v, at) in [("first", &x, 0), ("second", &y, 64)] {
                    let before = |i: usize| if accumulate { init[at + i] as f64 } else { 0.0 };
                    let want: Vec<f64> = sums(v, |a| a)
                        .iter()
                        .enumerate()
                        .map(|(i, s)| s + before(i))
                        .collect();
                    let tol: Vec<f64> = sums(v, f64::abs)
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (t as f64 + 2.0) * eps * (m + before(i).abs()) + 1e-30)
                        .collect();
                    assert_close(
                        &format!("sum_tokens_pair {name} [{t}, {c}] accumulate={accumulate}"),
                        &got[at..at + c],
                        &want,
                        &tol,
                    );
                    // The rest of the buffer is untouched.
                    for i in at + c..at + 64 {
                        let was = if accumulate { init[i] } else { f32::NAN };
                        assert!(got[i].to_bits() == was.to_bits(), "element {i} changed");
                    }
                }
            }
        }
    }
    // Overlapping outputs are refused.
    let g = gpu();
    let x = Tensor::zeros(g, &[3, 8]).unwrap();
    let out = Tensor::zeros(g, &[8]).unwrap();
    match ops::sum_tokens_pair_into(&x, &x, &out, &out, false) {
        Err(Error::Shape(m)) => assert!(m.contains("must not overlap"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn row_reductions_match_reference() {
    // Both kernel designs (see common::gpu_other_profile).
    for g in both_profiles() {
        let mut shapes: Vec<Vec<usize>> = vec![vec![1], vec![257], vec![2, 3, 1000], vec![5, 4097]];
        for &r in &SIZES {
            for &c in &[1, 7, 65, 257] {
                shapes.push(vec![r, c]);
            }
        }
        for (i, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let cols = *shape.last().unwrap();
            let x = rand_vec(n, 60 + i as u64);
            let t = Tensor::from_slice(g, shape, &x).unwrap();
            let xd = f64s(&x);
            // Summation error: at most (cols) ulps of the sum of magnitudes.
            let mag =
                cpu::reduce_rows(&xd.iter().map(|v| v.abs()).collect::<Vec<_>>(), cols, "sum");
            for (name, op) in [
                (
                    "sum",
                    ops::sum_rows as fn(&Tensor) -> rectiflow::Result<Tensor>,
                ),
                ("mean", ops::mean_rows),
                ("max", ops::max_rows),
            ] {
                let out = op(&t).unwrap();
                let want_shape = if shape.len() == 1 {
                    vec![1]
                } else {
                    shape[..shape.len() - 1].to_vec()
                };
                assert_eq!(out.shape(), want_shape.as_slice(), "{name} {shape:?}");
                let got = out.to_vec().unwrap();
                let want = cpu::reduce_rows(&xd, cols, name);
                let tol: Vec<f64> = match name {
                    "max" => vec![0.0; want.len()], // exact
                    "mean" => mag
                        .iter()
                        .map(|m| (cols as f64 + 2.0) * 6e-8 * m / cols as f64 + 1e-30)
                        .collect(),
                    _ => mag
                        .iter()
                        .map(|m| (cols as f64 + 1.0) * 6e-8 * m + 1e-30)
                        .collect(),
                };
                assert_close(&format!("{name} {shape:?}"), &got, &want, &tol);
            }
        }
    }
}

#[test]
fn max_of_a_row_of_negative_infinities_is_negative_infinity() {
    // Both kernel designs (see common::gpu_other_profile).
    for g in both_profiles() {
        let t = Tensor::from_slice(g, &[1, 3], &[f32::NEG_INFINITY; 3]).unwrap();
        assert_eq!(
            ops::max_rows(&t).unwrap().to_vec().unwrap(),
            vec![f32::NEG_INFINITY]
        );
    }
}

#[test]
fn transpose_matches_reference() {
    // Both kernel designs (see common::gpu_other_profile).
    for g in both_profiles() {
        let mut shapes: Vec<Vec<usize>> = vec![vec![3, 33, 65], vec![2, 1, 257], vec![4, 16, 16]];
        for &r in &SIZES {
            for &c in &SIZES {
                shapes.push(vec![r, c]);
            }
        }
        for (i, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            let x = rand_vec(n, 70 + i as u64);
            let t = Tensor::from_slice(g, shape, &x).unwrap();
            let out = ops::transpose(&t).unwrap();
            let mut want_shape = shape.clone();
            want_shape.swap(shape.len() - 2, shape.len() - 1);
            assert_eq!(out.shape(), want_shape.as_slice());
            let want = cpu::transpose(&f64s(&x), n / (r * c), r, c);
            assert_close(
                &format!("transpose {shape:?}"),
                &out.to_vec().unwrap(),
                &want,
                &vec![0.0; n],
            );
        }
    }
}

#[test]
fn workgroup_grids_beyond_65535_are_split_not_clipped() {
    // Both kernel designs (see common::gpu_other_profile).
    for g in both_profiles() {
        // 70_000 rows need 70_000 workgroups in the reduction: more than one dimension holds.
        let (rows, cols) = (70_000usize, 3usize);
        let x = rand_vec(rows * cols, 80);
        let t = Tensor::from_slice(g, &[rows, cols], &x).unwrap();
        let got = ops::sum_rows(&t).unwrap().to_vec().unwrap();
        let want = cpu::reduce_rows(&f64s(&x), cols, "sum");
        assert_rel("sum over 70000 rows", &got, &want, 1e-6, 1e-6);

        // 70_000 batch items of a tiny transpose and a tiny matmul: one workgroup each.
        let x = rand_vec(rows * 6, 81);
        let t = Tensor::from_slice(g, &[rows, 2, 3], &x).unwrap();
        let got = ops::transpose(&t).unwrap().to_vec().unwrap();
        let want = cpu::transpose(&f64s(&x), rows, 2, 3);
        assert_close(
            "transpose of 70000 items",
            &got,
            &want,
            &vec![0.0; rows * 6],
        );

        let w = rand_vec(3 * 2, 82);
        let tw = Tensor::from_slice(g, &[3, 2], &w).unwrap();
        let got = ops::matmul(&t, &tw).unwrap().to_vec().unwrap();
        let (xd, wd) = (f64s(&x), f64s(&w));
        let want: Vec<f64> = (0..rows * 4)
            .map(|e| {
                let (item, i, j) = (e / 4, (e % 4) / 2, e % 2);
                (0..3)
                    .map(|p| xd[item * 6 + i * 3 + p] * wd[p * 2 + j])
                    .sum()
            })
            .collect();
        assert_rel("matmul of 70000 items", &got, &want, 1e-6, 1e-6);
    }
}

// ---------------------------------------------------------------- matmul

#[derive(Clone, Copy)]
struct Mm {
    batch: usize,
    a_batched: bool,
    b_batched: bool,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    bias: bool,
    act: Activation,
    accumulate: bool,
    aux: Aux,
    tiling: Option<MatmulTiling>,
    context: &'static Gpu,
    /// Operands stored as f16 (the reference takes the same rounded values).
    f16_a: bool,
    f16_b: bool,
}

/// What the matmul's epilogue does with its auxiliary tensor ([`MatmulAux`]).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Aux {
    None,
    SavePre,
    ActGrad,
    /// Sums of op(A)'s rows over K (`[M]`; an unbatched `A^T B`).
    RowSums,
}

impl Mm {
    fn new(m: usize, k: usize, n: usize) -> Self {
        Mm {
            batch: 1,
            a_batched: false,
            b_batched: false,
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            bias: false,
            act: Activation::None,
            accumulate: false,
            aux: Aux::None,
            tiling: None,
            context: gpu(),
            f16_a: false,
            f16_b: false,
        }
    }

    fn check(&self, seed: u64) {
        let g = self.context;
        let (m, k, n) = (self.m, self.k, self.n);
        let ab = if self.a_batched { self.batch } else { 1 };
        let bb = if self.b_batched { self.batch } else { 1 };
        // f16 operands: the reference multiplies the values the GPU stores.
        let round = |v: Vec<f32>, f16: bool| -> Vec<f32> {
            if f16 {
                v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
            } else {
                v
            }
        };
        let a = round(rand_vec(ab * m * k, seed), self.f16_a);
        let b = round(rand_vec(bb * k * n, seed + 1), self.f16_b);
        let bias = rand_vec(n, seed + 2);
        let c0 = rand_vec(self.batch * m * n, seed + 3);
        let shape = |batched: bool, count: usize, r: usize, c: usize| {
            if batched {
                vec![count, r, c]
            } else {
                vec![r, c]
            }
        };
        let a_shape = if self.trans_a {
            shape(self.a_batched, ab, k, m)
        } else {
            shape(self.a_batched, ab, m, k)
        };
        let b_shape = if self.trans_b {
            shape(self.b_batched, bb, n, k)
        } else {
            shape(self.b_batched, bb, k, n)
        };
        let upload = |shape: &[usize], data: &[f32], f16: bool| {
            if f16 {
                Tensor::from_slice_f16(g, shape, data).unwrap()
            } else {
                Tensor::from_slice(g, shape, data).unwrap()
            }
        };
        let ta = upload(&a_shape, &a, self.f16_a);
        let tb = upload(&b_shape, &b, self.f16_b);
        let tbias = Tensor::from_slice(g, &[n], &bias).unwrap();
        let batched = self.a_batched || self.b_batched;
        let out_shape = shape(batched, self.batch, m, n);
        // The auxiliary tensor: a pre-activation to read, or NaN where the kernel must write.
        let pre = rand_vec(self.batch * m * n, seed + 4);
        // Row sums: what they add to when accumulating, else NaN.
        let sums0 = rand_vec(m, seed + 5);
        let taux = match (self.aux, self.accumulate) {
            (Aux::ActGrad, _) => Tensor::from_slice(g, &out_shape, &pre).unwrap(),
            (Aux::RowSums, true) => Tensor::from_slice(g, &[m], &sums0).unwrap(),
            (Aux::RowSums, false) => Tensor::full(g, &[m], f32::NAN).unwrap(),
            _ => Tensor::full(g, &out_shape, f32::NAN).unwrap(),
        };
        let spec = MatmulSpec {
            trans_a: self.trans_a,
            trans_b: self.trans_b,
            bias: self.bias.then_some(&tbias),
            activation: self.act,
            alpha: Some(self.alpha),
            tiling: self.tiling,
            aux: match self.aux {
                Aux::None => MatmulAux::None,
                Aux::SavePre => MatmulAux::SavePre(&taux),
                Aux::ActGrad => MatmulAux::ActGrad(&taux),
                Aux::RowSums => MatmulAux::RowSums(&taux),
            },
        };
        let out = if self.accumulate {
            let out = Tensor::from_slice(g, &shape(batched, self.batch, m, n), &c0).unwrap();
            ops::matmul_into(&ta, &tb, &spec, &out, true).unwrap();
            out
        } else {
            ops::matmul_with(&ta, &tb, &spec).unwrap()
        };
        assert_eq!(out.shape(), shape(batched, self.batch, m, n).as_slice());
        let (ad, bd, biasd, c0d) = (f64s(&a), f64s(&b), f64s(&bias), f64s(&c0));
        let act_code = match self.act {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Silu => 2,
        };
        let case = cpu::MatmulCase {
            a: &ad,
            b: &bd,
            batch: self.batch,
            a_batched: self.a_batched,
            b_batched: self.b_batched,
            m,
            k,
            n,
            trans_a: self.trans_a,
            trans_b: self.trans_b,
            alpha: self.alpha as f64,
            bias: self.bias.then_some(&biasd[..]),
            act: act_code,
            c0: self.accumulate.then_some(&c0d[..]),
        };
        let (mut want, mut mag) = cpu::matmul(&case);
        let what = format!(
            "matmul m={m} k={k} n={n} ta={} tb={} batch={}({}/{}) bias={} act={:?} acc={} aux={:?} \
             tiling={:?} f16 a/b={}/{}",
            self.trans_a, self.trans_b, self.batch, self.a_batched, self.b_batched, self.bias,
            self.act, self.accumulate, self.aux, self.tiling, self.f16_a, self.f16_b
        );
        let eps = f32::EPSILON as f64 / 2.0;
        let tolerance = |mag: &[f64], want: &[f64]| -> Vec<f64> {
            mag.iter()
                .zip(want)
                .map(|(&mg, &w)| 1.2 * (k as f64 + 3.0) * eps * mg + 2e-6 * w.abs() + 1e-6)
                .collect()
        };
        match self.aux {
            Aux::None => {}
            Aux::SavePre => {
                // The pre-activation: the same product without the activation; accumulating,
                // C's old value is part of it and the output is its activation.
                let (pw, pm) = cpu::matmul(&cpu::MatmulCase { act: 0, ..case });
                assert_close(
                    &format!("{what}: saved pre-activation"),
                    &taux.to_vec().unwrap(),
                    &pw,
                    &tolerance(&pm, &pw),
                );
                if self.accumulate {
                    let act = |x: f64| match self.act {
                        Activation::Gelu => cpu::gelu(x),
                        Activation::Silu => cpu::silu(x),
                        Activation::None => x,
                    };
                    for i in 0..want.len() {
                        want[i] = act(pw[i]);
                        // Both activations' slopes stay below 1.13.
                        mag[i] = 1.13 * pm[i];
                    }
                }
            }
            Aux::RowSums => {
                // A is stored [K, M]: row i of op(A) is column i of A (+ what was there).
                let c0 = |i: usize| {
                    if self.accumulate {
                        sums0[i] as f64
                    } else {
                        0.0
                    }
                };
                let rows = |f: fn(f64) -> f64| -> Vec<f64> {
                    (0..m)
                        .map(|i| (0..k).map(|p| f(ad[p * m + i])).sum::<f64>())
                        .collect()
                };
                let sums: Vec<f64> = rows(|x| x)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + c0(i))
                    .collect();
                let sums_mag: Vec<f64> = rows(f64::abs)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + c0(i).abs())
                    .collect();
                assert_close(
                    &format!("{what}: row sums"),
                    &taux.to_vec().unwrap(),
                    &sums,
                    &tolerance(&sums_mag, &sums),
                );
            }
            Aux::ActGrad => {
                // alpha op(A) op(B) act'(p) (+ C): the product without activation, scaled.
                let (pw, pm) = cpu::matmul(&cpu::MatmulCase {
                    act: 0,
                    c0: None,
                    ..case
                });
                let grad = |x: f64| match self.act {
                    Activation::Gelu => cpu::gelu_grad(x),
                    Activation::Silu => cpu::silu_grad(x),
                    Activation::None => 1.0,
                };
                for i in 0..want.len() {
                    let d = grad(pre[i] as f64);
                    let c = if self.accumulate { c0d[i] } else { 0.0 };
                    want[i] = pw[i] * d + c;
                    mag[i] = pm[i] * d.abs() + c.abs();
                }
            }
        }
        // f32 summation of k products in any order: at most (k + 3) ulps of sum |a b| (+ bias,
        // + accumulated value); the activations add a few ulps of their own.
        assert_close(
            &what,
            &out.to_vec().unwrap(),
            &want,
            &tolerance(&mag, &want),
        );
    }
}

fn shapes_to_test() -> Vec<(usize, usize, usize)> {
    let mut v: Vec<(usize, usize, usize)> = SIZES.iter().map(|&s| (s, s, s)).collect();
    v.extend([
        (1, 257, 7),
        (7, 1, 63),
        (63, 65, 127),
        (257, 7, 1),
        (65, 127, 257),
        (127, 63, 65),
        (3, 5, 2),
        // Multiples of 4 take the vec4 path.
        (64, 128, 256),
        (128, 64, 32),
        (4, 8, 12),
        (132, 36, 260),
        // A narrow C (fewer than 16 columns) is computed transposed by the subgroup design.
        (300, 66, 3),
        (64, 128, 8),
    ]);
    v
}

/// The subgroup design with `tm` rows, where this adapter has subgroups of 8 (else `None`: the
/// design cannot run here, and the run that would use it is skipped).
fn subgroup_tiling(tm: u32) -> Option<MatmulTiling> {
    let t = MatmulTiling::subgroup(tm);
    t.validate(gpu()).ok().map(|_| t)
}

/// Each profile's own tile choice, and every design forced (the subgroup design and the
/// context without subgroups where this adapter has subgroups).
fn every_design() -> Vec<(&'static Gpu, Option<MatmulTiling>)> {
    let runs = [
        (gpu(), None),
        (gpu_other_profile(), None),
        (gpu(), Some(MatmulTiling::new(16, 16, 4, 4, 16))),
        (gpu(), Some(MatmulTiling::lanes(16, 8, 8))),
    ];
    let subgroup = subgroup_tiling(32).map(|t| (gpu(), Some(t)));
    let without = gpu()
        .subgroup_size()
        .map(|_| (gpu_without_subgroups(), None));
    runs.into_iter().chain(subgroup).chain(without).collect()
}

/// f16 operands (A, B or both; "f16 storage with f32 accumulation") in every design and
/// layout, on odd shapes, vec4 shapes and a narrow output the subgroup design computes
/// transposed (where the f16 operand changes sides), batched with a shared weight, and through
/// the epilogue; the product is summed in f32, so the f32 tolerance holds for the rounded
/// inputs. Skipped where the adapter has no `SHADER_F16`.
#[test]
fn matmul_with_f16_operands_matches_reference() {
    if !gpu().has_f16() {
        eprintln!("skipped: {} has no SHADER_F16", gpu().adapter_info().name);
        return;
    }
    let mut seed = 5000;
    for (context, tiling) in every_design() {
        // Every load (each operand, stored either way) as f16 in the variant storing both, and
        // each one-sided variant once (its loads are the same text): fewer pipelines to compile.
        let layouts = [
            (false, false, true, true),
            (true, true, true, true),
            (false, true, true, false),
            (true, false, false, true),
        ];
        for (m, k, n) in [(63, 65, 127), (132, 36, 260), (300, 66, 3), (1, 7, 1)] {
            for (trans_a, trans_b, f16_a, f16_b) in layouts {
                Mm {
                    trans_a,
                    trans_b,
                    tiling,
                    context,
                    f16_a,
                    f16_b,
                    ..Mm::new(m, k, n)
                }
                .check(seed);
                seed += 10;
            }
        }
        // A linear layer over a batch with an f16 weight (B, shared), bias, SiLU, the
        // pre-activation saved and the product added to what C holds.
        Mm {
            batch: 3,
            a_batched: true,
            trans_b: true,
            bias: true,
            act: Activation::Silu,
            accumulate: true,
            aux: Aux::SavePre,
            tiling,
            context,
            f16_b: true,
            ..Mm::new(20, 64, 36)
        }
        .check(seed);
        seed += 10;
    }
    // A^T B over a long K with f16 operands: split into slices of K on the CPU profile, whose
    // views of the f16 tensors are half as many bytes per column.
    for (f16_a, f16_b) in [(true, false), (false, true), (true, true)] {
        Mm {
            trans_a: true,
            f16_a,
            f16_b,
            ..Mm::new(40, 2300, 36)
        }
        .check(seed);
        seed += 10;
    }
}

/// Every shape and layout with each profile's own tile choice, and with every design forced.
#[test]
fn matmul_every_layout_matches_reference() {
    let mut seed = 1000;
    for (context, tiling) in every_design() {
        for (m, k, n) in shapes_to_test() {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                Mm {
                    trans_a,
                    trans_b,
                    tiling,
                    context,
                    ..Mm::new(m, k, n)
                }
                .check(seed);
                seed += 10;
            }
        }
    }
}

#[test]
fn matmul_epilogue_bias_activation_alpha_accumulate() {
    let mut seed = 2000;
    for (m, k, n) in [(65, 63, 127), (64, 32, 128), (7, 257, 1), (1, 7, 65)] {
        for act in [Activation::None, Activation::Gelu, Activation::Silu] {
            Mm {
                bias: true,
                act,
                trans_b: true,
                ..Mm::new(m, k, n)
            }
            .check(seed);
            Mm {
                bias: true,
                act,
                alpha: -0.5,
                ..Mm::new(m, k, n)
            }
            .check(seed + 1);
            seed += 10;
        }
        Mm {
            accumulate: true,
            trans_a: true,
            ..Mm::new(m, k, n)
        }
        .check(seed + 2);
        Mm {
            accumulate: true,
            bias: true,
            alpha: 2.0,
            ..Mm::new(m, k, n)
        }
        .check(seed + 3);
    }
}

/// Shapes (M, K, N) for the epilogue's auxiliary tensor: multiples of the tiles and not, narrow
/// outputs (computed transposed by the subgroup design) and single rows and columns.
const AUX_SHAPES: [(usize, usize, usize); 5] = [
    (65, 63, 127),
    (64, 32, 128),
    (300, 66, 3),
    (7, 5, 1),
    (33, 16, 40),
];

/// The epilogue's auxiliary tensor: the pre-activation saved beside the activation (also with
/// the output's old value in it, accumulating), and the product times an activation's
/// derivative (accumulated or not), with every design, on shapes that are and are not multiples
/// of the tiles (narrow ones computed transposed included).
#[test]
fn matmul_epilogue_saves_pre_activation_and_applies_its_derivative() {
    let mut seed = 5000;
    for (context, tiling) in every_design() {
        for (m, k, n) in AUX_SHAPES {
            for act in [Activation::Gelu, Activation::Silu] {
                for (trans_a, trans_b) in [(false, false), (false, true), (true, false)] {
                    let base = Mm {
                        act,
                        trans_a,
                        trans_b,
                        tiling,
                        context,
                        ..Mm::new(m, k, n)
                    };
                    Mm {
                        aux: Aux::SavePre,
                        bias: true,
                        alpha: 0.75,
                        ..base
                    }
                    .check(seed);
                    Mm {
                        aux: Aux::SavePre,
                        accumulate: true,
                        bias: true,
                        ..base
                    }
                    .check(seed + 3);
                    Mm {
                        aux: Aux::ActGrad,
                        alpha: -1.5,
                        ..base
                    }
                    .check(seed + 1);
                    Mm {
                        aux: Aux::ActGrad,
                        accumulate: true,
                        ..base
                    }
                    .check(seed + 2);
                    seed += 10;
                }
            }
        }
        // Batched with a shared weight (folded into one product) and per item.
        for (a_batched, b_batched) in [(true, false), (true, true)] {
            Mm {
                batch: 3,
                a_batched,
                b_batched,
                act: Activation::Gelu,
                aux: Aux::ActGrad,
                tiling,
                context,
                ..Mm::new(17, 20, 36)
            }
            .check(seed);
            seed += 10;
        }
    }
}

/// `A^T B` over a long K (a weight gradient over every token) is split into slices of K on the
/// CPU profile, each adding into the output: still the product, with a bias added once, alpha
/// applied to every slice, and the first slice writing or accumulating as asked.
#[test]
fn matmul_over_a_long_k_in_slices_matches_reference() {
    let mut seed = 7000;
    // Contexts of this test's own, so that other tests' dispatches are not counted.
    for profile in [KernelProfile::Cpu, KernelProfile::Gpu] {
        let options = GpuOptions {
            poison: true,
            profile: Some(profile),
            tune: Some(TuneMode::Off),
            ..Default::default()
        };
        let context: &'static Gpu = Box::leak(Box::new(Gpu::with_options(&options).unwrap()));
        for (m, k, n) in [(40, 3000, 24), (9, 4097, 33), (64, 2049, 8)] {
            for (bias, accumulate) in [(false, true), (true, false)] {
                let case = Mm {
                    trans_a: true,
                    bias,
                    accumulate,
                    alpha: 0.5,
                    context,
                    ..Mm::new(m, k, n)
                };
                // What a check dispatches besides the product (fills of poisoned outputs):
                // the same check at a K of one slice.
                let before = context.dispatch_count();
                Mm { k: 16, ..case }.check(seed);
                let others = context.dispatch_count() - before - 1;
                let before = context.dispatch_count();
                case.check(seed + 1);
                seed += 10;
                let dispatches = context.dispatch_count() - before - others;
                let want = if context.profile() == KernelProfile::Cpu {
                    k.div_ceil(1024) as u64
                } else {
                    1
                };
                assert_eq!(
                    dispatches, want,
                    "m={m} k={k} n={n}: dispatches of the product"
                );
            }
        }
    }
}

/// Row sums beside an `A^T B` (a bias gradient beside a weight gradient): written or added, with
/// every design (a pass of their own where the subgroup kernel does not run: other designs, a
/// narrow output computed transposed), on shapes that are and are not multiples of the tiles,
/// over K in slices, with the product's own bias, activation and alpha untouched by them.
#[test]
fn matmul_row_sums_beside_the_product() {
    let mut seed = 7500;
    for (context, tiling) in every_design() {
        // And a K long enough to be split into slices on the CPU profile.
        for (m, k, n) in AUX_SHAPES.into_iter().chain([(40, 3000, 24)]) {
            for accumulate in [false, true] {
                let base = Mm {
                    trans_a: true,
                    aux: Aux::RowSums,
                    accumulate,
                    tiling,
                    context,
                    ..Mm::new(m, k, n)
                };
                base.check(seed);
                Mm {
                    trans_b: true,
                    bias: true,
                    act: Activation::Silu,
                    alpha: -0.5,
                    ..base
                }
                .check(seed + 1);
                seed += 10;
            }
        }
    }
    // With slices of K on the CPU profile: one dispatch per slice, no pass of its own.
    if subgroup_tiling(32).is_some() {
        let options = GpuOptions {
            poison: true,
            profile: Some(KernelProfile::Cpu),
            tune: Some(TuneMode::Off),
            ..Default::default()
        };
        let context: &'static Gpu = Box::leak(Box::new(Gpu::with_options(&options).unwrap()));
        let design = MatmulTiling::choose(context, 64, 64, 3072, 1).design;
        assert_eq!(design, MatmulDesign::Subgroup);
        let a = Tensor::full(context, &[3072, 64], 1.0).unwrap();
        let b = Tensor::full(context, &[3072, 64], 1.0).unwrap();
        let (out, sums) = (
            Tensor::zeros(context, &[64, 64]).unwrap(),
            Tensor::zeros(context, &[64]).unwrap(),
        );
        let spec = MatmulSpec {
            trans_a: true,
            aux: MatmulAux::RowSums(&sums),
            ..Default::default()
        };
        let before = context.dispatch_count();
        ops::matmul_into(&a, &b, &spec, &out, true).unwrap();
        assert_eq!(
            context.dispatch_count() - before,
            3,
            "three slices of 1024, nothing else"
        );
        assert_eq!(sums.to_vec().unwrap(), vec![3072.0; 64]);
        assert_eq!(out.to_vec().unwrap(), vec![3072.0; 64 * 64]);
        // The output and the sums as views of one buffer (a flat gradient buffer), apart.
        let flat = Tensor::zeros(context, &[64 * 64 + 64]).unwrap();
        let (out, sums) = (
            flat.view(0, &[64, 64]).unwrap(),
            flat.view(64 * 64, &[64]).unwrap(),
        );
        let spec = MatmulSpec {
            trans_a: true,
            aux: MatmulAux::RowSums(&sums),
            ..Default::default()
        };
        ops::matmul_into(&a, &b, &spec, &out, true).unwrap();
        let mut want = vec![3072.0; 64 * 64];
        want.extend([3072.0; 64]);
        assert_eq!(flat.to_vec().unwrap(), want);
        // Overlapping views are refused.
        let overlapping = flat.view(64 * 63, &[64]).unwrap();
        let spec = MatmulSpec {
            trans_a: true,
            aux: MatmulAux::RowSums(&overlapping),
            ..Default::default()
        };
        match ops::matmul_into(&a, &b, &spec, &out, true) {
            Err(Error::Shape(m)) => assert!(m.contains("must not share a buffer"), "{m}"),
            other => panic!("expected a shape error, got {other:?}"),
        }
    }
}

/// Misuse of the auxiliary tensor is refused with an error naming it.
#[test]
fn matmul_auxiliary_tensor_misuse_is_refused() {
    let g = gpu();
    let a = Tensor::full(g, &[8, 4], 1.0).unwrap();
    let b = Tensor::full(g, &[4, 6], 1.0).unwrap();
    let wrong = Tensor::zeros(g, &[8, 5]).unwrap();
    let right = Tensor::zeros(g, &[8, 6]).unwrap();
    let bias = Tensor::zeros(g, &[6]).unwrap();
    let cases: [(MatmulSpec, &str); 3] = [
        (
            MatmulSpec {
                activation: Activation::Silu,
                aux: MatmulAux::SavePre(&wrong),
                ..Default::default()
            },
            "auxiliary tensor must have the output's shape",
        ),
        (
            MatmulSpec {
                aux: MatmulAux::ActGrad(&right),
                ..Default::default()
            },
            "needs that activation and no bias",
        ),
        (
            MatmulSpec {
                activation: Activation::Gelu,
                bias: Some(&bias),
                aux: MatmulAux::ActGrad(&right),
                ..Default::default()
            },
            "needs that activation and no bias",
        ),
    ];
    let sums = Tensor::zeros(g, &[8]).unwrap();
    let wrong_sums = Tensor::zeros(g, &[6]).unwrap();
    let at = Tensor::full(g, &[4, 8], 1.0).unwrap();
    let row_sums = [
        (&a, &sums, false, "must be an unbatched A^T B"),
        (&at, &wrong_sums, true, "one sum per row of op(A): [8]"),
    ];
    for (lhs, sums, trans_a, message) in row_sums {
        let spec = MatmulSpec {
            trans_a,
            aux: MatmulAux::RowSums(sums),
            ..Default::default()
        };
        match ops::matmul_with(lhs, &b, &spec) {
            Err(Error::Shape(m)) => assert!(m.contains(message), "{m}"),
            other => panic!("expected a shape error ({message}), got {other:?}"),
        }
    }
    let batched = Tensor::full(g, &[2, 4, 8], 1.0).unwrap();
    let spec = MatmulSpec {
        trans_a: true,
        aux: MatmulAux::RowSums(&sums),
        ..Default::default()
    };
    match ops::matmul_with(&batched, &b, &spec) {
        Err(Error::Shape(m)) => assert!(m.contains("must be an unbatched A^T B"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
    for (spec, message) in cases {
        match ops::matmul_with(&a, &b, &spec) {
            Err(Error::Shape(m)) => assert!(m.contains(message), "{m}"),
            other => panic!("expected a shape error ({message}), got {other:?}"),
        }
    }
    let out = Tensor::zeros(g, &[8, 6]).unwrap();
    let spec = MatmulSpec {
        activation: Activation::Silu,
        aux: MatmulAux::SavePre(&out),
        ..Default::default()
    };
    match ops::matmul_into(&a, &b, &spec, &out, false) {
        Err(Error::Shape(m)) => assert!(m.contains("must not share a buffer"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn matmul_batched_with_shared_and_per_item_operands() {
    let mut seed = 3000;
    for (m, k, n) in [(65, 33, 17), (64, 16, 32), (1, 7, 1), (40, 12, 2)] {
        for (a_batched, b_batched) in [(true, true), (true, false), (false, true)] {
            for trans_b in [false, true] {
                Mm {
                    batch: 3,
                    a_batched,
                    b_batched,
                    trans_b,
                    ..Mm::new(m, k, n)
                }
                .check(seed);
                seed += 10;
            }
        }
    }
}

#[test]
fn matmul_every_tiling_matches_reference() {
    let tilings = [
        MatmulTiling::new(16, 16, 8, 8, 8),
        MatmulTiling::new(8, 8, 8, 8, 16),
        MatmulTiling::new(4, 4, 8, 8, 16),
        MatmulTiling::new(16, 16, 4, 4, 16),
        MatmulTiling::new(8, 8, 4, 4, 16),
        MatmulTiling::new(16, 8, 4, 8, 12),
        MatmulTiling::new(1, 32, 8, 4, 4),
        MatmulTiling::lanes(64, 8, 8),
        MatmulTiling::lanes(16, 16, 4),
        MatmulTiling::lanes(4, 8, 4),
        MatmulTiling::lanes(1, 4, 4),
        MatmulTiling::lanes(32, 4, 8),
    ];
    let subgroup = [8, 16, 32].into_iter().filter_map(subgroup_tiling);
    let mut seed = 4000;
    for t in tilings.into_iter().chain(subgroup) {
        for (m, k, n) in [(257, 65, 127), (128, 64, 132)] {
            for (trans_a, trans_b) in [(false, false), (true, true)] {
                Mm {
                    tiling: Some(t),
                    trans_a,
                    trans_b,
                    ..Mm::new(m, k, n)
                }
                .check(seed);
                seed += 10;
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_shapes_and_tilings() {
    let g = gpu();
    let a = Tensor::zeros(g, &[4, 5]).unwrap();
    let b = Tensor::zeros(g, &[6, 3]).unwrap();
    let err = ops::matmul(&a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert!(
        err.to_string().contains("K = 5") && err.to_string().contains("K = 6"),
        "{err}"
    );

    let a3 = Tensor::zeros(g, &[2, 4, 5]).unwrap();
    let b3 = Tensor::zeros(g, &[3, 5, 4]).unwrap();
    assert!(matches!(ops::matmul(&a3, &b3), Err(Error::Shape(_))));

    let b = Tensor::zeros(g, &[5, 3]).unwrap();
    let bias = Tensor::zeros(g, &[4]).unwrap();
    let spec = MatmulSpec {
        bias: Some(&bias),
        ..Default::default()
    };
    assert!(matches!(
        ops::matmul_with(&a, &b, &spec),
        Err(Error::Shape(_))
    ));

    let spec = MatmulSpec {
        tiling: Some(MatmulTiling::new(64, 64, 8, 8, 64)),
        ..Default::default()
    };
    assert!(matches!(
        ops::matmul_with(&a, &b, &spec),
        Err(Error::Config(_))
    ));
    let spec = MatmulSpec {
        tiling: Some(MatmulTiling::new(8, 8, 3, 4, 16)),
        ..Default::default()
    };
    assert!(matches!(
        ops::matmul_with(&a, &b, &spec),
        Err(Error::Config(_))
    ));
    let spec = MatmulSpec {
        tiling: Some(MatmulTiling::lanes(64, 16, 8)),
        ..Default::default()
    };
    assert!(matches!(
        ops::matmul_with(&a, &b, &spec),
        Err(Error::Config(_))
    ));
}
