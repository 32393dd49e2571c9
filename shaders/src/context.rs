//! The one GPU context: instance, adapter, device, queue and what the adapter is, and
//! which adapters it may open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::{Dispatch, GpuError};

/// Idle read-back staging buffers a [`GpuContext`] keeps for reuse, at most one per size
/// in practice (the least recently returned is dropped beyond this count). A training
/// backend reads back a handful of sizes: the loss statistics and embeddings of each
/// batch shape, the `L_r` errors and head gradients, the state's three tensors.
const STAGING_KEPT: usize = 8;

/// Instance, adapter, device and queue, created once and shared by every kernel.
///
/// Every buffer the crate creates goes through the context, which counts them
/// ([`GpuContext::buffers_created`]); code that calls `device.create_buffer` itself is not
/// counted.
#[derive(Debug)]
pub struct GpuContext {
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// Name, backend and device type of the adapter (for logs and benchmark tables).
    pub info: wgpu::AdapterInfo,
    /// Buffers created through this context so far.
    buffers_created: AtomicU64,
    /// Idle read-back staging buffers (unmapped), least recently returned first.
    staging: Mutex<Vec<wgpu::Buffer>>,
}

/// Which adapters a [`GpuContext`] may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFilter {
    /// The best adapter there is, a software rasteriser (wgpu's `DeviceType::Cpu`:
    /// llvmpipe/lavapipe, SwiftShader, WARP) included.
    Any,
    /// The best hardware adapter (integrated, discrete, virtual or unknown type);
    /// [`GpuError::SoftwareOnly`] when the best adapter is a software one.
    Hardware,
}

impl GpuContext {
    /// [`GpuContext::open`] on any adapter, software ones included.
    pub fn new() -> Result<Self, GpuError> {
        Self::open(AdapterFilter::Any)
    }

    /// Finds the best adapter `filter` allows (discrete before integrated before software)
    /// and opens a device with the adapter's buffer size limits. [`GpuError::NoAdapter`]
    /// when there is none. Backends from `WGPU_BACKEND`, else wgpu's first tier (Vulkan,
    /// Metal, DX12): GL compute is second tier, and its probe logs an EGL error wherever
    /// EGL has no driver.
    pub fn open(filter: AdapterFilter) -> Result<Self, GpuError> {
        log::debug!("looking for a GPU adapter ({filter:?})");
        let instance = wgpu::Instance::new(
            wgpu::InstanceDescriptor {
                backends: wgpu::Backends::PRIMARY,
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            }
            .with_env(),
        );
        // High performance ranks software adapters last: one is returned only when no
        // other adapter exists.
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| {
            log::info!("no GPU adapter: {e}");
            GpuError::NoAdapter
        })?;
        let info = adapter.get_info();
        if filter == AdapterFilter::Hardware && info.device_type == wgpu::DeviceType::Cpu {
            log::info!(
                "GPU adapter {:?} ({:?}) is a software one: not opened",
                info.name,
                info.backend
            );
            return Err(GpuError::SoftwareOnly { adapter: info.name });
        }
        let supported = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
            max_buffer_size: supported.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("anytime-edge"),
            required_limits,
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        log::info!(
            "GPU adapter {:?} ({:?}, {:?})",
            info.name,
            info.backend,
            info.device_type
        );
        Ok(GpuContext {
            instance,
            adapter,
            device,
            queue,
            info,
            buffers_created: AtomicU64::new(0),
            staging: Mutex::new(Vec::new()),
        })
    }

    /// How many buffers this context has created (storage, uniform and read-back staging
    /// buffers alike). A steady run of work whose buffers are all kept leaves it unchanged.
    pub fn buffers_created(&self) -> u64 {
        self.buffers_created.load(Ordering::Relaxed)
    }

    /// `device.create_buffer`, counted.
    fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(desc)
    }

    /// `device.create_buffer_init`, counted.
    fn create_buffer_init(&self, desc: &wgpu::util::BufferInitDescriptor<'_>) -> wgpu::Buffer {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer_init(desc)
    }

    /// An idle staging buffer of exactly `size` bytes from the pool, else a new one.
    fn take_staging(&self, size: u64) -> wgpu::Buffer {
        let pooled = {
            let mut pool = self.staging.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter()
                .position(|b| b.size() == size)
                .map(|i| pool.remove(i))
        };
        pooled.unwrap_or_else(|| {
            self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Returns an unmapped staging buffer to the pool (dropping the oldest beyond
    /// [`STAGING_KEPT`]).
    fn give_back_staging(&self, buffer: wgpu::Buffer) {
        let mut pool = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(buffer);
        if pool.len() > STAGING_KEPT {
            pool.remove(0);
        }
    }

    /// Whether the adapter is a software rasteriser (wgpu's `DeviceType::Cpu`).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// One line describing the adapter, e.g. `llvmpipe (Vulkan, Cpu)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// A storage buffer initialised with `data` (also a copy source and destination).
    pub fn storage_init(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        self.storage_init_bytes(label, bytemuck::cast_slice(data))
    }

    /// A storage buffer initialised with raw bytes (`u32` labels, ...), at least 4 bytes.
    pub fn storage_init_bytes(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if bytes.len() < 4 {
            padded = bytes.to_vec();
            padded.resize(4, 0);
            &padded[..]
        } else {
            bytes
        };
        self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: storage_usage(),
        })
    }

    /// A zeroed storage buffer of `len` f32 (at least one).
    pub fn storage_zeroed(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4 * len.max(1) as u64,
            usage: storage_usage(),
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer holding `value` (also a copy destination, so it can be rewritten).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Records `dispatches` in order into one compute pass of one command buffer and
    /// submits it. No read-back.
    pub fn run(&self, label: &str, dispatches: &[Dispatch]) {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        self.queue.submit([encoder.finish()]);
    }

    /// Copies the first `len` f32 of `buffer` back to the host (waits for all submitted
    /// work). Not for use inside a training step.
    pub fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_bytes(buffer, 4 * len as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copies the `len` f32 from element `offset` of `buffer` back to the host (waits for
    /// all submitted work), e.g. one scalar of a large buffer. Not for use inside a
    /// training step.
    pub fn read_f32_at(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let [offset, size] = [offset, len].map(|n| (n as u64).saturating_mul(4));
        let bytes = self.read_bytes_at(buffer, offset, size)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copies the first `size` bytes (a multiple of 4) of `buffer` back to the host,
    /// through a staging buffer of that size kept for the next read of the same size.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>, GpuError> {
        self.read_bytes_at(buffer, 0, size)
    }

    /// [`Self::read_bytes`] of the `size` bytes from byte `offset` (both multiples of 4).
    fn read_bytes_at(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let what = || buffer_label(buffer);
        if size == 0 {
            return Ok(Vec::new());
        }
        let end = offset.checked_add(size);
        if end.is_none_or(|end| end > buffer.size())
            || !size.is_multiple_of(4)
            || !offset.is_multiple_of(4)
        {
            return Err(GpuError::Readback {
                what: what(),
                message: format!(
                    "{size} bytes at {offset} asked of a {}-byte buffer",
                    buffer.size()
                ),
            });
        }
        let staging = self.take_staging(size);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback {
                what: what(),
                message: e.to_string(),
            })?;
        rx.recv()
            .map_err(|e| GpuError::Readback {
                what: what(),
                message: e.to_string(),
            })?
            .map_err(|e| GpuError::Readback {
                what: what(),
                message: e.to_string(),
            })?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback {
                    what: what(),
                    message: e.to_string(),
                })?;
            view.to_vec()
        };
        staging.unmap();
        // Only an unmapped buffer goes back: one left mapped by an error above is dropped.
        self.give_back_staging(staging);
        Ok(out)
    }

    /// Writes `data` at element `offset` of `buffer` (staged; applied before the next submit).
    pub fn write_f32(&self, buffer: &wgpu::Buffer, offset: usize, data: &[f32]) {
        if !data.is_empty() {
            self.queue
                .write_buffer(buffer, 4 * offset as u64, bytemuck::cast_slice(data));
        }
    }

    /// Waits until all submitted work has finished.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::Readback {
                what: "device".into(),
                message: e.to_string(),
            })
    }
}

fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

fn buffer_label(buffer: &wgpu::Buffer) -> String {
    format!("buffer of {} bytes", buffer.size())
}
