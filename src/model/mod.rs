//! The networks: backbones with torchvision's layout, MLP heads, and the online/target pair.
pub mod backbone;
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
