//! The recorder: dispatches and copies are queued here and replayed into one command encoder
//! and one `queue.submit` when results are needed. Kernel parameters go either as immediates
//! (kept with each dispatch) or into one uniform arena that is written once per submission and
//! bound with a dynamic offset per dispatch, so no dispatch creates a buffer. While profiling,
//! each dispatch gets a pass of its own, timed (see `profile.rs`).

use super::pipeline::PipelineCache;
use super::profile::{Cost, DispatchTiming, ProfileMethod};
use super::PARAMS_BYTES;
use std::time::Instant;

enum Params {
    Immediate([u8; PARAMS_BYTES]),
    Arena(u32),
}

enum Command {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        params: Params,
        grid: [u32; 3],
        /// `shader::entry` and what the op says the dispatch costs (for profiles).
        label: (&'static str, &'static str),
        cost: Cost,
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

pub(crate) struct Recorder {
    commands: Vec<Command>,
    /// Names of the kernels recorded since the last submission, for error messages.
    kernels: Vec<&'static str>,
    arena: Vec<u8>,
    arena_stride: usize,
    arena_buffer: Option<(wgpu::Buffer, wgpu::BindGroup)>,
    /// Dispatches recorded since the context was made.
    pub dispatches: u64,
    /// While profiling: how, and the timings so far.
    pub profile: Option<(ProfileMethod, Vec<DispatchTiming>)>,
}

/// Dispatches timed per submission while profiling (two timestamps each).
const PROFILE_CHUNK: usize = 1024;

impl Recorder {
    pub fn new(limits: &wgpu::Limits) -> Self {
        let align = limits.min_uniform_buffer_offset_alignment as usize;
        Recorder {
            commands: Vec::new(),
            kernels: Vec::new(),
            arena: Vec::new(),
            arena_stride: PARAMS_BYTES.div_ceil(align) * align,
            arena_buffer: None,
            dispatches: 0,
            profile: None,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.commands.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &mut self,
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        params: &[u8],
        grid: [u32; 3],
        label: (&'static str, &'static str),
        cost: Cost,
        immediates: bool,
    ) {
        let name = label.1;
        let params = if immediates {
            let mut block = [0u8; PARAMS_BYTES];
            block[..params.len()].copy_from_slice(params);
            Params::Immediate(block)
        } else {
            let offset = self.arena.len();
            self.arena.resize(offset + self.arena_stride, 0);
            self.arena[offset..offset + params.len()].copy_from_slice(params);
            Params::Arena(offset as u32)
        };
        self.commands.push(Command::Dispatch {
            pipeline,
            bind_group,
            params,
            grid,
            label,
            cost,
        });
        self.dispatches += 1;
        if self.kernels.last() != Some(&name) {
            self.kernels.push(name);
        }
    }

    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        self.commands.push(Command::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Replay everything into one encoder and submit it (while profiling: in timed chunks,
    /// waiting for each). Returns the kernel names (for errors).
    pub fn submit(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        cache: &PipelineCache,
    ) -> String {
        if self.commands.is_empty() {
            return String::new();
        }
        let arena_bind = if self.arena.is_empty() {
            None
        } else {
            Some(self.upload_arena(device, queue, cache))
        };
        let commands: Vec<Command> = self.commands.drain(..).collect();
        match self.profile.as_ref().map(|(m, _)| *m) {
            None => {
                let mut encoder = new_encoder(device);
                encode(&mut encoder, commands, arena_bind.as_ref(), None);
                queue.submit([encoder.finish()]);
            }
            Some(method) => {
                let mut timings = Vec::new();
                let mut rest = commands.into_iter().peekable();
                while rest.peek().is_some() {
                    let chunk: Vec<Command> = match method {
                        ProfileMethod::Timestamps => rest.by_ref().take(PROFILE_CHUNK).collect(),
                        ProfileMethod::WallClock => rest.by_ref().take(1).collect(),
                    };
                    timings.extend(profile_chunk(
                        device,
                        queue,
                        chunk,
                        arena_bind.as_ref(),
                        method,
                    ));
                }
                if let Some((_, all)) = self.profile.as_mut() {
                    all.extend(timings);
                }
            }
        }
        self.arena.clear();
        let names = self.kernels.join(", ");
        self.kernels.clear();
        names
    }

    /// Write the arena to its GPU buffer (growing it when needed) and return its bind group.
    fn upload_arena(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        cache: &PipelineCache,
    ) -> wgpu::BindGroup {
        let needed = self.arena.len() as u64;
        let fits = matches!(&self.arena_buffer, Some((b, _)) if b.size() >= needed);
        if !fits {
            let size = needed.next_power_of_two().max(64 * 1024);
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("rectiflow params arena"),
                size,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("rectiflow params arena"),
                layout: cache.params_layout(),
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(PARAMS_BYTES as u64),
                    }),
                }],
            });
            self.arena_buffer = Some((buffer, bg));
        }
        let (buffer, bg) = self.arena_buffer.as_ref().unwrap();
        queue.write_buffer(buffer, 0, &self.arena);
        bg.clone()
    }
}

fn new_encoder(device: &wgpu::Device) -> wgpu::CommandEncoder {
    device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("rectiflow"),
    })
}

/// Record `commands` into `encoder`: consecutive dispatches share one compute pass, unless
/// `timestamps` is given, in which case dispatch `i` gets a pass of its own stamped into
/// queries `2 i` and `2 i + 1`.
fn encode(
    encoder: &mut wgpu::CommandEncoder,
    commands: Vec<Command>,
    arena: Option<&wgpu::BindGroup>,
    timestamps: Option<&wgpu::QuerySet>,
) {
    let mut pass: Option<wgpu::ComputePass<'static>> = None;
    let mut timed = 0u32;
    for cmd in commands {
        match cmd {
            Command::Dispatch {
                pipeline,
                bind_group,
                params,
                grid,
                ..
            } => {
                if timestamps.is_some() {
                    drop(pass.take());
                }
                let p = pass.get_or_insert_with(|| {
                    let timestamp_writes =
                        timestamps.map(|query_set| wgpu::ComputePassTimestampWrites {
                            query_set,
                            beginning_of_pass_write_index: Some(2 * timed),
                            end_of_pass_write_index: Some(2 * timed + 1),
                        });
                    encoder
                        .begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("rectiflow"),
                            timestamp_writes,
                        })
                        .forget_lifetime()
                });
                timed += 1;
                p.set_pipeline(&pipeline);
                p.set_bind_group(0, &bind_group, &[]);
                match params {
                    Params::Immediate(block) => p.set_immediates(0, &block),
                    Params::Arena(offset) => {
                        let bg = arena.expect("arena was uploaded");
                        p.set_bind_group(1, bg, &[offset]);
                    }
                }
                p.dispatch_workgroups(grid[0], grid[1], grid[2]);
            }
            Command::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                size,
            } => {
                drop(pass.take());
                encoder.copy_buffer_to_buffer(&src, src_offset, &dst, dst_offset, size);
            }
        }
    }
}

/// Submit `commands`, wait, and return the time of each dispatch among them.
fn profile_chunk(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    commands: Vec<Command>,
    arena: Option<&wgpu::BindGroup>,
    method: ProfileMethod,
) -> Vec<DispatchTiming> {
    let labels: Vec<DispatchTiming> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Dispatch { label, cost, .. } => Some(DispatchTiming {
                kernel: format!("{}::{}", label.0, label.1),
                seconds: 0.0,
                cost: *cost,
            }),
            Command::Copy { .. } => None,
        })
        .collect();
    let wait = || {
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
    };
    let mut encoder = new_encoder(device);
    if method == ProfileMethod::WallClock || labels.is_empty() {
        let start = Instant::now();
        encode(&mut encoder, commands, arena, None);
        queue.submit([encoder.finish()]);
        wait();
        let secs = start.elapsed().as_secs_f64();
        return labels
            .into_iter()
            .map(|d| DispatchTiming { seconds: secs, ..d })
            .collect();
    }
    let n = 2 * labels.len() as u32;
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("rectiflow profile"),
        ty: wgpu::QueryType::Timestamp,
        count: n,
    });
    let bytes = 8 * n as u64;
    let resolved = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("rectiflow profile"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("rectiflow profile readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encode(&mut encoder, commands, arena, Some(&queries));
    encoder.resolve_query_set(&queries, 0..n, &resolved, 0);
    encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
    queue.submit([encoder.finish()]);
    let slice = readback.slice(..);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    wait();
    let period = queue.get_timestamp_period() as f64 * 1e-9;
    let stamps: Vec<u64> = match slice.get_mapped_range() {
        Ok(view) => bytemuck::pod_collect_to_vec(&view),
        Err(_) => vec![0; n as usize],
    };
    readback.unmap();
    labels
        .into_iter()
        .enumerate()
        .map(|(i, d)| DispatchTiming {
            seconds: stamps[2 * i + 1].saturating_sub(stamps[2 * i]) as f64 * period,
            ..d
        })
        .collect()
}
