//! `mpirun -np N rectiflow train ...` (feature `mpi`): one run trained on N ranks, data
//! parallel (`rectiflow::train::distributed`). Rank 0 does what one process does — flags, the
//! run directory and its lock, resume, progress, every file — and the other ranks take its
//! configuration and state and train beside it, writing nothing.
//!
//! Each step of setting up ends with the ranks agreeing on how it went, so a rank that fails
//! (no adapter, data it cannot load) stops every rank with rank 0 naming it; training agrees at
//! every step's reduction. An error the ranks could not agree on (a bug) is printed by the rank
//! that met it, which then ends the job with `MPI_Abort`.

use super::train::{drive, open_run, TrainArgs};
use super::RunEnd;
use rectiflow::gpu::GpuOptions;
use rectiflow::limits::Budget;
use rectiflow::mpi::World;
use rectiflow::train::{Collective, Ranks, Run, TrainConfig, Trainer};
use rectiflow::{Error, Gpu, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Train the run `a` describes on the ranks of `world` (more than one).
pub fn train(a: TrainArgs, world: World) -> Result<RunEnd> {
    let world = Arc::new(world);
    let ranks = Ranks::new(world.clone());
    let end = match on_ranks(&a, &world, &ranks) {
        Ok(end) => end,
        // Every rank is leaving with this failure: rank 0 says why.
        Err(e) if ranks.failed() => {
            if ranks.is_root() {
                eprintln!("error: {e}");
            }
            RunEnd::FailedQuietly
        }
        Err(e) => {
            eprintln!(
                "error on rank {} of {}: {e}\nending every rank of the job (MPI_Abort)",
                ranks.rank(),
                ranks.size()
            );
            world.abort(1)
        }
    };
    // Every rank leaves together, after rank 0 has said how the run ended: mpirun ends the job
    // as soon as one rank exits with an error, which could cut rank 0's message.
    world.sum(&mut [0.0]);
    Ok(end)
}

fn on_ranks(a: &TrainArgs, world: &World, ranks: &Ranks) -> Result<RunEnd> {
    // Each rank its own adapter: the local rank among the machine's best adapters (or among
    // those RECTIFLOW_ADAPTER names).
    let gpu = ranks.agree(Gpu::with_options(&GpuOptions {
        adapter_index: Some(world.local_rank()),
        ..GpuOptions::default()
    }))?;
    if ranks.is_root() {
        eprintln!(
            "{} ranks, {} on this machine; rank 0 on {}",
            ranks.size(),
            world.local_size(),
            gpu.adapter_info().name
        );
    }
    let opts = a.cadence.options();
    // Rank 0 opens the run as one process would; the others wait for its configuration.
    let root_run = ranks.agree(match ranks.is_root() {
        true => open_run(a, &gpu).map(Some),
        false => Ok(None),
    })?;
    let config = match &root_run {
        Some(run) => run.trainer().config.to_json().into_bytes(),
        None => Vec::new(),
    };
    let config = ranks.broadcast_bytes(config);
    let dir = match &root_run {
        Some(run) => run.dir().to_string_lossy().into_owned().into_bytes(),
        None => Vec::new(),
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&ranks.broadcast_bytes(dir)).into_owned());
    let trainer = ranks.agree(match ranks.is_root() {
        true => Ok(None),
        false => follower_trainer(&gpu, &config).map(Some),
    })?;
    match (root_run, trainer) {
        (Some(mut run), _) => {
            let joined = run.join_ranks(ranks.clone());
            ranks.agree(joined)?;
            drive(&mut run, a.cadence.quiet)
        }
        (None, Some(mut trainer)) => {
            trainer.join_ranks(ranks.clone())?;
            let mut run = ranks.agree(Run::follow(trainer, &dir, opts))?;
            Ok(match run.run(|_| {})? {
                rectiflow::train::RunEnd::Finished(_) => RunEnd::Finished,
                rectiflow::train::RunEnd::Stopped { signal, .. } => {
                    RunEnd::Interrupted(signal.unwrap_or(0))
                }
            })
        }
        (None, None) => Err(Error::Config(
            "rank 0 opened no run and this rank built no trainer".into(),
        )),
    }
}

/// A rank's trainer for rank 0's configuration (JSON): its own copy of the data set, loaded
/// as rank 0 loaded it (an `idx:` data set must be at the same path on every machine).
fn follower_trainer(gpu: &Gpu, config: &[u8]) -> Result<Trainer> {
    let text = String::from_utf8_lossy(config);
    let config = TrainConfig::from_json(&text)?;
    let budget = Budget::of(gpu);
    let mut data = config
        .data
        .load_within(config.seed, budget.tensor_bytes.min(budget.host_bytes))?;
    if data.labels.is_some() && data.classes != config.model.classes {
        data.set_classes(config.model.classes)?;
    }
    Trainer::new(gpu, config, &data)
}
