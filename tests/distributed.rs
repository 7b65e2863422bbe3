//! Data parallelism without MPI: the ranks' agreement (`train::distributed::Ranks`) over an
//! in-process transport (threads as ranks) — failures on one rank, stops, slices — and trainers
//! on two such ranks against one trainer; a slice of a batch draws what the whole batch draws
//! for those samples. (The MPI runs themselves are tests/mpi.rs, feature `mpi`.)

mod common;

use common::tiny::tiny_dit;

use rectiflow::data::{self, GpuDataset};
use rectiflow::train::{Collective, Objective, Ranks, TrainConfig, Trainer};
use rectiflow::{Error, Gpu};
use std::sync::{Arc, Barrier, Mutex};

/// The ranks of one job as threads: every operation is a round through a shared board.
struct Threads {
    size: usize,
    barrier: Barrier,
    board: Mutex<Vec<Vec<u8>>>,
}

/// One thread's view of the job.
struct ThreadRank {
    rank: usize,
    job: Arc<Threads>,
}

impl ThreadRank {
    /// Post `mine`, wait for every rank, read the board, wait again (so that the next round
    /// does not overwrite it before every rank has read it).
    fn round(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        self.job.board.lock().unwrap()[self.rank] = mine.to_vec();
        self.job.barrier.wait();
        let all = self.job.board.lock().unwrap().clone();
        self.job.barrier.wait();
        all
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.job.size
    }
    fn sum(&self, values: &mut [f32]) {
        let all = self.round(bytemuck::cast_slice(values));
        values.fill(0.0);
        for row in all {
            let row: Vec<f32> = bytemuck::pod_collect_to_vec(&row);
            values.iter_mut().zip(row).for_each(|(v, r)| *v += r);
        }
    }
    fn broadcast(&self, bytes: &mut [u8]) {
        let all = self.round(bytes);
        bytes.copy_from_slice(&all[0]);
    }
    fn gather(&self, mine: &[u8]) -> Vec<u8> {
        self.round(mine).concat()
    }
}

/// Run `work` on `size` ranks (threads) and collect what each returns, in rank order.
fn on_ranks<T: Send + 'static>(size: usize, work: fn(Ranks) -> T) -> Vec<T> {
    let job = Arc::new(Threads {
        size,
        barrier: Barrier::new(size),
        board: Mutex::new(vec![Vec::new(); size]),
    });
    let handles: Vec<_> = (0..size)
        .map(|rank| {
            let job = job.clone();
            std::thread::spawn(move || work(Ranks::new(Arc::new(ThreadRank { rank, job }))))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_sum_over_healthy_ranks_is_the_sum_on_every_rank() {
    let out = on_ranks(3, |r| {
        let mine = vec![r.rank() as f32, 1.0];
        r.sum_checked(Ok(mine), 2).unwrap()
    });
    for sums in out {
        assert_eq!(sums, vec![3.0, 3.0]);
    }
}

#[test]
fn one_failing_rank_fails_every_rank_and_rank_0_names_it() {
    let out = on_ranks(3, |r| {
        let mine = match r.rank() {
            1 => Err(Error::Gpu("the device was lost".into())),
            _ => Ok(vec![1.0; 4]),
        };
        let result = r.sum_checked(mine, 4);
        // Nothing is exchanged after an agreed failure.
        let after = r.sum_checked(Ok(vec![1.0; 4]), 4);
        (result, after.is_err(), r.failed())
    });
    let (root, _, _) = &out[0];
    let text = root.as_ref().unwrap_err().to_string();
    assert!(
        text.contains("rank 1 of 3") && text.contains("the device was lost"),
        "{text}"
    );
    // The failing rank keeps its own error as it was.
    assert_eq!(
        out[1].0.as_ref().unwrap_err(),
        &Error::Gpu("the device was lost".into())
    );
    for (result, after_failed, failed) in &out {
        assert!(result.is_err() && *after_failed && *failed);
    }
}

#[test]
fn an_error_carried_by_rank_0_reaches_every_rank_at_the_final_settle() {
    let out = on_ranks(2, |r| {
        if r.is_root() {
            r.carry(Error::Io(
                "cannot write checkpoint.safetensors: disk full".into(),
            ));
        }
        r.settle()
    });
    let text = out[1].as_ref().unwrap_err().to_string();
    assert!(
        text.contains("rank 0 of 2") && text.contains("disk full"),
        "{text}"
    );
    assert_eq!(
        out[0].as_ref().unwrap_err(),
        &Error::Io("cannot write checkpoint.safetensors: disk full".into())
    );
}

#[test]
fn the_same_failure_on_every_rank_is_reported_once() {
    let out = on_ranks(2, |r| {
        r.agree::<()>(Err(Error::NonFinite(
            "the loss became NaN at step 3".into(),
        )))
    });
    // Each rank has the same error; it is its own, unchanged.
    for result in out {
        assert_eq!(
            result.unwrap_err(),
            Error::NonFinite("the loss became NaN at step 3".into())
        );
    }
}

#[test]
fn a_stop_on_any_rank_is_agreed_by_every_rank_at_the_same_reduction() {
    let out = on_ranks(2, |r| {
        r.sum_checked(Ok(vec![]), 0).unwrap();
        let before = r.agreed_stop();
        if r.rank() == 1 {
            r.stop_handle().stop();
        }
        r.sum_checked(Ok(vec![]), 0).unwrap();
        (before, r.agreed_stop())
    });
    for (before, after) in out {
        assert_eq!(before, None);
        assert_eq!(after, Some(None));
    }
}

#[test]
fn each_rank_takes_its_slice_and_an_uneven_split_is_refused() {
    let out = on_ranks(4, |r| (r.slice(64), r.slice(30)));
    for (rank, (even, uneven)) in out.into_iter().enumerate() {
        assert_eq!(even.unwrap(), (rank * 16, 16));
        let text = uneven.unwrap_err().to_string();
        assert!(
            text.contains("--batch 30") && text.contains("4 ranks"),
            "{text}"
        );
    }
}

#[test]
fn rank_0s_bytes_and_values_reach_every_rank() {
    let out = on_ranks(3, |r| {
        let bytes = r.broadcast_bytes(format!("from rank {}", r.rank()).into_bytes());
        let mut values = vec![r.rank() as f32; 3];
        r.broadcast_f32(&mut values);
        (String::from_utf8(bytes).unwrap(), values)
    });
    for (text, values) in out {
        assert_eq!(text, "from rank 0");
        assert_eq!(values, vec![0.0; 3]);
    }
}

fn dit_config() -> TrainConfig {
    TrainConfig {
        warmup: 0,
        ..tiny_dit()
    }
}

#[test]
fn a_slice_of_a_batch_draws_the_rows_times_noise_and_dropout_of_those_samples() {
    let gpu = common::gpu();
    let digits = data::digits().unwrap();
    let drawn = GpuDataset::upload(gpu, &digits, 10).unwrap();
    let config = dit_config();
    let objective = Objective::new(gpu, config.flow()).unwrap();
    let (seed, step) = (config.seed, 5);
    let (x, labels) = drawn.batch(8, seed, step).unwrap();
    let whole = objective
        .forward_process_slice(&x, Some(&labels), seed, step, 0)
        .unwrap();
    let d = 64;
    for first in [0, 3, 6] {
        let n = 8 - first;
        let (xs, ls) = drawn.batch_slice(n, first, seed, step).unwrap();
        assert_eq!(xs.to_vec().unwrap(), x.to_vec().unwrap()[first * d..]);
        assert_eq!(ls.to_vec().unwrap(), labels.to_vec().unwrap()[first..]);
        let part = objective
            .forward_process_slice(&xs, Some(&ls), seed, step, first)
            .unwrap();
        for (what, got, want, per) in [
            ("z", &part.z, &whole.z, d),
            ("target", &part.target, &whole.target, d),
            ("t", &part.t, &whole.t, 1),
            ("labels", &part.labels, &whole.labels, 1),
        ] {
            assert_eq!(
                got.to_vec().unwrap(),
                want.to_vec().unwrap()[first * per..],
                "{what} from sample {first}"
            );
        }
    }
}

#[test]
fn two_trainers_as_ranks_train_the_weights_one_trainer_trains() {
    const STEPS: usize = 3;
    let config = dit_config();
    let one = {
        let mut tr = Trainer::new(common::gpu(), config.clone(), &data::digits().unwrap()).unwrap();
        let mut losses = Vec::new();
        for _ in 0..STEPS {
            tr.step().unwrap();
            losses.push(tr.read_loss().unwrap());
        }
        (tr.params.values().to_vec().unwrap(), losses)
    };
    let ranks = on_ranks(2, |r| {
        // Each rank its own device, as under MPI.
        let gpu = Gpu::new().unwrap();
        let mut tr = Trainer::new(&gpu, dit_config(), &data::digits().unwrap()).unwrap();
        tr.join_ranks(r).unwrap();
        let mut losses = Vec::new();
        for _ in 0..STEPS {
            tr.step().unwrap();
            losses.push(tr.read_loss().unwrap());
        }
        (tr.params.values().to_vec().unwrap(), losses)
    });
    // Both ranks hold the same weights, bit for bit, and the logged loss is the global mean.
    assert_eq!(ranks[0], ranks[1]);
    let (weights, losses) = &ranks[0];
    let diff = weights
        .iter()
        .zip(&one.0)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "2 ranks differ from one trainer by {diff}");
    for (a, b) in losses.iter().zip(&one.1) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "loss {a} against {b}"
        );
    }
}
