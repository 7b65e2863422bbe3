//! The command line's commands: flags, their parsing into the library's typed settings (each
//! checked before anything is written), progress bars and printing. The work itself is the
//! library's: [`rectiflow::train::Run`] for `train`, [`rectiflow::Pipeline`] for `sample`,
//! [`rectiflow::eval`] for `eval`, [`rectiflow::reflow`] and `train::Run` for `reflow` and
//! `distill`, [`rectiflow::study`] for `study`.

#[cfg(feature = "mpi")]
mod ranks;
mod reflow;
mod sample;
mod study;
mod train;

pub use reflow::{distill, reflow, DistillCmd, ReflowCmd};
pub use sample::{eval, sample, EvalArgs, SampleArgs};
pub use study::{study, StudyArgs};
pub use train::{train, TrainArgs};

/// How a command ended (for the exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// It did all it was asked.
    Finished,
    /// A signal (its number: SIGINT 2, SIGTERM 15) stopped it after a checkpoint was saved.
    Interrupted(i32),
    /// It failed on a rank of a data-parallel job, and the message was printed already (rank
    /// 0 prints it; the other ranks exit 1 without one of their own).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    FailedQuietly,
}
