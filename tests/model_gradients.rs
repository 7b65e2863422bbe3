//! The networks' gradients: every parameter of a tiny DiT, MM-DiT (label context and a given
//! context sequence) and labelled MLP against central finite differences of the whole network.

mod common;

use common::gpu;
use common::tiny::config;
use rectiflow::data;

/// Every parameter tensor's gradient (one element each) of a whole network against central
/// differences of its own forward pass (f32, step 1e-2); for the MM-DiT with `context_dim > 0`
/// also the gradient of the given context sequence.
fn network_gradient_check(kind: &str, context_dim: usize) {
    use rectiflow::autograd::{functions as f, Tape};
    use rectiflow::nn::Model;
    use rectiflow::params::ParamsBuilder;
    let digits = data::digits().unwrap();
    let mut cfg = config(&digits, kind, 8).model;
    cfg.context_dim = context_dim;
    let mut builder = ParamsBuilder::new();
    let model = Model::build(&cfg, &mut builder).unwrap();
    let p = builder.build(gpu(), 5).unwrap();
    // Random weights everywhere, so that no zero-initialised gate hides a path.
    let n = p.values().numel();
    p.values()
        .write(
            &common::rand_vec(n, 40)
                .iter()
                .map(|v| 0.3 * v)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let b = 3;
    let z = common::upload(gpu(), &[b, 64], &common::rand_vec(b * 64, 41));
    let t = common::upload(gpu(), &[b], &[0.2, 0.5, 0.9]);
    let labels = common::upload(gpu(), &[b], &[1.0, 7.0, 10.0]);
    let target = common::upload(gpu(), &[b, 64], &common::rand_vec(b * 64, 42));
    let tc = 3; // context tokens, when given
    let mut context_host = common::rand_vec(b * tc * context_dim.max(1), 43);
    let loss_of = |ctx: &[f32], record: bool| {
        let mut tape = if record { Tape::new() } else { Tape::no_grad() };
        let (zv, tv, yv) = (
            tape.constant(z.clone()),
            tape.constant(t.clone()),
            tape.constant(target.clone()),
        );
        let cv = tape.input(common::upload(gpu(), &[b, tc, context_dim.max(1)], ctx));
        let out = match &model {
            Model::Mmdit(m) if context_dim > 0 => m
                .forward_with_context(&mut tape, &p, &zv, &tv, &labels, &cv)
                .unwrap(),
            _ => model.forward(&mut tape, &p, &zv, &tv, &labels).unwrap(),
        };
        let loss = f::mse(&mut tape, &out, &yv).unwrap();
        let value = loss.value().to_vec().unwrap()[0] as f64;
        let grad = record.then(|| {
            p.zero_grads().unwrap();
            let grads = tape.backward(&loss).unwrap();
            grads.get(&cv).map(|g| g.to_vec().unwrap())
        });
        (value, grad.flatten())
    };
    let (_, context_grad) = loss_of(&context_host, true);
    let grads = p.grads().unwrap().to_vec().unwrap();
    let values = p.values().to_vec().unwrap();
    let h = 1e-2f32;
    let close = |what: &str, g: f64, fd: f64| {
        assert!(
            (g - fd).abs() <= 0.03 * fd.abs() + 2e-4,
            "{what}: backward {g}, finite differences {fd}"
        );
    };
    for (i, spec) in p.specs().iter().enumerate() {
        let k = spec.offset + (i * 7) % spec.shape.iter().product::<usize>();
        let mut v = values.clone();
        v[k] = values[k] + h;
        p.values().write(&v).unwrap();
        let up = loss_of(&context_host, false).0;
        v[k] = values[k] - h;
        p.values().write(&v).unwrap();
        let down = loss_of(&context_host, false).0;
        close(
            &format!("{} element {k}", spec.name),
            grads[k] as f64,
            (up - down) / (2.0 * h as f64),
        );
    }
    p.values().write(&values).unwrap();
    let least = match kind {
        "mmdit" => 30,
        "dit" => 20,
        _ => 9,
    };
    assert!(p.specs().len() >= least);
    if context_dim > 0 {
        let cg = context_grad.expect("the context input has a gradient");
        for k in [0, 7, b * tc * context_dim - 1] {
            let orig = context_host[k];
            context_host[k] = orig + h;
            let up = loss_of(&context_host, false).0;
            context_host[k] = orig - h;
            let down = loss_of(&context_host, false).0;
            context_host[k] = orig;
            close(
                &format!("context element {k}"),
                cg[k] as f64,
                (up - down) / (2.0 * h as f64),
            );
        }
        // The wrong entry point is refused.
        let mut tape = Tape::no_grad();
        let (zv, tv) = (tape.constant(z.clone()), tape.constant(t.clone()));
        assert!(model.forward(&mut tape, &p, &zv, &tv, &labels).is_err());
    }
}

#[test]
fn dit_gradients_match_finite_differences() {
    network_gradient_check("dit", 0);
}

#[test]
fn mmdit_gradients_match_finite_differences_with_label_context() {
    network_gradient_check("mmdit", 0);
}

#[test]
fn mmdit_gradients_match_finite_differences_with_a_given_context_sequence() {
    network_gradient_check("mmdit", 5);
}

/// The MLP's first layer sums its input, time and class terms in the matmuls' epilogues
/// (`linear_sum_act`): its every parameter too.
#[test]
fn labelled_mlp_gradients_match_finite_differences() {
    network_gradient_check("mlp", 0);
}
