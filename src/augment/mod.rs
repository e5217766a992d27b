//! BYOL's asymmetric augmentations on whole batches, with parameters drawn per sample
//! (paper appendix B). Parameters come from a host RNG; the pixels never leave the device.
pub mod config;
mod cpu_view;
mod hue;
pub mod ops;
pub mod params;
pub mod rng;
mod resample;
mod transpose;

use crate::error::{value_error, Result};
use config::{AugmentConfig, ViewConfig};
use params::{sample_view, JitterOp, SampleParams, JITTER_OPS};
use rng::Rng;
use tch::{Device, Kind, Tensor};

/// Memory order of the images handed to the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Auto,
    Nchw,
    Nhwc,
}

impl Layout {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "NCHW" | "nchw" => Ok(Self::Nchw),
            "NHWC" | "nhwc" => Ok(Self::Nhwc),
            _ => Err(value_error("layout", format!("expected 'auto', 'NCHW' or 'NHWC', got {s:?}"))),
        }
    }
}

pub struct Augment {
    pub config: AugmentConfig,
    pub rng: Rng,
}

/// The images to augment: one batch tensor `[N, C, H, W]` (or NHWC), or a list of images
/// `[C, H, W]` (or HWC) of any sizes, one channel count and one device.
pub enum Images<'a> {
    Batch(&'a Tensor),
    List(&'a [Tensor]),
}

/// The batch indexed NCHW (NHWC is permuted, not copied), as uint8 0-255 or float32 in [0, 1],
/// after the shape, dtype and (with `check`) range checks; `arg` names it in errors.
fn unit_source(images: &Tensor, layout: Layout, check: bool, arg: &str) -> Result<Tensor> {
    let size = images.size();
    if size.len() != 4 {
        return Err(value_error(arg, format!("expected a 4-D batch [N, C, H, W] or [N, H, W, C], got shape {size:?}")));
    }
    let channels_ok = |c: i64| c == 1 || c == 3;
    let nhwc = match layout {
        Layout::Nchw => false,
        Layout::Nhwc => true,
        Layout::Auto => !channels_ok(size[1]) && channels_ok(size[3]),
    };
    let c = if nhwc { size[3] } else { size[1] };
    if !channels_ok(c) {
        return Err(value_error(arg, format!("expected 1 or 3 channels (dim 1 for NCHW or dim 3 for NHWC), got shape {size:?}")));
    }
    if size.iter().any(|&d| d < 1) {
        return Err(value_error(arg, format!("expected a non-empty batch, got shape {size:?}")));
    }
    let x = if nhwc { images.f_permute([0, 3, 1, 2])? } else { images.shallow_clone() };
    match x.kind() {
        Kind::Uint8 => Ok(x),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            let x = x.f_to_kind(Kind::Float)?;
            if check {
                let (lo, hi) = (x.f_min()?.f_double_value(&[])?, x.f_max()?.f_double_value(&[])?);
                if !(lo >= 0.0 && hi <= 1.0) {
                    return Err(value_error(arg, format!("float images must lie in [0, 1] (got min {lo}, max {hi}); pass uint8 0-255 or scale first, or check=False")));
                }
            }
            Ok(x)
        }
        k => Err(value_error(arg, format!("expected uint8 (0-255) or float (0-1) images, got {k:?}"))),
    }
}

/// Each image of a list as a one-image batch from `unit_source`, all with one channel count
/// and on one device.
fn list_source(images: &[Tensor], layout: Layout, check: bool) -> Result<Vec<Tensor>> {
    if images.is_empty() {
        return Err(value_error("images", "expected at least one image, got an empty list"));
    }
    let mut parts: Vec<Tensor> = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let arg = format!("images[{i}]");
        if image.dim() != 3 {
            return Err(value_error(&arg, format!("expected a 3-D image [C, H, W] or [H, W, C], got shape {:?}", image.size())));
        }
        let part = unit_source(&image.f_unsqueeze(0)?, layout, check, &arg)?;
        if let Some(first) = parts.first() {
            if part.size()[1] != first.size()[1] {
                return Err(value_error(&arg, format!("has {} channel(s) but images[0] has {}", part.size()[1], first.size()[1])));
            }
            if part.device() != first.device() {
                return Err(value_error(&arg, format!("is on {:?} but images[0] is on {:?}", part.device(), first.device())));
            }
        }
        parts.push(part);
    }
    Ok(parts)
}

/// Contiguous float NCHW in [0, 1]: uint8 is divided by 255; NHWC is permuted.
pub fn to_unit_nchw(images: &Tensor, layout: Layout, check: bool) -> Result<Tensor> {
    let x = unit_source(images, layout, check, "images")?;
    let x = if x.kind() == Kind::Uint8 { x.f_to_kind(Kind::Float)?.f_div_scalar(255.0)? } else { x };
    Ok(x.f_contiguous()?)
}

/// Host values to a `[len]` float tensor on `device`.
fn factors(values: impl IntoIterator<Item = f64>, device: Device) -> Result<Tensor> {
    let v: Vec<f32> = values.into_iter().map(|x| x as f32).collect();
    crate::shim::upload(&Tensor::from_slice(&v), device)
}

/// Applies `op` to the images at `rows` only, in place. Skips work when no row is selected.
fn on_rows(x: &mut Tensor, rows: &[i64], op: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if rows.len() as i64 == x.size()[0] {
        *x = op(x)?;
        return Ok(());
    }
    let idx = crate::shim::upload(&Tensor::from_slice(rows), x.device())?;
    let out = op(&x.f_index_select(0, &idx)?)?;
    let _ = x.f_index_copy_(0, &idx, &out)?;
    Ok(())
}

fn rows_where(ps: &[SampleParams], pred: impl Fn(&SampleParams) -> bool) -> Vec<i64> {
    ps.iter().enumerate().filter(|(_, p)| pred(p)).map(|(i, _)| i as i64).collect()
}

/// The view's resized crops of the images in `parts` (NCHW-indexed batches, each moved to
/// `device`), one batch of `size` on `device`.
fn crop_on_device(parts: &[Tensor], ps: &[SampleParams], cfg: &ViewConfig, size: (i64, i64), device: Device) -> Result<Tensor> {
    let bicubic = cfg.interpolation == "bicubic";
    let mut crops = Vec::with_capacity(parts.len());
    let mut first = 0;
    for part in parts {
        let x = to_unit_nchw(&part.f_to_device(device)?, Layout::Nchw, false)?;
        let n = x.size()[0] as usize;
        let boxes: Vec<_> = ps[first..first + n].iter().map(|p| p.crop).collect();
        crops.push(ops::resized_crop(&x, &boxes, size, bicubic)?);
        first += n;
    }
    let y = if crops.len() == 1 { crops.pop().expect("one crop") } else { Tensor::f_cat(&crops, 0)? };
    // bicubic overshoots; PIL's uint8 pipeline clamps too
    Ok(if bicubic { y.f_clamp(0.0, 1.0)? } else { y })
}

/// Everything of a view after its resized crop `y` (float NCHW in [0, 1]), as batched ATen ops
/// on `y`'s device: the path for CUDA and other devices (the CPU runs `cpu_view`, the same
/// steps sample by sample).
fn finish_view(mut y: Tensor, ps: &[SampleParams], cfg: &ViewConfig, blur_kernel: i64) -> Result<Tensor> {
    let device = y.device();
    on_rows(&mut y, &rows_where(ps, |p| p.flip), ops::hflip)?;
    // ColorJitter: at position k each selected sample applies the op its permutation puts there.
    for k in 0..4 {
        for op in JITTER_OPS {
            let rows = rows_where(ps, |p| p.jitter.as_ref().is_some_and(|j| j.order[k] == op));
            let f: Vec<f64> = rows.iter().map(|&r| ps[r as usize].jitter.as_ref().map_or(0.0, |j| j.factors[op as usize])).collect();
            on_rows(&mut y, &rows, |s| {
                let factor = factors(f.iter().copied(), device)?;
                match op {
                    JitterOp::Brightness => ops::adjust_brightness(s, &factor),
                    JitterOp::Contrast => ops::adjust_contrast(s, &factor, &factors(f.iter().map(|v| 1.0 - v), device)?),
                    JitterOp::Saturation => ops::adjust_saturation(s, &factor, &factors(f.iter().map(|v| 1.0 - v), device)?),
                    JitterOp::Hue => ops::adjust_hue(s, &factor),
                }
            })?;
        }
    }
    on_rows(&mut y, &rows_where(ps, |p| p.grayscale), ops::grayscale)?;
    let blur_rows = rows_where(ps, |p| p.blur_sigma.is_some());
    let sigmas: Vec<f64> = blur_rows.iter().filter_map(|&r| ps[r as usize].blur_sigma).collect();
    on_rows(&mut y, &blur_rows, |s| ops::gaussian_blur(s, blur_kernel, &factors(sigmas, device)?))?;
    on_rows(&mut y, &rows_where(ps, |p| p.solarize), |s| ops::solarize(s, cfg.solarize_threshold))?;
    Ok(y)
}

impl Augment {
    pub fn new(config: AugmentConfig) -> Result<Self> {
        config.validate()?;
        let rng = Rng::new(config.seed);
        Ok(Self { config, rng })
    }

    /// Draws both views' parameters, sample i's crops inside `sizes[i]`: all of view 1's
    /// samples, then all of view 2's, so equal sizes draw as `sample` does.
    pub fn sample_sizes(&mut self, sizes: &[(i64, i64)]) -> (Vec<SampleParams>, Vec<SampleParams>) {
        let p1 = sample_view(&self.config.view1, &mut self.rng, sizes);
        let p2 = sample_view(&self.config.view2, &mut self.rng, sizes);
        (p1, p2)
    }

    /// Two augmented views of `images` on `device`, each sample with its own parameters and
    /// its crop cut from its own image at full resolution. A batch is moved to `device` first;
    /// a list on the CPU is cropped there and only the crops are moved.
    pub fn views(&mut self, images: Images<'_>, layout: Layout, device: Device) -> Result<(Tensor, Tensor)> {
        let check = self.config.check;
        let parts = match images {
            Images::Batch(x) => vec![unit_source(&x.f_to_device(device)?, layout, check, "images")?],
            Images::List(list) => list_source(list, layout, check)?,
        };
        let sizes: Vec<(i64, i64)> = parts.iter().flat_map(|p| vec![(p.size()[2], p.size()[3]); p.size()[0] as usize]).collect();
        let (mean, std) = self.normalisation(parts[0].size()[1])?;
        // Draw on a copy so that a failure below leaves the RNG where it was.
        let saved = self.rng.clone();
        let (p1, p2) = self.sample_sizes(&sizes);
        let (size, blur_kernel, kind) = (self.config.size, self.config.blur_kernel_size(), self.output_kind());
        let (cfg1, cfg2) = (&self.config.view1, &self.config.view2);
        let out = (|| {
            let plans = [cpu_view::ViewPlan { params: &p1, cfg: cfg1 }, cpu_view::ViewPlan { params: &p2, cfg: cfg2 }];
            let on_host = parts.iter().all(|p| p.device() == Device::Cpu);
            let pipe = |crop_only| cpu_view::Pipeline { size, blur_kernel, mean: &mean, std: &std, crop_only };
            let (v1, v2) = if on_host && device == Device::Cpu {
                cpu_view::views_cpu(&parts, plans, &pipe(false))?
            } else {
                let (c1, c2) = if on_host {
                    let (c1, c2) = cpu_view::views_cpu(&parts, plans, &pipe(true))?;
                    (crate::shim::upload(&c1, device)?, crate::shim::upload(&c2, device)?)
                } else {
                    (crop_on_device(&parts, &p1, cfg1, size, device)?, crop_on_device(&parts, &p2, cfg2, size, device)?)
                };
                let stats = if mean.is_empty() {
                    None
                } else {
                    let t = |v: &[f32]| -> Result<Tensor> { Ok(factors(v.iter().map(|&x| x as f64), device)?.f_view([1, -1, 1, 1])?) };
                    Some((t(&mean)?, t(&std)?))
                };
                let view = |crops: Tensor, ps: &[SampleParams], cfg: &ViewConfig| -> Result<Tensor> {
                    let v = finish_view(crops, ps, cfg, blur_kernel)?;
                    Ok(match &stats {
                        Some((m, s)) => v.f_sub(m)?.f_div(s)?,
                        None => v,
                    })
                };
                (view(c1, &p1, cfg1)?, view(c2, &p2, cfg2)?)
            };
            Ok((v1.f_to_kind(kind)?, v2.f_to_kind(kind)?))
        })();
        if out.is_err() {
            self.rng = saved;
        }
        out
    }

    /// The per-channel mean and std (empty when the pipeline does not normalise), checked
    /// against the images' channel count.
    fn normalisation(&self, channels: i64) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mean, std) = (&self.config.mean, &self.config.std);
        if !mean.is_empty() && mean.len() != 1 && mean.len() as i64 != channels {
            return Err(value_error("mean", format!("has {} values but the images have {channels} channel(s)", mean.len())));
        }
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        Ok((f32s(mean), f32s(std)))
    }

    fn output_kind(&self) -> Kind {
        match self.config.dtype.as_str() {
            "bfloat16" => Kind::BFloat16,
            "float16" => Kind::Half,
            _ => Kind::Float,
        }
    }
}
