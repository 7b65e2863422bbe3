//! The recorder: dispatches and copies are queued here and replayed into one command encoder
//! and one `queue.submit` when results are needed. Kernel parameters go either as immediates
//! (kept with each dispatch) or into one uniform arena that is written once per submission and
//! bound with a dynamic offset per dispatch, so no dispatch creates a buffer.

use super::kernel::PipelineCache;
use super::PARAMS_BYTES;

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
}

impl Recorder {
    pub fn new(limits: &wgpu::Limits) -> Self {
        let align = limits.min_uniform_buffer_offset_alignment as usize;
        Recorder {
            commands: Vec::new(),
            kernels: Vec::new(),
            arena: Vec::new(),
            arena_stride: PARAMS_BYTES.div_ceil(align) * align,
            arena_buffer: None,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.commands.is_empty()
    }

    pub fn dispatch(
        &mut self,
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        params: &[u8],
        grid: [u32; 3],
        name: &'static str,
        immediates: bool,
    ) {
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
        });
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

    /// Replay everything into one encoder and submit it. Returns the kernel names (for errors).
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
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("rectiflow"),
        });
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        for cmd in self.commands.drain(..) {
            match cmd {
                Command::Dispatch {
                    pipeline,
                    bind_group,
                    params,
                    grid,
                } => {
                    let p = pass.get_or_insert_with(|| {
                        encoder
                            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                                label: Some("rectiflow"),
                                timestamp_writes: None,
                            })
                            .forget_lifetime()
                    });
                    p.set_pipeline(&pipeline);
                    p.set_bind_group(0, &bind_group, &[]);
                    match params {
                        Params::Immediate(block) => p.set_immediates(0, &block),
                        Params::Arena(offset) => {
                            let bg = arena_bind.as_ref().expect("arena was uploaded");
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
        drop(pass);
        queue.submit([encoder.finish()]);
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
