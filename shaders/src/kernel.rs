//! What every kernel wrapper shares: building a pipeline from an explicit layout inside a
//! validation error scope, the recorded [`Dispatch`], and buffer size checks.

use crate::{GpuContext, GpuError};

/// How a binding slot is declared in a kernel's bind-group layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// A kernel's bind-group layout and one compute pipeline per entry point, all built once.
#[derive(Debug)]
pub(crate) struct KernelPipeline {
    pub(crate) name: &'static str,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipelines: Vec<wgpu::ComputePipeline>,
}

impl KernelPipeline {
    /// Builds the layout (binding `i` is `slots[i]`) and a pipeline per entry point. Shader
    /// and pipeline creation run inside a validation error scope that names the kernel.
    pub(crate) fn build(
        ctx: &GpuContext,
        name: &'static str,
        source: &'static str,
        slots: &[Slot],
        entry_points: &[&'static str],
    ) -> Result<Self, GpuError> {
        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match slot {
                        Slot::Uniform => wgpu::BufferBindingType::Uniform,
                        Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Slot::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = entry_points
            .iter()
            .map(|entry| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                kernel: name,
                message: err.to_string(),
            });
        }
        log::debug!("kernel {name}: {} pipeline(s) built", entry_points.len());
        Ok(KernelPipeline {
            name,
            layout,
            pipelines,
        })
    }

    /// A bind group over `buffers` (binding `i` is `buffers[i]`, whole buffer).
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// A recorded dispatch of entry point `entry` (index into the entry points).
    pub(crate) fn dispatch(
        &self,
        entry: usize,
        bind_group: wgpu::BindGroup,
        workgroups: [u32; 3],
    ) -> Dispatch {
        Dispatch {
            kernel: self.name,
            pipeline: self.pipelines[entry].clone(),
            bind_group,
            workgroups,
        }
    }
}

/// One compute dispatch with its pipeline, bind group (buffers and uniforms bound, sizes
/// checked) and grid. Built once, recorded into any number of passes.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The kernel's name, for logs.
    pub kernel: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// Records this dispatch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        if x > 0 && y > 0 && z > 0 {
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Workgroup counts.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
}

/// Most workgroups along x in a 1-D grid spread over x and y (WebGPU's guaranteed
/// minimum of `maxComputeWorkgroupsPerDimension`); shaders rebuild the flat index as
/// `gid.x + gid.y * num_workgroups.x * WG`.
pub(crate) const MAX_GROUPS_X: u32 = 65535;

/// Grid of workgroups for `threads` threads in workgroups of `wg` threads.
pub(crate) fn grid_1d(threads: u64, wg: u32) -> [u32; 3] {
    let groups = threads.div_ceil(wg as u64);
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(MAX_GROUPS_X as u64);
    let y = groups.div_ceil(x);
    [x as u32, y as u32, 1]
}

/// Checks that `buffer` holds at least `expected` f32 elements.
pub(crate) fn check_len(
    kernel: &'static str,
    binding: &'static str,
    buffer: &wgpu::Buffer,
    expected: u64,
) -> Result<(), GpuError> {
    let found = buffer.size() / 4;
    if found < expected {
        return Err(GpuError::Size {
            kernel,
            binding,
            expected,
            found,
        });
    }
    Ok(())
}

/// Elements spanned by a strided `rows × cols` matrix starting at `offset`: one past the
/// last element read or written (0 when empty).
pub(crate) fn span(offset: u32, rows: u32, cols: u32, row_stride: u32) -> u64 {
    if rows == 0 || cols == 0 {
        0
    } else {
        offset as u64 + (rows as u64 - 1) * row_stride as u64 + cols as u64
    }
}

/// Fails with [`GpuError::Args`] unless `ok`.
pub(crate) fn ensure(
    kernel: &'static str,
    ok: bool,
    message: impl FnOnce() -> String,
) -> Result<(), GpuError> {
    if ok {
        Ok(())
    } else {
        Err(GpuError::Args {
            kernel,
            message: message(),
        })
    }
}
