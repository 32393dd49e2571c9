//! The one error type of the GPU layer.

/// What can go wrong on the wgpu path. Callers match on [`GpuError::NoAdapter`] and
/// [`GpuError::SoftwareOnly`] to fall back to the CPU path.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter (no GPU and no software Vulkan such as Mesa lavapipe).
    #[error("no GPU adapter available")]
    NoAdapter,
    /// A hardware adapter was asked for and the best one is a software rasteriser
    /// (`adapter`, its name: llvmpipe/lavapipe, SwiftShader, WARP).
    #[error("the only GPU adapter is a software one ({adapter})")]
    SoftwareOnly { adapter: String },
    /// The adapter exists but refused to give a device.
    #[error("GPU device request failed: {0}")]
    Device(String),
    /// A kernel's shader module or pipeline failed validation.
    #[error("kernel {kernel}: shader rejected: {message}")]
    Shader {
        kernel: &'static str,
        message: String,
    },
    /// A buffer is too small for the dispatch a kernel was asked to record (in f32
    /// elements, or bytes for uniforms).
    #[error("kernel {kernel}, binding {binding}: needs {expected} elements, buffer holds {found}")]
    Size {
        kernel: &'static str,
        binding: &'static str,
        expected: u64,
        found: u64,
    },
    /// Arguments that make no sense for a kernel (zero sizes, counts over the limits).
    #[error("kernel {kernel}: {message}")]
    Args {
        kernel: &'static str,
        message: String,
    },
    /// Reading a buffer back failed, or the device reported an error while running work.
    #[error("GPU readback of {what} failed: {message}")]
    Readback { what: String, message: String },
}
