//! The networks: backbones with torchvision's layout, MLP heads, and the online/target pair.
pub mod backbone;
pub mod byol;
pub mod conv;
pub mod flat;
pub mod heads;
pub mod norm;
pub mod network;

/// Whether the kernel switch `env` (`BYOL_RS_FUSED_BN`, `BYOL_RS_WINOGRAD`) is on: unset or
/// anything but `0`. Read on every call, so a process can flip it between steps.
pub fn switched_on(env: &str) -> bool {
    std::env::var_os(env).is_none_or(|v| v != "0")
}

/// `f` with gradients off, restored on the way out even when `f` panics (an out-of-memory
/// inside a tch call does): `tch::no_grad` restores only on return, so a panic in it would leave
/// the thread's autograd off and every later step without gradients.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = tch::no_grad_guard();
    f()
}
