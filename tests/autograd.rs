//! The tape, the flat parameters and the optimiser: gradients of whole networks (every parameter)
//! against central finite differences of an f64 CPU reference, tape mechanics, and AdamW
//! against a CPU reference over several steps.

mod common;

use common::{assert_close, assert_grad, f64s, gpu, rand_vec, reference as cpu, upload};
use rectiflow::autograd::{functions as f, Tape};
use rectiflow::gpu::{Gpu, GpuOptions};
use rectiflow::ops::Activation;
use rectiflow::optim::{AdamW, AdamWConfig};
use rectiflow::params::{Init, ParamId, Params, ParamsBuilder};

fn private_gpu() -> Gpu {
    Gpu::with_options(&GpuOptions {
        poison: true,
        ..Default::default()
    })
    .unwrap()
}

/// `x W^T + b` on the CPU: x `[rows, inp]`, w `[out, inp]`.
fn linear_ref(x: &[f64], w: &[f64], b: Option<&[f64]>, inp: usize, out: usize) -> Vec<f64> {
    let rows = x.len() / inp;
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            y[r * out + o] = (0..inp)
                .map(|i| x[r * inp + i] * w[o * inp + i])
                .sum::<f64>()
                + b.map_or(0.0, |b| b[o]);
        }
    }
    y
}

fn mse_ref(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
}

/// Host copy of every parameter (in declaration order) and the inverse.
fn read_params(p: &Params) -> Vec<Vec<f64>> {
    p.specs()
        .iter()
        .enumerate()
        .map(|(i, _)| f64s(&p.value(id(p, i)).to_vec().unwrap()))
        .collect()
}

fn id(p: &Params, i: usize) -> ParamId {
    p.id(&p.specs()[i].name).unwrap()
}

/// Check every parameter's gradient against finite differences of `loss(params)`.
fn check_all_param_grads(p: &Params, loss: impl Fn(&[Vec<f64>]) -> f64) {
    let base = read_params(p);
    for (i, spec) in p.specs().iter().enumerate() {
        let got = p.grad(id(p, i)).unwrap().to_vec().unwrap();
        let want = cpu::numeric_grad(
            |v| {
                let mut all = base.clone();
                all[i] = v.to_vec();
                loss(&all)
            },
            &base[i],
            1e-4,
        );
        assert_grad(&format!("gradient of {}", spec.name), &got, &want);
    }
}

#[test]
fn two_layer_network_gradient_of_every_parameter() {
    let g = gpu();
    let (n, inp, hid, out) = (9, 5, 7, 3);
    let mut b = ParamsBuilder::new();
    let w1 = b.add(
        "l1.weight",
        &[hid, inp],
        Init::XavierUniform {
            fan_in: inp,
            fan_out: hid,
        },
    );
    let b1 = b.add("l1.bias", &[hid], Init::Normal { std: 0.1 });
    let ln_g = b.add("ln.weight", &[hid], Init::Normal { std: 0.3 });
    let ln_b = b.add("ln.bias", &[hid], Init::Normal { std: 0.3 });
    let w2 = b.add(
        "l2.weight",
        &[out, hid],
        Init::XavierUniform {
            fan_in: hid,
            fan_out: out,
        },
    );
    let b2 = b.add("l2.bias", &[out], Init::Normal { std: 0.1 });
    let p = b.build(g, 7).unwrap();
    // Non-trivial LayerNorm scale around 1.
    p.set(
        ln_g,
        &rand_vec(hid, 3)
            .iter()
            .map(|v| 1.0 + 0.3 * v)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let x = rand_vec(n * inp, 1);
    let target = rand_vec(n * out, 2);
    let (tx, tt) = (upload(g, &[n, inp], &x), upload(g, &[n, out], &target));

    p.zero_grads().unwrap();
    let mut tape = Tape::new();
    let xv = tape.constant(tx);
    let tv = tape.constant(tt);
    let (pw1, pb1, pg, pb, pw2, pb2) = (
        tape.param(&p, w1),
        tape.param(&p, b1),
        tape.param(&p, ln_g),
        tape.param(&p, ln_b),
        tape.param(&p, w2),
        tape.param(&p, b2),
    );
    let h = f::linear(&mut tape, &xv, &pw1, Some(&pb1)).unwrap();
    let h = f::layer_norm(&mut tape, &h, Some((&pg, &pb)), 1e-5).unwrap();
    let h = f::gelu(&mut tape, &h).unwrap();
    let y = f::linear(&mut tape, &h, &pw2, Some(&pb2)).unwrap();
    let loss = f::mse(&mut tape, &y, &tv).unwrap();
    let gpu_loss = loss.value().to_vec().unwrap()[0] as f64;
    tape.backward(&loss).unwrap();
    assert!(tape.is_empty());

    let (xd, td) = (f64s(&x), f64s(&target));
    let reference = |ps: &[Vec<f64>]| {
        let h = linear_ref(&xd, &ps[0], Some(&ps[1]), inp, hid);
        let h = cpu::layer_norm(&h, hid, Some((&ps[2], &ps[3])), 1e-5);
        let h: Vec<f64> = h.iter().map(|&v| cpu::gelu(v)).collect();
        mse_ref(&linear_ref(&h, &ps[4], Some(&ps[5]), hid, out), &td)
    };
    let want_loss = reference(&read_params(&p));
    assert!(
        (gpu_loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
        "loss {gpu_loss} vs {want_loss}"
    );
    check_all_param_grads(&p, reference);
}

/// Activations fused into linear layers: `linear_act` saves the pre-activation and the next
/// linear layer's input gradient applies the derivative in its epilogue; an activation's output
/// that also feeds another op (a LayerNorm here) gets that op's gradient through the
/// derivative as well; the input's gradient comes back through a fused layer.
#[test]
fn fused_activation_chain_gradient_of_every_parameter_and_the_input() {
    let g = gpu();
    let (n, inp, hid, out) = (6, 5, 9, 3);
    let mut b = ParamsBuilder::new();
    let xavier = |fan_in, fan_out| Init::XavierUniform { fan_in, fan_out };
    let w1 = b.add("l1.weight", &[hid, inp], xavier(inp, hid));
    let b1 = b.add("l1.bias", &[hid], Init::Normal { std: 0.3 });
    let w2 = b.add("l2.weight", &[hid, hid], xavier(hid, hid));
    let b2 = b.add("l2.bias", &[hid], Init::Normal { std: 0.3 });
    let w3 = b.add("l3.weight", &[out, hid], xavier(hid, out));
    let b3 = b.add("l3.bias", &[out], Init::Normal { std: 0.1 });
    let w4 = b.add("l4.weight", &[out, hid], xavier(hid, out));
    let p = b.build(g, 11).unwrap();
    let x = rand_vec(n * inp, 21);
    let target = rand_vec(n * out, 22);

    p.zero_grads().unwrap();
    let mut tape = Tape::new();
    let xv = tape.input(upload(g, &[n, inp], &x));
    let tv = tape.constant(upload(g, &[n, out], &target));
    let ps: Vec<_> = [w1, b1, w2, b2, w3, b3, w4]
        .iter()
        .map(|&id| tape.param(&p, id))
        .collect();
    let h1 = f::linear_act(&mut tape, &xv, &ps[0], Some(&ps[1]), Activation::Silu).unwrap();
    let h2 = f::linear_act(&mut tape, &h1, &ps[2], Some(&ps[3]), Activation::Gelu).unwrap();
    let y = f::linear(&mut tape, &h2, &ps[4], Some(&ps[5])).unwrap();
    let side = f::layer_norm(&mut tape, &h1, None, 1e-5).unwrap();
    let side = f::linear(&mut tape, &side, &ps[6], None).unwrap();
    let y = f::add(&mut tape, &y, &side).unwrap();
    let loss = f::mse(&mut tape, &y, &tv).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let dx = grads.get(&xv).unwrap().to_vec().unwrap();

    let td = f64s(&target);
    let reference = |xd: &[f64], ps: &[Vec<f64>]| {
        let h1: Vec<f64> = linear_ref(xd, &ps[0], Some(&ps[1]), inp, hid)
            .into_iter()
            .map(cpu::silu)
            .collect();
        let h2: Vec<f64> = linear_ref(&h1, &ps[2], Some(&ps[3]), hid, hid)
            .into_iter()
            .map(cpu::gelu)
            .collect();
        let y = linear_ref(&h2, &ps[4], Some(&ps[5]), hid, out);
        let side = linear_ref(
            &cpu::layer_norm(&h1, hid, None, 1e-5),
            &ps[6],
            None,
            hid,
            out,
        );
        let y: Vec<f64> = y.iter().zip(&side).map(|(a, b)| a + b).collect();
        mse_ref(&y, &td)
    };
    let xd = f64s(&x);
    check_all_param_grads(&p, |ps| reference(&xd, ps));
    let base = read_params(&p);
    let want = cpu::numeric_grad(|v| reference(v, &base), &xd, 1e-4);
    assert_grad("the input's gradient", &dx, &want);
}

/// Several linear layers summed into one pre-activation and activated once (the MLP's first
/// layer), with and without a base term, feeding a fused linear layer: every parameter, both
/// inputs and the base against finite differences, and the no-grad forward the same output.
#[test]
fn a_sum_of_linear_layers_activated_once_gradient_of_every_parameter_and_input() {
    let g = gpu();
    let (n, in1, in2, hid, out) = (7, 5, 3, 9, 2);
    for with_base in [false, true] {
        let mut b = ParamsBuilder::new();
        let xavier = |fan_in, fan_out| Init::XavierUniform { fan_in, fan_out };
        let w1 = b.add("a.weight", &[hid, in1], xavier(in1, hid));
        let b1 = b.add("a.bias", &[hid], Init::Normal { std: 0.3 });
        let w2 = b.add("b.weight", &[hid, in2], xavier(in2, hid));
        let b2 = b.add("b.bias", &[hid], Init::Normal { std: 0.3 });
        let w3 = b.add("out.weight", &[out, hid], xavier(hid, out));
        let p = b.build(g, 12).unwrap();
        let (x1, x2) = (rand_vec(n * in1, 31), rand_vec(n * in2, 32));
        let base = rand_vec(n * hid, 33);
        let target = rand_vec(n * out, 34);
        let forward = |tape: &mut Tape| {
            let x1v = tape.input(upload(g, &[n, in1], &x1));
            let x2v = tape.input(upload(g, &[n, in2], &x2));
            let basev = tape.input(upload(g, &[n, hid], &base));
            let ps: Vec<_> = [w1, b1, w2, b2, w3]
                .iter()
                .map(|&id| tape.param(&p, id))
                .collect();
            let h = f::linear_sum_act(
                tape,
                &[(&x1v, &ps[0], Some(&ps[1])), (&x2v, &ps[2], Some(&ps[3]))],
                with_base.then_some(&basev),
                Activation::Silu,
            )
            .unwrap();
            let y = f::linear(tape, &h, &ps[4], None).unwrap();
            (x1v, x2v, basev, y)
        };
        p.zero_grads().unwrap();
        let mut tape = Tape::new();
        let (x1v, x2v, basev, y) = forward(&mut tape);
        let tv = tape.constant(upload(g, &[n, out], &target));
        let loss = f::mse(&mut tape, &y, &tv).unwrap();
        let y_training = y.value().to_vec().unwrap();
        let grads = tape.backward(&loss).unwrap();
        let grad_of = |v| grads.get(v).unwrap().to_vec().unwrap();
        let (dx1, dx2) = (grad_of(&x1v), grad_of(&x2v));
        assert_eq!(grads.get(&basev).is_some(), with_base);
        let y_sampling = forward(&mut Tape::no_grad()).3.value().to_vec().unwrap();
        assert_eq!(
            y_training, y_sampling,
            "training and no-grad outputs differ"
        );

        let td = f64s(&target);
        let reference = |x1: &[f64], x2: &[f64], base: &[f64], ps: &[Vec<f64>]| {
            let a = linear_ref(x1, &ps[0], Some(&ps[1]), in1, hid);
            let b = linear_ref(x2, &ps[2], Some(&ps[3]), in2, hid);
            let h: Vec<f64> = (0..n * hid)
                .map(|i| cpu::silu(a[i] + b[i] + if with_base { base[i] } else { 0.0 }))
                .collect();
            mse_ref(&linear_ref(&h, &ps[4], None, hid, out), &td)
        };
        let (x1d, x2d, based) = (f64s(&x1), f64s(&x2), f64s(&base));
        check_all_param_grads(&p, |ps| reference(&x1d, &x2d, &based, ps));
        let ps = read_params(&p);
        let want = cpu::numeric_grad(|v| reference(v, &x2d, &based, &ps), &x1d, 1e-4);
        assert_grad("the first input's gradient", &dx1, &want);
        let want = cpu::numeric_grad(|v| reference(&x1d, v, &based, &ps), &x2d, 1e-4);
        assert_grad("the second input's gradient", &dx2, &want);
        if with_base {
            let want = cpu::numeric_grad(|v| reference(&x1d, &x2d, v, &ps), &based, 1e-4);
            assert_grad("the base's gradient", &grad_of(&basev), &want);
        }
    }
    // Misuse is refused with an error naming it: no terms, a weight of another width or input
    // size, a base of another shape.
    let mut tape = Tape::new();
    let x = tape.input(upload(g, &[n, in1], &rand_vec(n * in1, 35)));
    let w = tape.input(upload(g, &[hid, in1], &rand_vec(hid * in1, 36)));
    let narrow = tape.input(upload(g, &[hid - 1, in1], &rand_vec((hid - 1) * in1, 37)));
    let other_in = tape.input(upload(g, &[hid, in2], &rand_vec(hid * in2, 38)));
    let base = tape.input(upload(g, &[n, hid + 1], &rand_vec(n * (hid + 1), 39)));
    let cases: [(&[f::LinearTerm], Option<&rectiflow::autograd::Var>); 4] = [
        (&[], None),
        (&[(&x, &w, None), (&x, &narrow, None)], None),
        (&[(&x, &w, None), (&x, &other_in, None)], None),
        (&[(&x, &w, None)], Some(&base)),
    ];
    for (terms, base) in cases {
        match f::linear_sum_act(&mut tape, terms, base, Activation::Silu) {
            Err(rectiflow::Error::Shape(m)) => assert!(m.contains("linear_sum_act"), "{m}"),
            other => panic!(
                "expected a shape error, got {:?}",
                other.map(|v| v.shape().to_vec())
            ),
        }
    }
}

/// Gradients summed in place where a value has several consumers: an input read by three
/// linear layers (the first writes its gradient, the second adds into a copy, the third into
/// that), an activation read by three linear layers (the fused epilogue adding with respect to
/// its pre-activation), and the last layer's input also read by a LayerNorm-modulation, whose
/// backward adds into the gradient the gated residual handed over.
#[test]
fn gradients_of_values_with_several_consumers_are_summed_in_place() {
    let g = gpu();
    let (bsz, t, inp, hid) = (2, 3, 4, 8);
    let mut b = ParamsBuilder::new();
    let xavier = |fan_in, fan_out| Init::XavierUniform { fan_in, fan_out };
    let ws: Vec<_> = (0..6)
        .map(|i| {
            b.add(
                format!("w{i}"),
                &[hid, if i < 3 { inp } else { hid }],
                xavier(inp, hid),
            )
        })
        .collect();
    let bias = b.add("bias", &[hid], Init::Normal { std: 0.3 });
    let ada = b.add("ada", &[bsz, 3 * hid], Init::Normal { std: 0.5 });
    let p = b.build(g, 12).unwrap();
    let x = rand_vec(bsz * t * inp, 31);
    let target = rand_vec(bsz * t * hid, 32);

    p.zero_grads().unwrap();
    let mut tape = Tape::new();
    let xv = tape.input(upload(g, &[bsz, t, inp], &x));
    let tv = tape.constant(upload(g, &[bsz, t, hid], &target));
    let pv: Vec<_> = ws.iter().map(|&id| tape.param(&p, id)).collect();
    let (bv, av) = (tape.param(&p, bias), tape.param(&p, ada));
    let mut h = f::linear(&mut tape, &xv, &pv[0], Some(&bv)).unwrap();
    for w in &pv[1..3] {
        let y = f::linear(&mut tape, &xv, w, None).unwrap();
        h = f::add(&mut tape, &h, &y).unwrap();
    }
    let a = f::silu(&mut tape, &h).unwrap();
    let mut r = f::linear(&mut tape, &a, &pv[3], None).unwrap();
    for w in &pv[4..6] {
        let y = f::linear(&mut tape, &a, w, None).unwrap();
        r = f::add(&mut tape, &r, &y).unwrap();
    }
    // r -> ln_modulate(r) -> gated residual r + gate * m.
    let m = f::ln_modulate(&mut tape, &r, &av, 0, 1, 1e-6).unwrap();
    let y = f::ada_gate(&mut tape, &r, &m, &av, 2).unwrap();
    let loss = f::mse(&mut tape, &y, &tv).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let dx = grads.get(&xv).unwrap().to_vec().unwrap();

    let td = f64s(&target);
    let reference = |xd: &[f64], ps: &[Vec<f64>]| {
        let rows = bsz * t;
        let mut h = linear_ref(xd, &ps[0], Some(&ps[6]), inp, hid);
        for w in &ps[1..3] {
            let y = linear_ref(xd, w, None, inp, hid);
            h.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        }
        let a: Vec<f64> = h.into_iter().map(cpu::silu).collect();
        let mut r = linear_ref(&a, &ps[3], None, hid, hid);
        for w in &ps[4..6] {
            let y = linear_ref(&a, w, None, hid, hid);
            r.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        }
        let m = cpu::ln_modulate(&r, t, hid, &ps[7], 3, 0, 1, 1e-6);
        let gate = cpu::chunk(&ps[7], 3, hid, 2);
        let y = cpu::gate(&r, &m, t, hid, &gate);
        assert_eq!(y.len(), rows * hid);
        mse_ref(&y, &td)
    };
    let xd = f64s(&x);
    check_all_param_grads(&p, |ps| reference(&xd, ps));
    let base = read_params(&p);
    let want = cpu::numeric_grad(|v| reference(v, &base), &xd, 1e-4);
    assert_grad("the input's gradient", &dx, &want);
}

/// Activations whose gradient cannot go through a linear layer's fused epilogue: of a
/// parameter (its pre-activation shares the flat buffer with the weight that consumes it), and
/// consumed by a kernel that adds gradients in place (adaLN reading a SiLU of the conditioning
/// directly); and backward seeded on an activation's output.
#[test]
fn activations_of_parameters_and_in_place_consumers_get_their_gradients() {
    let g = gpu();
    let (bsz, t, c) = (2, 3, 4);
    let mut b = ParamsBuilder::new();
    let cond = b.add("cond", &[bsz, 2 * c], Init::Normal { std: 0.8 });
    let w = b.add(
        "side.weight",
        &[c, 2 * c],
        Init::XavierUniform {
            fan_in: 2 * c,
            fan_out: c,
        },
    );
    let p = b.build(g, 5).unwrap();
    let x = rand_vec(bsz * t * c, 31);
    let (t1, t2) = (rand_vec(bsz * t * c, 32), rand_vec(bsz * c, 33));

    p.zero_grads().unwrap();
    let mut tape = Tape::new();
    let xv = tape.constant(upload(g, &[bsz, t, c], &x));
    let (tv1, tv2) = (
        tape.constant(upload(g, &[bsz, t, c], &t1)),
        tape.constant(upload(g, &[bsz, c], &t2)),
    );
    let (pc, pw) = (tape.param(&p, cond), tape.param(&p, w));
    let ada = f::silu(&mut tape, &pc).unwrap();
    let y = f::ln_modulate(&mut tape, &xv, &ada, 0, 1, 1e-6).unwrap();
    let side = f::linear(&mut tape, &ada, &pw, None).unwrap();
    let l1 = f::mse(&mut tape, &y, &tv1).unwrap();
    let l2 = f::mse(&mut tape, &side, &tv2).unwrap();
    let loss = f::add(&mut tape, &l1, &l2).unwrap();
    tape.backward(&loss).unwrap();

    let (xd, t1d, t2d) = (f64s(&x), f64s(&t1), f64s(&t2));
    check_all_param_grads(&p, |ps| {
        let ada: Vec<f64> = ps[0].iter().map(|&v| cpu::silu(v)).collect();
        let y = cpu::ln_modulate(&xd, t, c, &ada, 2, 0, 1, 1e-6);
        let side = linear_ref(&ada, &ps[1], None, 2 * c, c);
        mse_ref(&y, &t1d) + mse_ref(&side, &t2d)
    });

    // Seeded on an activation's output: the input's gradient is the seed times the derivative.
    let e = rand_vec(10, 34);
    let seed = rand_vec(10, 35);
    let mut tape = Tape::new();
    let ev = tape.input(upload(g, &[10], &e));
    let h = f::gelu(&mut tape, &ev).unwrap();
    let grads = tape.backward_with(&h, upload(g, &[10], &seed)).unwrap();
    let want: Vec<f64> = e
        .iter()
        .zip(&seed)
        .map(|(&x, &s)| cpu::gelu_grad(x as f64) * s as f64)
        .collect();
    assert_grad(
        "backward seeded on GELU's output",
        &grads.get(&ev).unwrap().to_vec().unwrap(),
        &want,
    );
}

#[test]
fn dit_style_block_gradient_of_every_parameter() {
    // adaLN from a conditioning vector, LayerNorm, modulation, attention, gated residual.
    let g = gpu();
    let (bsz, t, c, heads) = (2, 5, 8, 2);
    let mut b = ParamsBuilder::new();
    let ada: Vec<(ParamId, ParamId)> = ["scale", "shift", "gate"]
        .iter()
        .map(|n| {
            (
                b.add(
                    format!("ada.{n}.weight"),
                    &[c, c],
                    Init::Normal { std: 0.3 },
                ),
                b.add(format!("ada.{n}.bias"), &[c], Init::Normal { std: 0.3 }),
            )
        })
        .collect();
    let wqkv = b.add("attn.qkv.weight", &[3 * c, c], Init::Normal { std: 0.4 });
    let wo = b.add("attn.proj.weight", &[c, c], Init::Normal { std: 0.4 });
    let p = b.build(g, 11).unwrap();
    let x = rand_vec(bsz * t * c, 4);
    let cond = rand_vec(bsz * c, 5);
    let target = rand_vec(bsz * t * c, 6);

    p.zero_grads().unwrap();
    let mut tape = Tape::new();
    let xv = tape.constant(upload(g, &[bsz, t, c], &x));
    let cv = tape.constant(upload(g, &[bsz, c], &cond));
    let tv = tape.constant(upload(g, &[bsz, t, c], &target));
    let sc = f::silu(&mut tape, &cv).unwrap();
    let mods: Vec<_> = ada
        .iter()
        .map(|&(w, bb)| {
            let (w, bb) = (tape.param(&p, w), tape.param(&p, bb));
            f::linear(&mut tape, &sc, &w, Some(&bb)).unwrap()
        })
        .collect();
    let h = f::layer_norm(&mut tape, &xv, None, 1e-6).unwrap();
    let h = f::modulate(&mut tape, &h, &mods[0], &mods[1]).unwrap();
    let pq = tape.param(&p, wqkv);
    let qkv = f::linear(&mut tape, &h, &pq, None).unwrap();
    let a = f::attention(&mut tape, &qkv, heads).unwrap();
    let po = tape.param(&p, wo);
    let o = f::linear(&mut tape, &a, &po, None).unwrap();
    let y = f::gate(&mut tape, &xv, &o, &mods[2]).unwrap();
    let loss = f::mse(&mut tape, &y, &tv).unwrap();
    tape.backward(&loss).unwrap();

    let (xd, cd, td) = (f64s(&x), f64s(&cond), f64s(&target));
    let reference = |ps: &[Vec<f64>]| {
        let sc: Vec<f64> = cd.iter().map(|&v| cpu::silu(v)).collect();
        let m: Vec<Vec<f64>> = (0..3)
            .map(|k| linear_ref(&sc, &ps[2 * k], Some(&ps[2 * k + 1]), c, c))
            .collect();
        let h = cpu::layer_norm(&xd, c, None, 1e-6);
        let h = cpu::modulate(&h, t, c, &m[0], &m[1]);
        // Our qkv layout per token is [3, heads, d]: the linear's 3c outputs in that order.
        let qkv = linear_ref(&h, &ps[6], None, c, 3 * c);
        let a = cpu::attention(&qkv, bsz, t, heads, c / heads);
        let o = linear_ref(&a, &ps[7], None, c, c);
        mse_ref(&cpu::gate(&xd, &o, t, c, &m[2]), &td)
    };
    check_all_param_grads(&p, reference);
}

#[test]
fn a_value_used_twice_receives_both_gradients_and_inputs_get_theirs() {
    let g = gpu();
    let n = 65;
    let x = rand_vec(n, 8);
    let t = rand_vec(n, 9);
    let mut tape = Tape::new();
    let xv = tape.input(upload(g, &[n], &x));
    let tv = tape.constant(upload(g, &[n], &t));
    let y = f::add(&mut tape, &xv, &xv).unwrap(); // 2x
    let z = f::scale(&mut tape, &xv, 3.0).unwrap(); // 3x
    let s = f::add(&mut tape, &y, &z).unwrap(); // 5x
    let loss = f::mse(&mut tape, &s, &tv).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let got = grads
        .get(&xv)
        .expect("the input has a gradient")
        .to_vec()
        .unwrap();
    // d/dx mean((5x - t)^2) = 10 (5x - t) / n
    let want: Vec<f64> = x
        .iter()
        .zip(&t)
        .map(|(&a, &b)| 10.0 * (5.0 * a as f64 - b as f64) / n as f64)
        .collect();
    let tol: Vec<f64> = want.iter().map(|w| 1e-5 * w.abs() + 1e-7).collect();
    assert_close("gradient of a value used three times", &got, &want, &tol);
    assert!(grads.get(&tv).is_none(), "constants get no gradient");
}

#[test]
fn no_grad_records_nothing_and_backward_frees_saved_activations() {
    let g = private_gpu();
    let x = upload(&g, &[33, 16], &rand_vec(33 * 16, 10));
    let w = upload(&g, &[16, 16], &rand_vec(256, 11));

    let mut tape = Tape::no_grad();
    let (xv, wv) = (tape.input(x.clone()), tape.input(w.clone()));
    let y = f::linear(&mut tape, &xv, &wv, None).unwrap();
    let y = f::gelu(&mut tape, &y).unwrap();
    assert!(tape.is_empty() && !y.requires_grad());
    drop(y);

    g.synchronize().unwrap();
    let before = g.pool_stats().bytes_live;
    {
        let mut tape = Tape::new();
        let (xv, wv) = (tape.input(x.clone()), tape.input(w.clone()));
        let mut h = xv.clone();
        for _ in 0..4 {
            h = f::linear(&mut tape, &h, &wv, None).unwrap();
            h = f::gelu(&mut tape, &h).unwrap();
        }
        let t = tape.constant(upload(&g, &[33, 16], &vec![0.0; 33 * 16]));
        let loss = f::mse(&mut tape, &h, &t).unwrap();
        assert_eq!(tape.len(), 9);
        let grads = tape.backward(&loss).unwrap();
        assert!(tape.is_empty(), "every closure ran and was dropped");
        assert!(grads.get(&wv).is_some() && grads.get(&xv).is_some());
    }
    g.synchronize().unwrap();
    assert_eq!(
        g.pool_stats().bytes_live,
        before,
        "every saved activation went back to the pool"
    );
}

#[test]
fn parameters_live_in_one_aligned_flat_buffer() {
    let g = gpu();
    let mut b = ParamsBuilder::new();
    let a = b.add("a", &[3, 5], Init::Zeros);
    let c = b.add("c", &[70], Init::Ones);
    let d = b.add("d", &[2, 2], Init::Uniform { limit: 0.5 });
    let p = b.build(g, 1).unwrap();
    let offsets: Vec<usize> = p.specs().iter().map(|s| s.offset).collect();
    assert_eq!(offsets, vec![0, 128, 256]);
    assert_eq!(p.values().numel(), 384);
    assert_eq!(p.count(), 15 + 70 + 4);
    assert!(p.value(a).to_vec().unwrap().iter().all(|&v| v == 0.0));
    assert!(p.value(c).to_vec().unwrap().iter().all(|&v| v == 1.0));
    assert!(p
        .value(d)
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v.abs() <= 0.5 && v != 0.0));
    // Same seed, same values; another seed, other values.
    let again = |seed| {
        let mut b = ParamsBuilder::new();
        let id = b.add("w", &[1000], Init::Normal { std: 2.0 });
        let p = b.build(g, seed).unwrap();
        p.value(id).to_vec().unwrap()
    };
    let (v1, v2) = (again(5), again(5));
    assert_eq!(v1, v2);
    assert_ne!(v1, again(6));
    let mean = v1.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
    let var = v1.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 999.0;
    // Normal(0, 2): the sample mean is within 4 sigma/sqrt(n) = 0.25, the variance within ~20%.
    assert!(
        mean.abs() < 0.25 && (var - 4.0).abs() < 0.8,
        "mean {mean} var {var}"
    );
    assert!(p.set(a, &[1.0; 3]).is_err());
}

/// The global gradient norm and clip factor over buffers shorter and longer than the first
/// pass's invocations (each sums a grid-stride share), against an f64 sum.
#[test]
fn gradient_norm_and_clip_factor_match_reference() {
    let g = gpu();
    for (n, max_norm) in [(1, 0.5), (37, 0.0), (16_384, 1.0), (70_001, 1e6)] {
        let grad = rand_vec(n, 60 + n as u64);
        let stats = rectiflow::Tensor::full(g, &[2], f32::NAN).unwrap();
        rectiflow::ops::grad_norm(&upload(g, &[n], &grad), max_norm, &stats).unwrap();
        let norm = grad.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let clip = if max_norm > 0.0 {
            (max_norm as f64 / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let got = stats.to_vec().unwrap();
        assert_close(
            &format!("norm and clip of {n}"),
            &got,
            &[norm, clip],
            &[1e-5 * norm, 1e-5 * clip],
        );
    }
}

#[test]
fn adamw_with_warmup_clipping_decay_and_ema_matches_cpu_reference() {
    let g = gpu();
    let mut b = ParamsBuilder::new();
    b.add("w", &[100], Init::Normal { std: 1.0 });
    b.add("v", &[37], Init::Normal { std: 1.0 });
    let p = b.build(g, 3).unwrap();
    let n = p.values().numel();
    let config = AdamWConfig {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
        max_grad_norm: 2.0,
        warmup_steps: 3,
        ema_decay: 0.9,
    };
    let mut opt = AdamW::new(&p, config).unwrap();
    let mut w = f64s(&p.values().to_vec().unwrap());
    let (mut m, mut v, mut ema) = (vec![0.0; n], vec![0.0; n], w.clone());
    for step in 1..=6u64 {
        // Large gradients on odd steps, so clipping acts on some steps and not others.
        let scale = if step % 2 == 1 { 3.0 } else { 0.05 };
        let grad: Vec<f32> = rand_vec(n, 100 + step).iter().map(|x| scale * x).collect();
        p.grads().unwrap().write(&grad).unwrap();
        opt.step(&p).unwrap();

        let gd = f64s(&grad);
        let norm = gd.iter().map(|x| x * x).sum::<f64>().sqrt();
        let clip = (2.0 / (norm + 1e-6)).min(1.0);
        let lr = 0.05 * (step.min(3) as f64 / 3.0);
        // The EMA decay warms up: min(0.9, (1 + t) / (10 + t)), as f32 on the GPU.
        let decay = 0.9f64.min((1.0 + step as f64) / (10.0 + step as f64)) as f32 as f64;
        let (bc1, bc2) = (
            1.0 - 0.8f64.powi(step as i32),
            1.0 - 0.95f64.powi(step as i32),
        );
        for i in 0..n {
            let gi = clip * gd[i];
            m[i] = 0.8 * m[i] + 0.2 * gi;
            v[i] = 0.95 * v[i] + 0.05 * gi * gi;
            w[i] -= lr * ((m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-6) + 0.1 * w[i]);
            ema[i] = decay * ema[i] + (1.0 - decay) * w[i];
        }
        let stats = opt.stats().to_vec().unwrap();
        assert!(
            (stats[0] as f64 - norm).abs() < 1e-5 * norm,
            "norm {} vs {norm}",
            stats[0]
        );
        assert!(
            (stats[1] as f64 - clip).abs() < 1e-5,
            "clip {} vs {clip}",
            stats[1]
        );
        let tol = vec![1e-5; n];
        let (gm, gv) = opt.moments();
        assert_close(
            &format!("m after step {step}"),
            &gm.to_vec().unwrap(),
            &m,
            &tol,
        );
        assert_close(
            &format!("v after step {step}"),
            &gv.to_vec().unwrap(),
            &v,
            &tol,
        );
        assert_close(
            &format!("weights after step {step}"),
            &p.values().to_vec().unwrap(),
            &w,
            &tol,
        );
        assert_close(
            &format!("ema after step {step}"),
            &opt.ema().to_vec().unwrap(),
            &ema,
            &tol,
        );
    }
    assert!(AdamW::new(
        &p,
        AdamWConfig {
            beta1: 1.0,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn concat_split_and_patchify_backward_through_the_tape() {
    let g = gpu();
    let (bs, t1, t2, c) = (2, 3, 4, 5);
    let (na, nb) = (bs * t1 * c, bs * t2 * c);
    let (a, bb) = (rand_vec(na, 12), rand_vec(nb, 13));
    let (ta, tb) = (rand_vec(bs * 2 * c, 14), rand_vec(bs * 5 * c, 15));
    let mut tape = Tape::new();
    let av = tape.input(upload(g, &[bs, t1, c], &a));
    let bv = tape.input(upload(g, &[bs, t2, c], &bb));
    let joint = f::concat_tokens(&mut tape, &av, &bv).unwrap();
    // Split at another point than the concat, so each part mixes both inputs' rows.
    let (p, q) = f::split_tokens(&mut tape, &joint, 2).unwrap();
    let tav = tape.constant(upload(g, &[bs, 2, c], &ta));
    let tbv = tape.constant(upload(g, &[bs, 5, c], &tb));
    let l1 = f::mse(&mut tape, &p, &tav).unwrap();
    let l2 = f::mse(&mut tape, &q, &tbv).unwrap();
    let loss = f::add(&mut tape, &l1, &l2).unwrap();
    let grads = tape.backward(&loss).unwrap();

    let (tad, tbd) = (f64s(&ta), f64s(&tb));
    let reference = |a: &[f64], b: &[f64]| {
        let mut joint = Vec::new();
        for s in 0..bs {
            joint.extend_from_slice(&a[s * t1 * c..(s + 1) * t1 * c]);
            joint.extend_from_slice(&b[s * t2 * c..(s + 1) * t2 * c]);
        }
        let (mut p, mut q) = (Vec::new(), Vec::new());
        for s in 0..bs {
            let row = &joint[s * 7 * c..(s + 1) * 7 * c];
            p.extend_from_slice(&row[..2 * c]);
            q.extend_from_slice(&row[2 * c..]);
        }
        mse_ref(&p, &tad) + mse_ref(&q, &tbd)
    };
    let (ad, bd) = (f64s(&a), f64s(&bb));
    assert_grad(
        "concat/split da",
        &grads.get(&av).unwrap().to_vec().unwrap(),
        &cpu::numeric_grad(|a| reference(a, &bd), &ad, 1e-4),
    );
    assert_grad(
        "concat/split db",
        &grads.get(&bv).unwrap().to_vec().unwrap(),
        &cpu::numeric_grad(|b| reference(&ad, b), &bd, 1e-4),
    );

    // patchify -> (scale) -> unpatchify on another patch grid is a permutation; check its gradient.
    let (b2, ch, h, w) = (2, 3, 4, 6);
    let img = rand_vec(b2 * ch * h * w, 16);
    let target = rand_vec(b2 * ch * h * w, 17);
    let mut tape = Tape::new();
    let iv = tape.input(upload(g, &[b2, ch, h, w], &img));
    let tokens = f::patchify(&mut tape, &iv, 2).unwrap();
    let tokens = f::scale(&mut tape, &tokens, 1.5).unwrap();
    let back = f::unpatchify(&mut tape, &tokens, ch, h, w, 2).unwrap();
    let tv = tape.constant(upload(g, &[b2, ch, h, w], &target));
    let loss = f::mse(&mut tape, &back, &tv).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let td = f64s(&target);
    let fd = cpu::numeric_grad(
        |x| mse_ref(&x.iter().map(|v| 1.5 * v).collect::<Vec<_>>(), &td),
        &f64s(&img),
        1e-4,
    );
    assert_grad(
        "patchify/unpatchify dx",
        &grads.get(&iv).unwrap().to_vec().unwrap(),
        &fd,
    );
}

#[test]
fn parameters_build_from_given_values_with_or_without_a_gradient_buffer() {
    let g = gpu();
    let declare = || {
        let mut b = ParamsBuilder::new();
        let w = b.add("w", &[3, 2], Init::Normal { std: 1.0 });
        let bias = b.add("b", &[3], Init::Ones);
        (b, w, bias)
    };
    let (b, w, bias) = declare();
    let len = b.len().unwrap();
    let flat: Vec<f32> = (0..len).map(|i| i as f32 * 0.25).collect();
    // Values as given (no initialiser ran), gradients at zero.
    let p = b.build_with_values(g, &flat).unwrap();
    assert_eq!(p.values().to_vec().unwrap(), flat);
    assert!(p.has_grads());
    assert!(p
        .grads()
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    let spec = p.spec(bias).clone();
    assert_eq!(
        p.value(bias).to_vec().unwrap(),
        flat[spec.offset..spec.offset + 3]
    );

    // For inference: the same values, no gradient buffer, and clear refusals where one is
    // needed.
    let (b, w2, _) = declare();
    let q = b.build_for_inference(g, &flat).unwrap();
    assert_eq!(q.values().to_vec().unwrap(), flat);
    assert!(!q.has_grads());
    assert!(matches!(q.grads(), Err(rectiflow::Error::Config(_))));
    assert!(q.grad(w2).is_err() && q.zero_grads().is_err());
    assert!(AdamW::new(&q, AdamWConfig::default())
        .and_then(|mut opt| opt.step(&q))
        .is_err());
    // The forward runs as with any parameters; a recording tape hands the gradient back in its
    // Grads, since there is no buffer to accumulate into.
    let x = rand_vec(4 * 2, 3);
    let mut tape = Tape::new();
    let xv = tape.constant(upload(g, &[4, 2], &x));
    let wv = tape.param(&q, w2);
    let y = f::linear(&mut tape, &xv, &wv, None).unwrap();
    let zeros = tape.constant(rectiflow::Tensor::zeros(g, &[4, 3]).unwrap());
    let loss = f::mse(&mut tape, &y, &zeros).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert!(grads.get(&wv).is_some());
    assert_eq!(p.spec(w).shape, [3, 2]);

    // A flat buffer of another length is refused.
    let (b, _, _) = declare();
    let e = b.build_with_values(g, &flat[1..]).err().unwrap();
    assert!(matches!(e, rectiflow::Error::Shape(_)), "{e}");
}
