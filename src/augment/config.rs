//! What an augmentation pipeline does: the paper's two asymmetric views by default
//! (appendix B, table 6), every value overridable, and the checks on them.
use crate::error::{value_error, Result};
use serde::{Deserialize, Serialize};

/// One view's random transformations, applied in this order: resized crop, flip, colour
/// jitter (its four ops in a random order per sample), grayscale, blur, solarize.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewConfig {
    /// Fraction of the image area kept by the random resized crop.
    pub crop_scale: (f64, f64),
    /// Aspect ratio range of the crop (sampled log-uniformly).
    pub crop_ratio: (f64, f64),
    /// `bilinear` or `bicubic` (both antialiased, as torchvision's tensor resize).
    pub interpolation: String,
    pub flip_p: f64,
    pub jitter_p: f64,
    /// Brightness factor is uniform on [1 - b, 1 + b] (clamped at 0); likewise contrast and saturation.
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    /// Hue shift is uniform on [-h, h], h <= 0.5.
    pub hue: f64,
    pub grayscale_p: f64,
    pub blur_p: f64,
    pub blur_sigma: (f64, f64),
    pub solarize_p: f64,
    pub solarize_threshold: f64,
}

impl Default for ViewConfig {
    /// The paper's first view: blur always, never solarize.
    fn default() -> Self {
        Self {
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            interpolation: "bicubic".into(),
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p: 1.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            solarize_threshold: 0.5,
        }
    }
}

impl ViewConfig {
    /// The paper's second view: blur with p = 0.1, solarize with p = 0.2.
    pub fn byol_view2() -> Self {
        Self { blur_p: 0.1, solarize_p: 0.2, ..Self::default() }
    }

    fn validate(&self, arg: &str) -> Result<()> {
        let field = |f: &str| format!("{arg}.{f}");
        for (name, p) in [("flip_p", self.flip_p), ("jitter_p", self.jitter_p), ("grayscale_p", self.grayscale_p), ("blur_p", self.blur_p), ("solarize_p", self.solarize_p)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(value_error(&field(name), format!("a probability must be in [0, 1], got {p}")));
            }
        }
        let (lo, hi) = self.crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(value_error(&field("crop_scale"), format!("expected 0 < min <= max <= 1, got ({lo}, {hi})")));
        }
        let (lo, hi) = self.crop_ratio;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(value_error(&field("crop_ratio"), format!("expected 0 < min <= max, got ({lo}, {hi})")));
        }
        for (name, v) in [("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(value_error(&field(name), format!("expected a non-negative jitter strength, got {v}")));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(value_error(&field("hue"), format!("expected a hue strength in [0, 0.5], got {}", self.hue)));
        }
        let (lo, hi) = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(value_error(&field("blur_sigma"), format!("expected 0 < min <= max, got ({lo}, {hi})")));
        }
        if !(0.0..=1.0).contains(&self.solarize_threshold) {
            return Err(value_error(&field("solarize_threshold"), format!("expected a threshold in [0, 1], got {}", self.solarize_threshold)));
        }
        if !["bilinear", "bicubic"].contains(&self.interpolation.as_str()) {
            return Err(value_error(&field("interpolation"), format!("expected 'bilinear' or 'bicubic', got {:?}", self.interpolation)));
        }
        Ok(())
    }
}

/// The whole pipeline: output size, the two views, normalisation and the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Output (height, width).
    pub size: (i64, i64),
    pub view1: ViewConfig,
    pub view2: ViewConfig,
    /// Blur kernel side; `None` takes about 10% of the output size, made odd (23 at 224 px).
    pub blur_kernel: Option<i64>,
    /// Per-channel mean and std (1 or C values); empty means no normalisation.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Output dtype: `float32`, `bfloat16` or `float16`.
    pub dtype: String,
    /// Reject float input outside [0, 1] (costs one device synchronisation).
    pub check: bool,
    pub seed: u64,
}

pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            size: (224, 224),
            view1: ViewConfig::default(),
            view2: ViewConfig::byol_view2(),
            blur_kernel: None,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            dtype: "float32".into(),
            check: true,
            seed: 0,
        }
    }
}

impl AugmentConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(json).map_err(|e| value_error("augment", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("augment config serialises")
    }

    pub fn blur_kernel_size(&self) -> i64 {
        self.blur_kernel.unwrap_or_else(|| {
            let k = (0.1 * self.size.0.min(self.size.1) as f64).round() as i64;
            (k | 1).max(3)
        })
    }

    pub fn validate(&self) -> Result<()> {
        let (h, w) = self.size;
        if h < 1 || w < 1 {
            return Err(value_error("size", format!("expected a positive output size, got ({h}, {w})")));
        }
        self.view1.validate("view1")?;
        self.view2.validate("view2")?;
        if let Some(k) = self.blur_kernel {
            if k < 1 || k % 2 == 0 {
                return Err(value_error("blur_kernel", format!("expected an odd positive kernel size, got {k}")));
            }
        }
        let k = self.blur_kernel_size();
        if (self.view1.blur_p > 0.0 || self.view2.blur_p > 0.0) && k / 2 >= h.min(w) {
            return Err(value_error("blur_kernel", format!("kernel {k} is too large for {h}x{w} outputs (reflect padding needs kernel/2 < side)")));
        }
        if self.mean.len() != self.std.len() {
            return Err(value_error("std", format!("has {} values but mean has {}", self.std.len(), self.mean.len())));
        }
        if self.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(value_error("std", format!("expected positive values, got {:?}", self.std)));
        }
        if ![0, 1, 3].contains(&self.mean.len()) {
            return Err(value_error("mean", format!("expected 1 or 3 values (or none), got {}", self.mean.len())));
        }
        if !["float32", "bfloat16", "float16"].contains(&self.dtype.as_str()) {
            return Err(value_error("dtype", format!("expected float32, bfloat16 or float16, got {:?}", self.dtype)));
        }
        Ok(())
    }
}
