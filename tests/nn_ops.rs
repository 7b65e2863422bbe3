//! The transformer ops, forward against CPU f64 references and backward against central finite
//! differences of those references, on shapes that are not tile multiples. Outputs are poisoned
//! (NaN) before each run. Bounds: forward as stated per test; gradients within
//! `5e-4 * max|g| + 5e-4 * |g|` of the finite differences (common::assert_grad).

mod common;

use common::{
    assert_grad, assert_rel, every_design, f64s, gpu, rand_vec, reference as cpu, upload,
};
use rectiflow::{ops, Tensor};

const H: f64 = 1e-4; // finite-difference step

#[test]
fn gelu_and_silu_backward_match_finite_differences() {
    let n = 257;
    let x: Vec<f32> = rand_vec(n, 1).iter().map(|v| 4.0 * v).collect();
    let w = rand_vec(n, 2);
    let (tx, tw) = (upload(gpu(), &[n], &x), upload(gpu(), &[n], &w));
    let (xd, wd) = (f64s(&x), f64s(&w));
    let got = ops::gelu_backward(&tx, &tw).unwrap().to_vec().unwrap();
    let want = cpu::numeric_grad(
        |x| x.iter().zip(&wd).map(|(v, w)| cpu::gelu(*v) * w).sum(),
        &xd,
        H,
    );
    assert_grad("gelu backward", &got, &want);
    let got = ops::silu_backward(&tx, &tw).unwrap().to_vec().unwrap();
    let want = cpu::numeric_grad(
        |x| x.iter().zip(&wd).map(|(v, w)| cpu::silu(*v) * w).sum(),
        &xd,
        H,
    );
    assert_grad("silu backward", &got, &want);
}

#[test]
fn layer_norm_forward_and_backward() {
    for (rows, cols, affine) in [
        (7, 65, true),
        (1, 1, false),
        (65, 33, false),
        (3, 257, true),
    ] {
        let eps = 1e-5;
        let x: Vec<f32> = rand_vec(rows * cols, 3)
            .iter()
            .map(|v| 2.0 * v + 0.5)
            .collect();
        let gamma: Vec<f32> = rand_vec(cols, 4).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = rand_vec(cols, 5);
        let w = rand_vec(rows * cols, 6);
        let g = gpu();
        let (tx, tg, tb, tw) = (
            upload(g, &[rows, cols], &x),
            upload(g, &[cols], &gamma),
            upload(g, &[cols], &beta),
            upload(g, &[rows, cols], &w),
        );
        let aff = affine.then_some((&tg, &tb));
        let (y, stats) = ops::layer_norm(&tx, aff, eps as f32).unwrap();
        let (xd, gd, bd, wd) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&w));
        let refa = |g: &[f64], b: &[f64], x: &[f64]| {
            let gb = (g.to_vec(), b.to_vec());
            cpu::layer_norm(x, cols, affine.then_some((&gb.0[..], &gb.1[..])), eps)
        };
        let want = refa(&gd, &bd, &xd);
        // A row of length 1 normalises to 0 (x - mean = 0); elsewhere a few ulps of 1/eps-scale.
        assert_rel(
            &format!("layer_norm {rows}x{cols}"),
            &y.to_vec().unwrap(),
            &want,
            1e-5,
            1e-5,
        );

        let (dx, daff) = ops::layer_norm_backward(&tx, &stats, affine.then_some(&tg), &tw).unwrap();
        let fd_x = cpu::numeric_grad(|x| cpu::weighted_sum(&refa(&gd, &bd, x), &wd), &xd, H);
        if cols > 1 {
            assert_grad(
                &format!("layer_norm dx {rows}x{cols}"),
                &dx.to_vec().unwrap(),
                &fd_x,
            );
        } else {
            assert!(dx.to_vec().unwrap().iter().all(|v| v.abs() < 1e-3));
        }
        if let Some((dg, db)) = daff {
            let fd_g = cpu::numeric_grad(|g| cpu::weighted_sum(&refa(g, &bd, &xd), &wd), &gd, H);
            let fd_b = cpu::numeric_grad(|b| cpu::weighted_sum(&refa(&gd, b, &xd), &wd), &bd, H);
            assert_grad("layer_norm dgamma", &dg.to_vec().unwrap(), &fd_g);
            assert_grad("layer_norm dbeta", &db.to_vec().unwrap(), &fd_b);
        }
    }
}

#[test]
fn rms_norm_forward_and_backward() {
    for (rows, cols) in [(7, 65), (17, 16), (2, 1), (3, 129)] {
        let eps = 1e-6;
        let x = rand_vec(rows * cols, 7);
        let gamma: Vec<f32> = rand_vec(cols, 8).iter().map(|v| 1.0 + 0.5 * v).collect();
        let w = rand_vec(rows * cols, 9);
        let g = gpu();
        let (tx, tg, tw) = (
            upload(g, &[rows, cols], &x),
            upload(g, &[cols], &gamma),
            upload(g, &[rows, cols], &w),
        );
        let (y, stats) = ops::rms_norm(&tx, &tg, eps as f32).unwrap();
        let (xd, gd, wd) = (f64s(&x), f64s(&gamma), f64s(&w));
        assert_rel(
            "rms_norm",
            &y.to_vec().unwrap(),
            &cpu::rms_norm(&xd, cols, &gd, eps),
            1e-5,
            1e-6,
        );
        let (dx, dg) = ops::rms_norm_backward(&tx, &stats, &tg, &tw).unwrap();
        let fd_x = cpu::numeric_grad(
            |x| cpu::weighted_sum(&cpu::rms_norm(x, cols, &gd, eps), &wd),
            &xd,
            H,
        );
        let fd_g = cpu::numeric_grad(
            |g| cpu::weighted_sum(&cpu::rms_norm(&xd, cols, g, eps), &wd),
            &gd,
            H,
        );
        if cols > 1 {
            assert_grad("rms_norm dx", &dx.to_vec().unwrap(), &fd_x);
        } else {
            // x / |x| is flat: the true gradient is ~eps / |x|^3, below f32's cancellation noise
            // in terms of size 1.
            assert!(dx.to_vec().unwrap().iter().all(|v| v.abs() < 1e-3));
        }
        assert_grad("rms_norm dgamma", &dg.to_vec().unwrap(), &fd_g);
    }
}

#[test]
fn softmax_forward_and_backward() {
    for (rows, cols) in [(7, 65), (1, 1), (33, 7), (2, 257)] {
        let x: Vec<f32> = rand_vec(rows * cols, 10).iter().map(|v| 5.0 * v).collect();
        let w = rand_vec(rows * cols, 11);
        let g = gpu();
        let (tx, tw) = (upload(g, &[rows, cols], &x), upload(g, &[rows, cols], &w));
        let y = ops::softmax(&tx).unwrap();
        let (xd, wd) = (f64s(&x), f64s(&w));
        assert_rel(
            "softmax",
            &y.to_vec().unwrap(),
            &cpu::softmax(&xd, cols),
            1e-5,
            1e-7,
        );
        let dx = ops::softmax_backward(&y, &tw).unwrap();
        let fd = cpu::numeric_grad(|x| cpu::weighted_sum(&cpu::softmax(x, cols), &wd), &xd, H);
        if cols > 1 {
            assert_grad("softmax dx", &dx.to_vec().unwrap(), &fd);
        }
    }
}

#[test]
fn modulate_and_gate_forward_and_backward() {
    let (b, t, c) = (3, 17, 65);
    let n = b * t * c;
    let g = gpu();
    let (x, h, w) = (rand_vec(n, 12), rand_vec(n, 13), rand_vec(n, 14));
    let (s, sh, gt) = (
        rand_vec(b * c, 15),
        rand_vec(b * c, 16),
        rand_vec(b * c, 17),
    );
    let (tx, th, tw) = (
        upload(g, &[b, t, c], &x),
        upload(g, &[b, t, c], &h),
        upload(g, &[b, t, c], &w),
    );
    let (ts, tsh, tgt) = (
        upload(g, &[b, c], &s),
        upload(g, &[b, c], &sh),
        upload(g, &[b, c], &gt),
    );
    let (xd, hd, wd, sd, shd, gd) = (f64s(&x), f64s(&h), f64s(&w), f64s(&s), f64s(&sh), f64s(&gt));

    let y = ops::modulate(&tx, &ts, &tsh).unwrap();
    assert_rel(
        "modulate",
        &y.to_vec().unwrap(),
        &cpu::modulate(&xd, t, c, &sd, &shd),
        1e-6,
        1e-6,
    );
    let (dx, ds, dsh) = ops::modulate_backward(&tx, &ts, &tw).unwrap();
    let f =
        |x: &[f64], s: &[f64], sh: &[f64]| cpu::weighted_sum(&cpu::modulate(x, t, c, s, sh), &wd);
    assert_grad(
        "modulate dx",
        &dx.to_vec().unwrap(),
        &cpu::numeric_grad(|x| f(x, &sd, &shd), &xd, H),
    );
    assert_grad(
        "modulate dscale",
        &ds.to_vec().unwrap(),
        &cpu::numeric_grad(|s| f(&xd, s, &shd), &sd, H),
    );
    assert_grad(
        "modulate dshift",
        &dsh.to_vec().unwrap(),
        &cpu::numeric_grad(|sh| f(&xd, &sd, sh), &shd, H),
    );

    let y = ops::gate(&tx, &th, &tgt).unwrap();
    assert_rel(
        "gate",
        &y.to_vec().unwrap(),
        &cpu::gate(&xd, &hd, t, c, &gd),
        1e-6,
        1e-6,
    );
    let (dh, dgate) = ops::gate_backward(&th, &tgt, &tw).unwrap();
    let f = |h: &[f64], gt: &[f64]| cpu::weighted_sum(&cpu::gate(&xd, h, t, c, gt), &wd);
    assert_grad(
        "gate dh",
        &dh.to_vec().unwrap(),
        &cpu::numeric_grad(|h| f(h, &gd), &hd, H),
    );
    assert_grad(
        "gate dgate",
        &dgate.to_vec().unwrap(),
        &cpu::numeric_grad(|gt| f(&hd, gt), &gd, H),
    );
}

#[test]
fn timestep_embedding_forward_and_backward() {
    // Batches of 5 and of 300 (several workgroups of the forward's invocations at any dim).
    for (b, dim) in [
        (5, 2),
        (5, 7),
        (300, 7),
        (5, 18),
        (300, 18),
        (5, 64),
        (5, 257),
    ] {
        let t: Vec<f32> = rand_vec(b, 18).iter().map(|v| 0.5 + 0.5 * v).collect();
        let w = rand_vec(b * dim, 19);
        let g = gpu();
        let (tt, tw) = (upload(g, &[b], &t), upload(g, &[b, dim], &w));
        let scale = 100.0;
        let y = ops::timestep_embedding(&tt, dim, scale).unwrap();
        let (td, wd) = (f64s(&t), f64s(&w));
        // Arguments up to 100: f32 rounds them to ~4e-6 before cos and sin.
        assert_rel(
            &format!("timestep b={b} dim={dim}"),
            &y.to_vec().unwrap(),
            &cpu::timestep_embedding(&td, dim, scale as f64),
            0.0,
            3e-5,
        );
        let dt = ops::timestep_embedding_backward(&tt, &tw, scale).unwrap();
        let fd = cpu::numeric_grad(
            |t| cpu::weighted_sum(&cpu::timestep_embedding(t, dim, scale as f64), &wd),
            &td,
            1e-6,
        );
        assert_grad(
            &format!("timestep dt b={b} dim={dim}"),
            &dt.to_vec().unwrap(),
            &fd,
        );
    }
}

#[test]
fn embedding_lookup_forward_and_backward() {
    let (rows, dim) = (11, 65); // 10 classes and the null class
    let labels = [3.0f32, 10.0, 3.0, 0.0, 7.0, 3.0, 10.0];
    let b = labels.len();
    let table = rand_vec(rows * dim, 20);
    let w = rand_vec(b * dim, 21);
    let g = gpu();
    let (tl, tt, tw) = (
        upload(g, &[b], &labels),
        upload(g, &[rows, dim], &table),
        upload(g, &[b, dim], &w),
    );
    let y = ops::embedding(&tl, &tt).unwrap().to_vec().unwrap();
    let want: Vec<f64> = (0..b * dim)
        .map(|e| table[labels[e / dim] as usize * dim + e % dim] as f64)
        .collect();
    assert_rel("embedding", &y, &want, 0.0, 0.0);
    // The backward adds into what the gradient buffer holds.
    let start = rand_vec(rows * dim, 22);
    let dtable = upload(g, &[rows, dim], &start);
    ops::embedding_backward(&tl, &tw, &dtable).unwrap();
    let mut want: Vec<f64> = f64s(&start);
    for (s, &l) in labels.iter().enumerate() {
        for c in 0..dim {
            want[l as usize * dim + c] += w[s * dim + c] as f64;
        }
    }
    assert_rel(
        "embedding backward",
        &dtable.to_vec().unwrap(),
        &want,
        1e-6,
        1e-6,
    );
}

#[test]
fn patchify_round_trips_and_matches_reference() {
    for (b, c, h, w, p) in [
        (2, 3, 8, 8, 2),
        (1, 1, 28, 28, 4),
        (3, 2, 6, 9, 3),
        (1, 1, 5, 5, 1),
    ] {
        let n = b * c * h * w;
        let img = rand_vec(n, 23);
        let g = gpu();
        let timg = upload(g, &[b, c, h, w], &img);
        let tokens = ops::patchify(&timg, p).unwrap();
        assert_eq!(tokens.shape(), [b, (h / p) * (w / p), c * p * p]);
        let want = cpu::patchify(&f64s(&img), b, c, h, w, p);
        assert_rel("patchify", &tokens.to_vec().unwrap(), &want, 0.0, 0.0);
        let back = ops::unpatchify(&tokens, c, h, w, p).unwrap();
        assert_eq!(back.to_vec().unwrap(), img, "unpatchify(patchify(x)) == x");
    }
    let bad = upload(gpu(), &[1, 1, 5, 6], &[0.0; 30]);
    assert!(ops::patchify(&bad, 2).is_err());
}

#[test]
fn concat_and_split_along_tokens() {
    let (b, t1, t2, c) = (3, 7, 65, 17);
    let (x1, x2) = (rand_vec(b * t1 * c, 24), rand_vec(b * t2 * c, 25));
    let g = gpu();
    let (a, bb) = (upload(g, &[b, t1, c], &x1), upload(g, &[b, t2, c], &x2));
    let joint = ops::concat_tokens(&a, &bb).unwrap();
    assert_eq!(joint.shape(), [b, t1 + t2, c]);
    let got = joint.to_vec().unwrap();
    for bi in 0..b {
        assert_eq!(
            &got[bi * (t1 + t2) * c..][..t1 * c],
            &x1[bi * t1 * c..][..t1 * c]
        );
        assert_eq!(
            &got[(bi * (t1 + t2) + t1) * c..][..t2 * c],
            &x2[bi * t2 * c..][..t2 * c]
        );
    }
    let (p1, p2) = ops::split_tokens(&joint, t1).unwrap();
    assert_eq!(p1.to_vec().unwrap(), x1);
    assert_eq!(p2.to_vec().unwrap(), x2);
    assert!(ops::concat_tokens(
        &a,
        &upload(g, &[b, t2, c + 1], &vec![0.0; b * t2 * (c + 1)])
    )
    .is_err());
}

fn check_attention(g: &rectiflow::Gpu, b: usize, t: usize, heads: usize, d: usize, grads: bool) {
    let n = b * t * 3 * heads * d;
    let qkv: Vec<f32> = rand_vec(n, 26 + t as u64).iter().map(|v| 2.0 * v).collect();
    let tq = upload(g, &[b, t, 3 * heads * d], &qkv);
    let (o, lse) = ops::attention(&tq, heads).unwrap();
    let qd = f64s(&qkv);
    let want = cpu::attention(&qd, b, t, heads, d);
    assert_rel(
        &format!("attention t={t} h={heads} d={d} {:?}", g.profile()),
        &o.to_vec().unwrap(),
        &want,
        1e-4,
        1e-5,
    );
    if grads {
        let w = rand_vec(b * t * heads * d, 27);
        let tw = upload(g, &[b, t, heads * d], &w);
        let dqkv = ops::attention_backward(&tq, &o, &lse, &tw, heads).unwrap();
        let wd = f64s(&w);
        let fd = cpu::numeric_grad(
            |q| cpu::weighted_sum(&cpu::attention(q, b, t, heads, d), &wd),
            &qd,
            H,
        );
        assert_grad(
            &format!("attention dqkv t={t} {:?}", g.profile()),
            &dqkv.to_vec().unwrap(),
            &fd,
        );
    }
}

#[test]
fn attention_matches_reference_at_many_lengths() {
    for g in every_design() {
        for (t, heads, d) in [(1, 1, 8), (17, 2, 16), (64, 4, 32), (200, 1, 7), (20, 3, 4)] {
            check_attention(g, 2, t, heads, d, false);
        }
        check_attention(g, 1, 24, 2, 128, false);
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    for g in every_design() {
        for (b, t, heads, d) in [(1, 1, 1, 4), (2, 17, 2, 8), (1, 70, 1, 5), (1, 9, 2, 16)] {
            check_attention(g, b, t, heads, d, true);
        }
    }
}

#[test]
fn attention_at_1024_tokens_never_allocates_a_token_by_token_matrix() {
    let g = rectiflow::Gpu::with_options(&rectiflow::gpu::GpuOptions {
        poison: true,
        ..Default::default()
    })
    .unwrap();
    let (b, t, heads, d) = (1, 1024, 2, 16);
    check_attention(&g, b, t, heads, d, false);
    // The largest buffer requested is the qkv input: 3 * 2 * 16 floats per token, far below the
    // t * t = 1M floats (4 MiB) of a materialised score matrix.
    let largest = g.pool_stats().largest_request;
    assert!(
        largest < (t * t * 4) as u64 / 8,
        "largest buffer {largest} bytes"
    );
}

/// The LayerNorm-modulation backward adds `dx` into a gradient it is given (the residual
/// stream's, summed in place), with more tokens than a workgroup has invocations (a sample's
/// rows loop) and its shift and scale gradients still added into their chunks.
#[test]
fn ln_modulate_backward_adds_into_a_given_gradient() {
    let (b, t, c, k) = (2, 70, 8, 3);
    let (shift, scale) = (1, 2);
    let n = b * t * c;
    let g = gpu();
    let (x, w, prior) = (rand_vec(n, 50), rand_vec(n, 51), rand_vec(n, 52));
    let ada = rand_vec(b * k * c, 53);
    let (tx, tw) = (upload(g, &[b, t, c], &x), upload(g, &[b, t, c], &w));
    let tada = upload(g, &[b, k * c], &ada);
    let (xd, wd, ad) = (f64s(&x), f64s(&w), f64s(&ada));
    let eps = 1e-6;
    let (_, stats) = ops::ln_modulate(&tx, &tada, shift, scale, eps as f32).unwrap();
    let d_ada = upload(g, &[b, k * c], &vec![0.0; b * k * c]);
    let dx = upload(g, &[b, t, c], &prior);
    ops::ln_modulate_backward_into(&tx, &stats, &tada, shift, scale, &tw, &d_ada, &dx, true)
        .unwrap();
    let lnm = |x: &[f64], a: &[f64]| cpu::ln_modulate(x, t, c, a, k, shift, scale, eps);
    let f = |x: &[f64], a: &[f64]| cpu::weighted_sum(&lnm(x, a), &wd);
    let want: Vec<f64> = cpu::numeric_grad(|x| f(x, &ad), &xd, H)
        .iter()
        .zip(&prior)
        .map(|(g, &p)| g + p as f64)
        .collect();
    assert_grad("ln_modulate dx (added)", &dx.to_vec().unwrap(), &want);
    assert_grad(
        "ln_modulate d_ada",
        &d_ada.to_vec().unwrap(),
        &cpu::numeric_grad(|a| f(&xd, a), &ad, H),
    );
    // The gradient may not be bound beside an input it would overwrite.
    match ops::ln_modulate_backward_into(&tx, &stats, &tada, shift, scale, &tw, &d_ada, &tw, true) {
        Err(rectiflow::Error::Shape(m)) => assert!(m.contains("must not share a buffer"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

/// The fused adaLN ops read their vectors as chunks of one conditioning tensor and add their
/// gradients into the matching chunks of its gradient (which starts with other content here,
/// to show that they add and touch nothing else).
#[test]
fn ln_modulate_and_ada_gate_read_and_write_chunks_in_place() {
    let (b, t, c, k) = (3, 17, 65, 4);
    let (shift, scale, gate) = (2, 0, 3);
    let n = b * t * c;
    let g = gpu();
    let (x, h, w) = (rand_vec(n, 40), rand_vec(n, 41), rand_vec(n, 42));
    let x: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| 3.0 * v + (i % 7) as f32)
        .collect();
    let ada = rand_vec(b * k * c, 43);
    let d_ada0 = rand_vec(b * k * c, 44);
    let (tx, th, tw) = (
        upload(g, &[b, t, c], &x),
        upload(g, &[b, t, c], &h),
        upload(g, &[b, t, c], &w),
    );
    let tada = upload(g, &[b, k * c], &ada);
    let (xd, hd, wd, ad) = (f64s(&x), f64s(&h), f64s(&w), f64s(&ada));
    let eps = 1e-6;

    let (y, stats) = ops::ln_modulate(&tx, &tada, shift, scale, eps as f32).unwrap();
    let lnm = |x: &[f64], a: &[f64]| cpu::ln_modulate(x, t, c, a, k, shift, scale, eps);
    assert_rel(
        "ln_modulate",
        &y.to_vec().unwrap(),
        &lnm(&xd, &ad),
        1e-5,
        1e-5,
    );
    let d_ada = upload(g, &[b, k * c], &d_ada0);
    let dx = ops::ln_modulate_backward(&tx, &stats, &tada, shift, scale, &tw, &d_ada).unwrap();
    let f = |x: &[f64], a: &[f64]| cpu::weighted_sum(&lnm(x, a), &wd);
    assert_grad(
        "ln_modulate dx",
        &dx.to_vec().unwrap(),
        &cpu::numeric_grad(|x| f(x, &ad), &xd, H),
    );
    let fd = cpu::numeric_grad(|a| f(&xd, a), &ad, H);
    let want: Vec<f64> = fd.iter().zip(&d_ada0).map(|(g, &a)| g + a as f64).collect();
    assert_rel(
        "ln_modulate d_ada (added)",
        &d_ada.to_vec().unwrap(),
        &want,
        1e-3,
        1e-4,
    );

    let y = ops::ada_gate(&tx, &th, &tada, gate).unwrap();
    let gated = |h: &[f64], a: &[f64]| cpu::gate(&xd, h, t, c, &cpu::chunk(a, k, c, gate));
    assert_rel(
        "ada_gate",
        &y.to_vec().unwrap(),
        &gated(&hd, &ad),
        1e-6,
        1e-6,
    );
    let d_ada = upload(g, &[b, k * c], &d_ada0);
    let dh = ops::ada_gate_backward(&th, &tada, gate, &tw, &d_ada, false).unwrap();
    let f = |h: &[f64], a: &[f64]| cpu::weighted_sum(&gated(h, a), &wd);
    assert_grad(
        "ada_gate dh",
        &dh.to_vec().unwrap(),
        &cpu::numeric_grad(|h| f(h, &ad), &hd, H),
    );
    let fd = cpu::numeric_grad(|a| f(&hd, a), &ad, H);
    let want: Vec<f64> = fd.iter().zip(&d_ada0).map(|(g, &a)| g + a as f64).collect();
    assert_rel(
        "ada_gate d_ada (added)",
        &d_ada.to_vec().unwrap(),
        &want,
        1e-3,
        1e-4,
    );
    // Chunks the ops do not use keep exactly what they held.
    let got = d_ada.to_vec().unwrap();
    for (i, (&v, &v0)) in got.iter().zip(&d_ada0).enumerate() {
        if (i % (k * c)) / c == 1 {
            assert_eq!(v, v0, "chunk 1 element {i} changed");
        }
    }
    // Begun by the gate's backward: the gate's chunk written, every other chunk zero (the
    // buffer starts as NaN: anything left unwritten shows).
    let d_ada = Tensor::full(g, &[b, k * c], f32::NAN).unwrap();
    let dh = ops::ada_gate_backward(&th, &tada, gate, &tw, &d_ada, true).unwrap();
    assert_grad(
        "ada_gate dh (d_ada begun)",
        &dh.to_vec().unwrap(),
        &cpu::numeric_grad(|h| f(h, &ad), &hd, H),
    );
    assert_rel(
        "ada_gate d_ada (begun)",
        &d_ada.to_vec().unwrap(),
        &fd,
        1e-3,
        1e-4,
    );
    for (i, v) in d_ada.to_vec().unwrap().into_iter().enumerate() {
        if (i % (k * c)) / c != gate {
            assert_eq!(v, 0.0, "element {i} outside the gate's chunk");
        }
    }
}

#[test]
fn qk_norm_forward_and_backward() {
    let g = gpu();
    for (rows, heads, d) in [(7, 3, 5), (33, 2, 16), (1, 1, 1)] {
        let n = rows * 3 * heads * d;
        let qkv: Vec<f32> = rand_vec(n, 50 + d as u64).iter().map(|v| 2.0 * v).collect();
        let (gq, gk) = (rand_vec(d, 51), rand_vec(d, 52));
        let w = rand_vec(n, 53);
        let (tq, tgq, tgk, tw) = (
            upload(g, &[rows, 3 * heads * d], &qkv),
            upload(g, &[d], &gq),
            upload(g, &[d], &gk),
            upload(g, &[rows, 3 * heads * d], &w),
        );
        let (qd, gqd, gkd, wd) = (f64s(&qkv), f64s(&gq), f64s(&gk), f64s(&w));
        let eps = 1e-6;
        let (y, stats) = ops::qk_norm(&tq, heads, &tgq, &tgk, eps as f32).unwrap();
        let what = format!("qk_norm rows={rows} heads={heads} d={d}");
        assert_rel(
            &what,
            &y.to_vec().unwrap(),
            &cpu::qk_norm(&qd, heads, d, &gqd, &gkd, eps),
            1e-5,
            1e-6,
        );
        // The scale gradients are added into what the buffers hold (here: 1).
        let (d_gq, d_gk) = (
            upload(g, &[d], &vec![1.0; d]),
            upload(g, &[d], &vec![1.0; d]),
        );
        let dx = ops::qk_norm_backward(&tq, &stats, heads, &tgq, &tgk, &tw, &d_gq, &d_gk).unwrap();
        let f = |q: &[f64], a: &[f64], b: &[f64]| {
            cpu::weighted_sum(&cpu::qk_norm(q, heads, d, a, b, eps), &wd)
        };
        assert_grad(
            &format!("{what} dqkv"),
            &dx.to_vec().unwrap(),
            &cpu::numeric_grad(|q| f(q, &gqd, &gkd), &qd, H),
        );
        for (name, got, fd) in [
            (
                "d gq",
                &d_gq,
                cpu::numeric_grad(|a| f(&qd, a, &gkd), &gqd, H),
            ),
            (
                "d gk",
                &d_gk,
                cpu::numeric_grad(|b| f(&qd, &gqd, b), &gkd, H),
            ),
        ] {
            let want: Vec<f64> = fd.iter().map(|v| v + 1.0).collect();
            assert_rel(
                &format!("{what} {name}"),
                &got.to_vec().unwrap(),
                &want,
                1e-3,
                1e-4,
            );
        }
        // One gradient buffer for both scales (tied parameters): both sums added into it.
        let d_g = upload(g, &[d], &vec![1.0; d]);
        ops::qk_norm_backward(&tq, &stats, heads, &tgq, &tgk, &tw, &d_g, &d_g).unwrap();
        let both: Vec<f64> = cpu::numeric_grad(|a| f(&qd, a, &gkd), &gqd, H)
            .iter()
            .zip(cpu::numeric_grad(|b| f(&qd, &gqd, b), &gkd, H))
            .map(|(q, k)| q + k + 1.0)
            .collect();
        assert_rel(
            &format!("{what} d g (one buffer for both)"),
            &d_g.to_vec().unwrap(),
            &both,
            1e-3,
            1e-4,
        );
    }
}
