//! The Burn backends compiled into this build, chosen at run time.
//!
//! Each backend is a cargo feature: `ndarray` (the default CPU backend),
//! `flex` (Burn 0.21's newer pure-Rust CPU backend) and `wgpu` (GPU through
//! wgpu; Vulkan on Linux). Code that runs on any of them is written once as
//! a [`BackendTask`], generic over `B: Backend`, and [`run_on`] calls it with
//! the backend and device picked by name.
//!
//! ```
//! use burn::prelude::*;
//! use relative_performer::backend::{BackendKind, BackendTask, run_on};
//!
//! struct Sum;
//! impl BackendTask for Sum {
//!     type Output = f32;
//!     fn run<B: Backend>(self, device: B::Device) -> f32 {
//!         Tensor::<B, 1>::from_floats([1.0, 2.0], &device).sum().into_scalar().elem()
//!     }
//! }
//! let kind: BackendKind = BackendKind::default();
//! assert_eq!(run_on(kind, Sum).unwrap(), 3.0);
//! ```

use std::fmt;
use std::str::FromStr;

use burn::prelude::Backend;

/// A Burn backend this project can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `burn-ndarray` on the CPU (feature `ndarray`).
    Ndarray,
    /// `burn-flex` on the CPU (feature `flex`).
    Flex,
    /// `burn-wgpu` on the default GPU adapter (feature `wgpu`).
    Wgpu,
}

impl BackendKind {
    /// Every backend, compiled in or not.
    pub const ALL: [BackendKind; 3] = [BackendKind::Ndarray, BackendKind::Flex, BackendKind::Wgpu];

    /// Its name on the command line and its cargo feature.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
        }
    }

    /// Whether this build has the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The backends this build has, in the order of [`BackendKind::ALL`].
    pub fn compiled() -> Vec<BackendKind> {
        BackendKind::ALL
            .into_iter()
            .filter(|k| k.is_compiled())
            .collect()
    }
}

impl Default for BackendKind {
    /// The first compiled backend: `ndarray`, else `flex`, else `wgpu`.
    fn default() -> Self {
        BackendKind::compiled()
            .first()
            .copied()
            .unwrap_or(BackendKind::Ndarray)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend that is unknown, or not compiled into this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Not one of the names of [`BackendKind`].
    #[error("unknown backend '{0}': choose one of ndarray, flex, wgpu")]
    Unknown(String),
    /// Known, but this build was compiled without its feature.
    #[error(
        "backend '{kind}' is not compiled into this build (it has: {have}): rebuild with `--features {kind}`"
    )]
    NotCompiled {
        /// The backend asked for.
        kind: BackendKind,
        /// The backends this build has, comma-separated.
        have: String,
    },
    /// A device name the backend does not have, or a device that does not
    /// work (no GPU adapter).
    #[error("{0}")]
    Device(String),
}

impl FromStr for BackendKind {
    type Err = BackendError;
    /// Parses a name and checks that the backend is compiled in.
    fn from_str(s: &str) -> Result<Self, BackendError> {
        let kind = BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| BackendError::Unknown(s.to_string()))?;
        if !kind.is_compiled() {
            let have = BackendKind::compiled()
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(BackendError::NotCompiled { kind, have });
        }
        Ok(kind)
    }
}

/// Work that runs on any backend: [`run_on`] calls [`BackendTask::run`]
/// with the chosen backend's type and default device.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on `kind` (its default device).
pub fn run_on<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output, BackendError> {
    match kind {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => Ok(task.run::<burn::backend::NdArray>(Default::default())),
        #[cfg(feature = "flex")]
        BackendKind::Flex => Ok(task.run::<burn::backend::Flex>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(task.run::<burn::backend::Wgpu>(Default::default())),
        #[allow(unreachable_patterns)]
        other => {
            let have = BackendKind::compiled()
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let _ = task;
            Err(BackendError::NotCompiled { kind: other, have })
        }
    }
}

/// Runs `task` on `kind` and the device named `device`: `None`, `default`
/// or `cpu` for the CPU backends; for `wgpu` also `discrete[:N]`,
/// `integrated[:N]`, `virtual[:N]` and `cpu` (a software adapter). A wgpu
/// device that does not work (no adapter, no driver) is an error here, before
/// the task starts.
pub fn run_on_device<T: BackendTask>(
    kind: BackendKind,
    device: Option<&str>,
    task: T,
) -> Result<T::Output, BackendError> {
    let name = device.unwrap_or("default");
    match kind {
        BackendKind::Ndarray | BackendKind::Flex => {
            if !matches!(name, "default" | "cpu") {
                return Err(BackendError::Device(format!(
                    "--device {name}: the {kind} backend runs on the CPU only; leave --device out, or use --backend wgpu"
                )));
            }
            run_on(kind, task)
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use burn::backend::wgpu::WgpuDevice;
            use burn::prelude::Tensor;
            let (what, index) = match name.split_once(':') {
                Some((w, i)) => (
                    w,
                    i.parse::<usize>().map_err(|_| {
                        BackendError::Device(format!(
                            "--device {name}: the index after ':' must be a number"
                        ))
                    })?,
                ),
                None => (name, 0),
            };
            let dev = match what {
                "default" => WgpuDevice::DefaultDevice,
                "discrete" => WgpuDevice::DiscreteGpu(index),
                "integrated" => WgpuDevice::IntegratedGpu(index),
                "virtual" => WgpuDevice::VirtualGpu(index),
                "cpu" => WgpuDevice::Cpu,
                _ => {
                    return Err(BackendError::Device(format!(
                        "unknown wgpu device '{name}': choose default, discrete[:N], integrated[:N], virtual[:N] or cpu"
                    )));
                }
            };
            let probe = dev.clone();
            let works = std::panic::catch_unwind(move || {
                Tensor::<burn::backend::Wgpu, 1>::zeros([1], &probe).into_data()
            })
            .is_ok();
            if !works {
                return Err(BackendError::Device(format!(
                    "wgpu found no working adapter for device '{name}' (no GPU, or no Vulkan driver/loader); use --backend ndarray, or install the GPU's Vulkan driver"
                )));
            }
            Ok(task.run::<burn::backend::Wgpu>(dev))
        }
        #[allow(unreachable_patterns)]
        other => run_on(other, task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_compiled_check() {
        assert!(matches!(
            "nope".parse::<BackendKind>(),
            Err(BackendError::Unknown(_))
        ));
        for kind in BackendKind::ALL {
            let parsed = kind.as_str().to_uppercase().parse::<BackendKind>();
            if kind.is_compiled() {
                assert_eq!(parsed, Ok(kind));
            } else {
                let err = parsed.unwrap_err().to_string();
                assert!(
                    err.contains(&format!("rebuild with `--features {kind}`")),
                    "{err}"
                );
            }
        }
    }
}
