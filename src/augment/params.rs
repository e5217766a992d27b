//! Per-sample random parameters for one view of a batch, drawn on the host.
use super::config::ViewConfig;
use super::rng::Rng;

/// A crop box in input pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub top: i64,
    pub left: i64,
    pub height: i64,
    pub width: i64,
}

/// The colour-jitter ops, in torchvision's numbering (`ColorJitter` draws a permutation of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitterOp {
    Brightness = 0,
    Contrast = 1,
    Saturation = 2,
    Hue = 3,
}
pub const JITTER_OPS: [JitterOp; 4] = [JitterOp::Brightness, JitterOp::Contrast, JitterOp::Saturation, JitterOp::Hue];

#[derive(Clone, Debug, PartialEq)]
pub struct Jitter {
    pub order: [JitterOp; 4],
    /// Factors indexed by `JitterOp as usize`: brightness, contrast, saturation, hue shift.
    pub factors: [f64; 4],
}

#[derive(Clone, Debug, PartialEq)]
pub struct SampleParams {
    pub crop: CropBox,
    pub flip: bool,
    pub jitter: Option<Jitter>,
    pub grayscale: bool,
    pub blur_sigma: Option<f64>,
    pub solarize: bool,
}

/// torchvision's `RandomResizedCrop.make_params`: ten tries, then a central crop.
pub fn sample_crop(rng: &mut Rng, height: i64, width: i64, scale: (f64, f64), ratio: (f64, f64)) -> CropBox {
    let area = (height * width) as f64;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_ratio.0, log_ratio.1).exp();
        let w = (target_area * aspect).sqrt().round() as i64;
        let h = (target_area / aspect).sqrt().round() as i64;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as u64) as i64;
            let left = rng.below((width - w + 1) as u64) as i64;
            return CropBox { top, left, height: h, width: w };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0 {
        ((width as f64 / ratio.0).round() as i64, width)
    } else if in_ratio > ratio.1 {
        (height, (height as f64 * ratio.1).round() as i64)
    } else {
        (height, width)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

fn factor(rng: &mut Rng, strength: f64) -> f64 {
    rng.uniform((1.0 - strength).max(0.0), 1.0 + strength)
}

/// Every sample's parameters for one view, sample i's crop drawn inside `sizes[i]`
/// (height, width). Each sample draws the same number of values whatever it ends up applying,
/// so one sample's draws never shift another's.
pub fn sample_view(cfg: &ViewConfig, rng: &mut Rng, sizes: &[(i64, i64)]) -> Vec<SampleParams> {
    sizes
        .iter()
        .map(|&(height, width)| {
            let crop = sample_crop(rng, height, width, cfg.crop_scale, cfg.crop_ratio);
            let flip = rng.bernoulli(cfg.flip_p);
            let apply_jitter = rng.bernoulli(cfg.jitter_p);
            let perm = rng.permutation::<4>();
            let factors = [factor(rng, cfg.brightness), factor(rng, cfg.contrast), factor(rng, cfg.saturation), rng.uniform(-cfg.hue, cfg.hue)];
            let jitter = apply_jitter.then(|| Jitter { order: perm.map(|i| JITTER_OPS[i]), factors });
            let grayscale = rng.bernoulli(cfg.grayscale_p);
            let apply_blur = rng.bernoulli(cfg.blur_p);
            let sigma = rng.uniform(cfg.blur_sigma.0, cfg.blur_sigma.1);
            let solarize = rng.bernoulli(cfg.solarize_p);
            SampleParams { crop, flip, jitter, grayscale, blur_sigma: apply_blur.then_some(sigma), solarize }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_stay_inside_and_respect_scale() {
        let mut rng = Rng::new(3);
        for _ in 0..2000 {
            let c = sample_crop(&mut rng, 40, 60, (0.08, 1.0), (0.75, 4.0 / 3.0));
            assert!(c.top >= 0 && c.left >= 0 && c.top + c.height <= 40 && c.left + c.width <= 60, "{c:?}");
        }
        // A 1x1 image can only be cropped whole.
        assert_eq!(sample_crop(&mut rng, 1, 1, (0.08, 1.0), (0.75, 4.0 / 3.0)), CropBox { top: 0, left: 0, height: 1, width: 1 });
    }
}
