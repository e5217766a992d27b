//! The networks: backbones with torchvision's layout, MLP heads, and the online/target pair.
pub mod backbone;
pub mod conv;
pub mod flat;
pub mod heads;
pub mod norm;
pub mod network;
