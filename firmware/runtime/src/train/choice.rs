//! Which backend trains the tuned block, and why: wgpu on a hardware adapter, else the CPU
//! path. A software adapter (llvmpipe/lavapipe, SwiftShader, WARP) is used only when the GPU
//! is asked for explicitly: it runs a step hundreds of times slower than the CPU path.

use std::fmt;

use super::{CpuBackend, TrainBackend, TrainConfig, TrainError, TunedState};
use crate::block::{BlockDims, FrozenHead};

/// Which backend a learner trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// wgpu on a hardware adapter (integrated or discrete GPU) when one exists, else the
    /// CPU path; never a software adapter.
    #[default]
    Auto,
    /// The CPU path; no GPU adapter is looked for.
    Cpu,
    /// wgpu on the best adapter, software ones included: [`TrainError::NoAdapter`] when
    /// there is none, [`TrainError::GpuNotBuilt`] without the `gpu` feature.
    Gpu,
}

/// Why a backend was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendReason {
    /// [`BackendChoice::Cpu`].
    CpuAsked,
    /// [`BackendChoice::Gpu`], on `adapter` (name, API and type), a software one or not.
    GpuAsked { adapter: String, software: bool },
    /// [`BackendChoice::Auto`] found this hardware adapter (name, API and type).
    Hardware { adapter: String },
    /// [`BackendChoice::Auto`] found only this software adapter (its name).
    SoftwareOnly { adapter: String },
    /// [`BackendChoice::Auto`] found no adapter.
    NoAdapter,
    /// [`BackendChoice::Auto`] in a build without the `gpu` feature.
    NotBuilt,
}

impl fmt::Display for BackendReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendReason::CpuAsked => write!(f, "asked for"),
            BackendReason::GpuAsked {
                adapter,
                software: false,
            } => write!(f, "asked for, on {adapter}"),
            BackendReason::GpuAsked {
                adapter,
                software: true,
            } => write!(
                f,
                "asked for, on {adapter}, a software adapter (slower than the CPU path)"
            ),
            BackendReason::Hardware { adapter } => write!(f, "GPU adapter {adapter}"),
            BackendReason::SoftwareOnly { adapter } => {
                write!(f, "the only GPU adapter is a software one ({adapter})")
            }
            BackendReason::NoAdapter => write!(f, "no GPU adapter"),
            BackendReason::NotBuilt => write!(f, "built without the `gpu` feature"),
        }
    }
}

/// The backend a learner trains on and why; displays as `backend: reason`, e.g.
/// `cpu: the only GPU adapter is a software one (llvmpipe (LLVM 15.0.6, 256 bits))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Training {
    /// [`TrainBackend::name`]: "cpu" or "wgpu".
    pub backend: &'static str,
    pub reason: BackendReason,
}

impl fmt::Display for Training {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.backend, self.reason)
    }
}

/// The backend `choice` asks for, training from `state`, and why it was chosen. Looks for
/// GPU adapters only for [`BackendChoice::Auto`] and [`BackendChoice::Gpu`].
pub fn choose_backend(
    choice: BackendChoice,
    dims: BlockDims,
    cfg: TrainConfig,
    head: FrozenHead,
    state: TunedState,
) -> Result<(Box<dyn TrainBackend + Send>, Training), TrainError> {
    match choice {
        BackendChoice::Cpu => cpu(dims, cfg, head, state, BackendReason::CpuAsked),
        #[cfg(feature = "gpu")]
        BackendChoice::Gpu => gpu::asked(dims, cfg, head, state),
        #[cfg(not(feature = "gpu"))]
        BackendChoice::Gpu => Err(TrainError::GpuNotBuilt),
        #[cfg(feature = "gpu")]
        BackendChoice::Auto => gpu::auto(dims, cfg, head, state),
        #[cfg(not(feature = "gpu"))]
        BackendChoice::Auto => cpu(dims, cfg, head, state, BackendReason::NotBuilt),
    }
}

fn cpu(
    dims: BlockDims,
    cfg: TrainConfig,
    head: FrozenHead,
    state: TunedState,
    reason: BackendReason,
) -> Result<(Box<dyn TrainBackend + Send>, Training), TrainError> {
    let backend = CpuBackend::new(dims, cfg, head, state)?;
    Ok((
        Box::new(backend),
        Training {
            backend: "cpu",
            reason,
        },
    ))
}

#[cfg(feature = "gpu")]
mod gpu {
    use std::sync::Arc;

    use anytime_shaders::{AdapterFilter, GpuContext, GpuError};

    use super::{cpu, BackendReason, Training};
    use crate::block::{BlockDims, FrozenHead};
    use crate::train::gpu::GpuBackend;
    use crate::train::{TrainBackend, TrainConfig, TrainError, TunedState};

    type Chosen = Result<(Box<dyn TrainBackend + Send>, Training), TrainError>;

    /// wgpu on any adapter.
    pub(super) fn asked(
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
    ) -> Chosen {
        let ctx = GpuContext::open(AdapterFilter::Any)?;
        let reason = BackendReason::GpuAsked {
            adapter: ctx.describe(),
            software: ctx.is_software(),
        };
        on_wgpu(ctx, dims, cfg, head, state, reason)
    }

    /// wgpu on a hardware adapter, else the CPU path.
    pub(super) fn auto(
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
    ) -> Chosen {
        match GpuContext::open(AdapterFilter::Hardware) {
            Ok(ctx) => {
                let reason = BackendReason::Hardware {
                    adapter: ctx.describe(),
                };
                on_wgpu(ctx, dims, cfg, head, state, reason)
            }
            Err(GpuError::SoftwareOnly { adapter }) => cpu(
                dims,
                cfg,
                head,
                state,
                BackendReason::SoftwareOnly { adapter },
            ),
            Err(GpuError::NoAdapter) => cpu(dims, cfg, head, state, BackendReason::NoAdapter),
            Err(e) => Err(e.into()),
        }
    }

    fn on_wgpu(
        ctx: GpuContext,
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
        reason: BackendReason,
    ) -> Chosen {
        let backend = GpuBackend::with_context(Arc::new(ctx), dims, cfg, head, state)?;
        Ok((
            Box::new(backend),
            Training {
                backend: "wgpu",
                reason,
            },
        ))
    }
}

/// Turns off Mesa's Vulkan device-select layer when `XDG_RUNTIME_DIR` is unset or not a
/// folder: there it prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
/// on every adapter probe, a failure of nothing. The layer only orders the adapters, and
/// wgpu lists them all. Call it at the start of `main`, before any thread exists (it sets
/// `NODEVICE_SELECT=1` in the process environment unless that variable is already set).
pub fn quiet_device_select() {
    let runtime_dir_ok = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|d| !d.is_empty() && std::path::Path::new(&d).is_dir());
    if !runtime_dir_ok && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
