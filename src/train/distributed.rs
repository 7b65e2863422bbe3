//! Data-parallel training over ranks: one model on N processes (each with its own device), each
//! taking its slice of the global batch, with the gradient averaged across them once per step.
//!
//! The transport is a [`Collective`] (with the `mpi` feature, `crate::mpi::World` on MPI); this
//! module owns what the trainer and the run loop do with it ([`Ranks`]):
//!
//! - **the batch**: `--batch` stays the global batch B; rank r of N draws samples
//!   `r B/N .. (r+1) B/N` of it, and the random streams (rows, t, noise, label dropout) are
//!   indexed by the global sample, so N ranks draw exactly what one process would. N must
//!   divide B ([`Ranks::slice`]). The loss is a mean over the batch, so each rank's gradient
//!   is that of its local mean, and the mean of the N local-mean gradients (equal slices) is
//!   the gradient of the global mean.
//! - **the reduction**: once per step the flat gradient is read back, summed across ranks
//!   ([`Collective::sum`]), scaled by 1/N on the host and uploaded; then every rank applies the
//!   same AdamW step (clipping included) to the same weights, so the weights stay identical
//!   without being exchanged again. The sum's order differs from one process's sum over the
//!   whole batch, so N ranks match one process to rounding, not bit for bit.
//! - **agreement**: the step's reduction also carries each rank's health and stop request
//!   ([`STATUS_SLOTS`] numbers after the gradient), so every rank learns in the same step
//!   whether any rank failed or was asked to stop (a signal), at no extra round trip. A rank
//!   that fails sends zeros and a failure flag; all ranks then skip the update, gather the
//!   failures' messages (fixed-size, [`MESSAGE_BYTES`]) and return an error — rank 0's names
//!   every failing rank and its message. An error met outside a reduction (rank 0 writing a
//!   checkpoint or a sample grid) is carried ([`Ranks::carry`]) to the next one, or to the
//!   final [`Ranks::settle`] of a run. A rank that dies (a signal it does not catch, a crash)
//!   cannot take part: the MPI launcher then ends the job.
#![warn(missing_docs)]

use super::run::StopHandle;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The collective operations data-parallel training needs, over the processes of one job (the
/// ranks `0..size`). Every rank calls the same operations in the same order with buffers of the
/// same length; an implementation blocks until all have.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replace `values` on every rank by the element-wise sum of every rank's `values` (f32,
    /// the same bits on every rank).
    fn sum(&self, values: &mut [f32]);
    /// Replace `bytes` on every rank by rank 0's.
    fn broadcast(&self, bytes: &mut [u8]);
    /// Every rank's `mine` (all of one length) in rank order, on every rank.
    fn gather(&self, mine: &[u8]) -> Vec<u8>;
}

/// Numbers after the gradient in a step's reduction: ranks that failed, ranks asked to stop
/// by [`StopHandle::stop`], by SIGINT, by SIGTERM (each a count, exact in f32).
pub const STATUS_SLOTS: usize = 4;

/// Bytes of a rank's failure message in the gather that follows a failed reduction (longer
/// messages are cut at a character boundary).
pub const MESSAGE_BYTES: usize = 2048;

/// This process's part in a data-parallel job: its rank, the transport, and the state that
/// keeps every rank taking the same decisions (a failure carried to the next reduction, the
/// agreed stop). Cheap to clone (shared).
#[derive(Clone)]
pub struct Ranks {
    comm: Arc<dyn Collective>,
    shared: Arc<Shared>,
}

struct Shared {
    /// An error met outside a reduction, reported at the next one.
    carried: Mutex<Option<Error>>,
    /// Whether a failure was agreed (every rank is leaving with an error).
    failed: AtomicBool,
    /// The stop the ranks agreed on at the last reduction (`Some(None)`: by a stop handle).
    stop: Mutex<Option<Option<i32>>>,
    /// This process's own stop request (its signals, or [`StopHandle::stop`]).
    local_stop: StopHandle,
}

impl Ranks {
    /// This process's part over `comm`.
    pub fn new(comm: Arc<dyn Collective>) -> Ranks {
        Ranks {
            comm,
            shared: Arc::new(Shared {
                carried: Mutex::new(None),
                failed: AtomicBool::new(false),
                stop: Mutex::new(None),
                local_stop: StopHandle::default(),
            }),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size()
    }
    /// Whether this is rank 0, the one that writes the run directory and reports.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's slice of a global batch of `batch`: `(first sample, samples)`. Refused when
    /// the ranks do not divide the batch evenly (unequal slices would weigh samples unequally
    /// in the averaged gradient).
    pub fn slice(&self, batch: usize) -> Result<(usize, usize)> {
        let n = self.size();
        if batch == 0 || !batch.is_multiple_of(n) {
            return Err(Error::Config(format!(
                "--batch {batch} cannot be split evenly over {n} ranks: give a --batch that is a \
                 multiple of {n} (it stays the global batch; each rank trains on --batch / {n})"
            )));
        }
        let local = batch / n;
        Ok((self.rank() * local, local))
    }

    /// The stop handle the ranks agree over: the run's signals set it (see [`super::Run`]).
    pub fn stop_handle(&self) -> StopHandle {
        self.shared.local_stop.clone()
    }

    /// The stop agreed at the last reduction: `Some(signal)` when any rank was asked to stop
    /// (SIGINT over SIGTERM over a stop handle, `None` inside for a handle).
    pub fn agreed_stop(&self) -> Option<Option<i32>> {
        *self.shared.stop.lock().unwrap()
    }

    /// Whether the ranks agreed that the job failed (each rank is leaving with an error; rank
    /// 0's names every failure). No exchange takes place after that.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Keep an error met outside a reduction for the next one (or [`Ranks::settle`]), where
    /// every rank learns of it. The first error is kept.
    pub fn carry(&self, e: Error) {
        let mut carried = self.shared.carried.lock().unwrap();
        if carried.is_none() {
            *carried = Some(e);
        }
    }

    /// Sum `payload` (this rank's values, or its error) across ranks, with every rank's health
    /// and stop request: the sum on every rank, or, if any rank failed (here or in an error
    /// carried to this reduction), an error on every rank. `len` is the payload's length on
    /// every rank (a failed rank sends zeros).
    pub fn sum_checked(&self, payload: Result<Vec<f32>>, len: usize) -> Result<Vec<f32>> {
        if self.failed() {
            return Err(already_failed(payload));
        }
        let payload = self.take_carried().map_or(payload, Err);
        let stop = self.shared.local_stop.requested();
        let mut message = vec![0f32; len + STATUS_SLOTS];
        let mine = match payload {
            Ok(values) if values.len() == len => {
                message[..len].copy_from_slice(&values);
                Ok(())
            }
            Ok(values) => Err(Error::Shape(format!(
                "a reduction over ranks of {len} values was given {}",
                values.len()
            ))),
            Err(e) => Err(e),
        };
        let status = &mut message[len..];
        status[0] = mine.is_err() as u32 as f32;
        match stop {
            Some(None) => status[1] = 1.0,
            Some(Some(2)) => status[2] = 1.0,
            Some(Some(_)) => status[3] = 1.0,
            None => {}
        }
        self.comm.sum(&mut message);
        let status: Vec<f32> = message.split_off(len);
        let agreed = if status[2] > 0.0 {
            Some(Some(2))
        } else if status[3] > 0.0 {
            Some(Some(15))
        } else if status[1] > 0.0 {
            Some(None)
        } else {
            None
        };
        *self.shared.stop.lock().unwrap() = agreed;
        if status[0] > 0.0 {
            return Err(self.fail(mine.err()));
        }
        Ok(message)
    }

    /// Every rank's `payload` (all of length `len`) in rank order, with the ranks' health as in
    /// [`Ranks::sum_checked`] (no stop request is exchanged).
    pub fn gather_checked(&self, payload: Result<Vec<f32>>, len: usize) -> Result<Vec<f32>> {
        if self.failed() {
            return Err(already_failed(payload));
        }
        let payload = self.take_carried().map_or(payload, Err);
        let mut message = vec![0f32; len + 1];
        let mine = match payload {
            Ok(values) if values.len() == len => {
                message[1..].copy_from_slice(&values);
                Ok(())
            }
            Ok(values) => Err(Error::Shape(format!(
                "a gather over ranks of {len} values was given {}",
                values.len()
            ))),
            Err(e) => Err(e),
        };
        message[0] = mine.is_err() as u32 as f32;
        let all: Vec<f32> =
            bytemuck::pod_collect_to_vec(&self.comm.gather(bytemuck::cast_slice(&message)));
        if all.chunks(len + 1).any(|m| m[0] > 0.0) {
            return Err(self.fail(mine.err()));
        }
        Ok(all.chunks(len + 1).flat_map(|m| m[1..].to_vec()).collect())
    }

    /// Agree on a result every rank computed on its own (setting up, or the end of a run): `Ok`
    /// on every rank when every rank's is `Ok` (and no error was carried), else an error on
    /// every rank, rank 0's naming each failure.
    pub fn agree<T>(&self, local: Result<T>) -> Result<T> {
        let (value, status) = match local {
            Ok(value) => (Some(value), Ok(Vec::new())),
            Err(e) => (None, Err(e)),
        };
        self.sum_checked(status, 0)?;
        // A rank that failed has failed the reduction too, so every rank here has its value.
        value.ok_or_else(|| Error::Ranks("a failed rank passed its reduction".into()))
    }

    /// [`Ranks::agree`] on nothing: the final exchange of a run, where an error carried since
    /// the last reduction (rank 0's last checkpoint, say) reaches every rank.
    pub fn settle(&self) -> Result<()> {
        self.agree(Ok(()))
    }

    /// Rank 0's `values` on every rank (the same length on every rank).
    pub fn broadcast_f32(&self, values: &mut [f32]) {
        self.comm.broadcast(bytemuck::cast_slice_mut(values));
    }

    /// Rank 0's `bytes` on every rank, of any length (the others' are ignored).
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        let mut len = (bytes.len() as u64).to_le_bytes();
        self.comm.broadcast(&mut len);
        let mut out = bytes;
        out.resize(u64::from_le_bytes(len) as usize, 0);
        self.comm.broadcast(&mut out);
        out
    }

    fn take_carried(&self) -> Option<Error> {
        self.shared.carried.lock().unwrap().take()
    }

    /// After a reduction that says some rank failed: gather every rank's message (the same
    /// collective on every rank) and make this rank's error. A rank whose own error is the
    /// only one keeps it as it is; otherwise rank 0's error names each failing rank.
    fn fail(&self, mine: Option<Error>) -> Error {
        self.shared.failed.store(true, Ordering::SeqCst);
        let mut buffer = vec![0u8; MESSAGE_BYTES];
        if let Some(e) = &mine {
            let text = e.to_string();
            let mut cut = text.len().min(MESSAGE_BYTES - 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            buffer[0] = 1;
            buffer[1..1 + cut].copy_from_slice(&text.as_bytes()[..cut]);
        }
        let all = self.comm.gather(&buffer);
        let failures: Vec<(usize, String)> = all
            .chunks(MESSAGE_BYTES)
            .enumerate()
            .filter(|(_, m)| m[0] == 1)
            .map(|(rank, m)| {
                let end = m[1..].iter().position(|&b| b == 0).unwrap_or(m.len() - 1);
                (rank, String::from_utf8_lossy(&m[1..1 + end]).into_owned())
            })
            .collect();
        // The distinct messages, each with the ranks that sent it.
        let mut distinct: Vec<(Vec<usize>, String)> = Vec::new();
        for (rank, text) in failures {
            match distinct.iter_mut().find(|(_, t)| *t == text) {
                Some((ranks, _)) => ranks.push(rank),
                None => distinct.push((vec![rank], text)),
            }
        }
        if let (Some(e), [(_, text)]) = (&mine, distinct.as_slice()) {
            if e.to_string().starts_with(text.as_str()) {
                return e.clone();
            }
        }
        let n = self.size();
        let lines: Vec<String> = distinct
            .iter()
            .map(|(ranks, text)| {
                let who: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
                let label = if ranks.len() == 1 { "rank" } else { "ranks" };
                format!("{label} {} of {n}: {text}", who.join(", "))
            })
            .collect();
        Error::Ranks(format!(
            "the job's ranks stopped together because {} failed:\n{}",
            if distinct.len() == 1 && distinct[0].0.len() == 1 {
                "one rank"
            } else {
                "ranks"
            },
            lines.join("\n")
        ))
    }
}

/// The error of an exchange asked for after the ranks agreed on a failure: none takes place
/// (every rank is leaving), and the caller's own error, if any, is kept.
fn already_failed(payload: Result<Vec<f32>>) -> Error {
    payload
        .err()
        .unwrap_or_else(|| Error::Ranks("the job's ranks have already stopped on a failure".into()))
}

impl std::fmt::Debug for Ranks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ranks {{ rank: {}, size: {} }}",
            self.rank(),
            self.size()
        )
    }
}
