//! MPI (feature `mpi`): the transport of data-parallel training. [`World::launched`] joins the
//! job when the process was started by an MPI launcher (`mpirun -np N rectiflow train ...`),
//! and [`World`] is the [`Collective`] the trainer reduces its gradient with
//! (`train::distributed` owns what is reduced and when).
//!
//! MPI is initialised at `MPI_THREAD_SERIALIZED` and every call goes through one lock, so the
//! trainer may live on any thread. MPI's default error handler stays: an MPI error, or a rank
//! that dies, ends the whole job (the launcher reports it).
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::train::distributed::Collective;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::Mutex;

/// Environment variables an MPI launcher sets in the processes it starts (Open MPI, PMIx, MPICH
/// and Intel MPI's Hydra, Slurm's PMI): a process without any of them was not launched as part
/// of a job, and does not initialise MPI.
const LAUNCHER_VARIABLES: [&str; 5] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_RANK",
    "PMI_SIZE",
    "PMI_RANK",
    "MPI_LOCALNRANKS",
];

/// The most elements one MPI call is given (its counts are C `int`s): a 675M-parameter model's
/// state is broadcast, and its gradient summed, in pieces of this many.
const MAX_COUNT: usize = 1 << 28;

/// This process's membership of an MPI job: the world communicator (behind a lock) and its
/// place on the machine. MPI is finalised when it is dropped.
pub struct World {
    comm: Mutex<Communicator0>,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    // Dropped last: MPI_Finalize.
    _universe: Universe,
}

/// The world communicator, sendable between threads: MPI was initialised at
/// `MPI_THREAD_SERIALIZED` and the lock in [`World`] serialises every call. With the send
/// buffer of a sum, kept between steps (the `mpi` crate has no `MPI_IN_PLACE`).
struct Communicator0(SimpleCommunicator, Vec<f32>);
// SAFETY: an MPI communicator handle may be used from any thread under MPI_THREAD_SERIALIZED
// as long as no two calls run at once, which the Mutex around it guarantees.
unsafe impl Send for Communicator0 {}

impl World {
    /// Join the MPI job this process was launched in; `Ok(None)` when it was not started by an
    /// MPI launcher (a plain run). Refused if MPI cannot be initialised, or cannot give the
    /// serialised threading the trainer needs.
    pub fn launched() -> Result<Option<World>> {
        if !LAUNCHER_VARIABLES
            .iter()
            .any(|v| std::env::var_os(v).is_some())
        {
            return Ok(None);
        }
        let Some((universe, threading)) =
            mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            return Err(Error::Config(
                "MPI was already initialised in this process; rectiflow initialises it itself"
                    .into(),
            ));
        };
        if threading < mpi::Threading::Serialized {
            return Err(Error::Config(format!(
                "this MPI library offers threading {threading:?}; rectiflow needs Serialized \
                 (build Open MPI with threads, as Debian's is)"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        // The ranks that share this machine (and its adapters), in world-rank order.
        let node = world.split_shared(world.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        Ok(Some(World {
            comm: Mutex::new(Communicator0(world, Vec::new())),
            rank,
            size,
            local_rank,
            local_size,
            _universe: universe,
        }))
    }

    /// This rank among the ranks on its machine (which adapter it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    /// The ranks on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// End every rank of the job at once (`MPI_Abort`), for an error the ranks could not agree
    /// on; the caller prints its message first.
    pub fn abort(&self, code: i32) -> ! {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        comm.0.abort(code)
    }
}

impl Collective for World {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum(&self, values: &mut [f32]) {
        let mut comm = self.comm.lock().unwrap();
        let Communicator0(world, send) = &mut *comm;
        // In pieces whose counts fit MPI's int.
        for piece in values.chunks_mut(MAX_COUNT) {
            send.clear();
            send.extend_from_slice(piece);
            world.all_reduce_into(&send[..], piece, SystemOperation::sum());
        }
    }
    fn broadcast(&self, bytes: &mut [u8]) {
        let comm = self.comm.lock().unwrap();
        for piece in bytes.chunks_mut(MAX_COUNT) {
            comm.0.process_at_rank(0).broadcast_into(piece);
        }
    }
    fn gather(&self, mine: &[u8]) -> Vec<u8> {
        let comm = self.comm.lock().unwrap();
        let mut all = vec![0u8; mine.len() * self.size];
        comm.0.all_gather_into(mine, &mut all[..]);
        all
    }
}
