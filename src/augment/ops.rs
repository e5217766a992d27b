//! Batched image ops with one parameter per sample, on float NCHW images in [0, 1] on any
//! device. Each reproduces `torchvision.transforms.v2.functional` for the same parameter;
//! factors are `[N]` float tensors on the images' device.
use super::params::CropBox;
use crate::error::{value_error, Result};
use tch::{Kind, Tensor};

/// torchvision's `rgb_to_grayscale` weights (ITU-R 601-2 luma).
pub(super) const LUMA: [f64; 3] = [0.2989, 0.587, 0.114];

fn per_sample(f: &Tensor) -> Result<Tensor> {
    Ok(f.f_view([-1, 1, 1, 1])?)
}

/// Single-channel luma `[N, 1, H, W]` of RGB images.
pub fn luma(x: &Tensor) -> Result<Tensor> {
    let c = x.f_unbind(1)?;
    Ok((c[0].f_mul_scalar(LUMA[0])? + c[1].f_mul_scalar(LUMA[1])? + c[2].f_mul_scalar(LUMA[2])?).f_unsqueeze(1)?)
}

/// `ratio * a + (1 - ratio) * b`, clamped to [0, 1]; `one_minus` is `1 - ratio` computed in f64
/// on the host, as torchvision's `_blend` does.
fn blend(a: &Tensor, b: &Tensor, ratio: &Tensor, one_minus: &Tensor) -> Result<Tensor> {
    Ok((a.f_mul(&per_sample(ratio)?)? + b.f_mul(&per_sample(one_minus)?)?).f_clamp(0.0, 1.0)?)
}

/// How `resized_crop` resamples; all three give the same result to float rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropMethod {
    /// CUDA: two batched matrix products for the whole batch, no kernel per image.
    Matmul,
    /// CPU: byol-rs's own separable kernel (`resample.rs`), image by image.
    Cpu,
    /// ATen's `_upsample_*2d_aa` once per image: the reference, and any other device.
    Aten,
}

impl CropMethod {
    pub fn for_device(device: tch::Device) -> Self {
        match device {
            tch::Device::Cuda(_) => Self::Matmul,
            tch::Device::Cpu => Self::Cpu,
            _ => Self::Aten,
        }
    }
}

/// Crops `boxes[n]` out of image n and resizes it to `size` (antialiased, align_corners=False),
/// by the method suited to the images' device.
pub fn resized_crop(x: &Tensor, boxes: &[CropBox], size: (i64, i64), bicubic: bool) -> Result<Tensor> {
    resized_crop_with(CropMethod::for_device(x.device()), x, boxes, size, bicubic)
}

pub fn resized_crop_with(method: CropMethod, x: &Tensor, boxes: &[CropBox], size: (i64, i64), bicubic: bool) -> Result<Tensor> {
    match method {
        CropMethod::Matmul => resized_crop_batched(x, boxes, size, bicubic),
        CropMethod::Cpu if x.device() == tch::Device::Cpu => {
            check_boxes(x, boxes)?;
            super::resample::resized_crop_cpu(&x.f_to_kind(Kind::Float)?.f_contiguous()?, boxes, size, bicubic)
        }
        CropMethod::Cpu => Err(value_error("method", format!("'cpu' runs on CPU tensors, got {:?}", x.device()))),
        CropMethod::Aten => resized_crop_per_image(x, boxes, size, bicubic),
    }
}

/// One ATen resampling kernel per image.
pub fn resized_crop_per_image(x: &Tensor, boxes: &[CropBox], size: (i64, i64), bicubic: bool) -> Result<Tensor> {
    check_boxes(x, boxes)?;
    let [n, c, ..] = x.size()[..] else { unreachable!("checked 4-D") };
    let out = Tensor::f_empty([n, c, size.0, size.1], (x.kind(), x.device()))?;
    for (i, b) in boxes.iter().enumerate() {
        let crop = x.f_narrow(0, i as i64, 1)?.f_narrow(2, b.top, b.height)?.f_narrow(3, b.left, b.width)?;
        let mut dst = out.f_narrow(0, i as i64, 1)?;
        if (b.height, b.width) == size {
            dst.f_copy_(&crop)?; // torchvision returns the crop unresized
        } else if bicubic {
            let _ = crop.f_internal_upsample_bicubic2d_aa_out(&dst, [size.0, size.1], false, None, None)?;
        } else {
            let _ = crop.f_internal_upsample_bilinear2d_aa_out(&dst, [size.0, size.1], false, None, None)?;
        }
    }
    Ok(out)
}

fn check_boxes(x: &Tensor, boxes: &[CropBox]) -> Result<()> {
    let [n, _, height, width] = x.size()[..] else { unreachable!("checked 4-D") };
    if boxes.len() as i64 != n {
        return Err(value_error("boxes", format!("expected {n} boxes, one per image, got {}", boxes.len())));
    }
    for (i, b) in boxes.iter().enumerate() {
        if b.top < 0 || b.left < 0 || b.height < 1 || b.width < 1 || b.top + b.height > height || b.left + b.width > width {
            return Err(value_error("boxes", format!("box {i} {b:?} is not inside a {height}x{width} image")));
        }
    }
    Ok(())
}

/// `resized_crop` for the whole batch at once: `out[n] = Wy[n] @ x[n] @ Wx[n]^T`, where row i
/// of `Wy[n]` holds the antialiased filter taps of output row i over the image's rows (zero
/// outside the crop). The taps are those of ATen's `_upsample_*2d_aa` kernels (PIL's), so the
/// result matches the per-image path up to float rounding. No per-image kernel launches.
pub fn resized_crop_batched(x: &Tensor, boxes: &[CropBox], size: (i64, i64), bicubic: bool) -> Result<Tensor> {
    check_boxes(x, boxes)?;
    let [_, _, height, width] = x.size()[..] else { unreachable!("checked 4-D") };
    // One upload: rows top, height, left, width.
    let fields: [fn(&CropBox) -> i64; 4] = [|b| b.top, |b| b.height, |b| b.left, |b| b.width];
    let columns: Vec<f32> = fields.iter().flat_map(|f| boxes.iter().map(move |b| f(b) as f32)).collect();
    let c = crate::shim::upload(&Tensor::from_slice(&columns), x.device())?.f_view([4, -1])?;
    let wy = filter_taps(&c.get(0), &c.get(1), height, size.0, bicubic)?;
    let wx = filter_taps(&c.get(2), &c.get(3), width, size.1, bicubic)?;
    let x = x.f_to_kind(Kind::Float)?;
    let rows = wy.f_unsqueeze(1)?.f_matmul(&x)?; // [N, C, out_h, W]
    Ok(rows.f_matmul(&wx.f_transpose(1, 2)?.f_unsqueeze(1)?)?)
}

/// `[N, out, in_size]`: for each image, the normalised taps of every output pixel over the
/// input axis, for a crop starting at `start[n]` and `len[n]` long. Follows ATen's
/// `_compute_indices_min_size_weights_aa`: centre `scale * (i + 0.5)`, support widened by the
/// scale when downsampling, taps inside `[trunc(centre - support + 0.5), trunc(centre +
/// support + 0.5))` clipped to the crop, then divided by their sum.
fn filter_taps(start: &Tensor, len: &Tensor, in_size: i64, out: i64, bicubic: bool) -> Result<Tensor> {
    let opts = (Kind::Float, start.device());
    let scale = len.f_div_scalar(out as f64)?.f_view([-1, 1, 1])?; // [N, 1, 1]
    let down = scale.f_ge(1.0)?;
    let half_taps = if bicubic { 2.0 } else { 1.0 };
    let support = scale.f_where_self(&down, &scale.f_ones_like()?)?.f_mul_scalar(half_taps)?;
    let invscale = scale.f_reciprocal()?.f_where_self(&down, &scale.f_ones_like()?)?;
    let centre = Tensor::f_arange(out, opts)?.f_add_scalar(0.5)?.f_view([1, -1, 1])?.f_mul(&scale)?; // [N, out, 1]
    let j = Tensor::f_arange(in_size, opts)?.f_view([1, 1, -1])?.f_sub(&start.f_view([-1, 1, 1])?)?; // [N, 1, in]
    let lo = centre.f_sub(&support)?.f_add_scalar(0.5)?.f_trunc()?.f_clamp_min(0.0)?;
    let hi = centre.f_add(&support)?.f_add_scalar(0.5)?.f_trunc()?.f_minimum(&len.f_view([-1, 1, 1])?)?;
    let inside = j.f_ge_tensor(&lo)?.f_logical_and(&j.f_lt_tensor(&hi)?)?;
    let t = j.f_sub(&centre)?.f_add_scalar(0.5)?.f_mul(&invscale)?.f_abs()?;
    let w = if bicubic {
        // Keys' cubic with a = -0.5, as PIL and ATen's antialiased bicubic use.
        let a = -0.5;
        let near = t.f_mul_scalar(a + 2.0)?.f_sub_scalar(a + 3.0)?.f_mul(&t)?.f_mul(&t)?.f_add_scalar(1.0)?;
        let far = t.f_sub_scalar(5.0)?.f_mul(&t)?.f_add_scalar(8.0)?.f_mul(&t)?.f_sub_scalar(4.0)?.f_mul_scalar(a)?;
        let zero = t.f_zeros_like()?;
        near.f_where_self(&t.f_lt(1.0)?, &far.f_where_self(&t.f_lt(2.0)?, &zero)?)?
    } else {
        t.f_neg()?.f_add_scalar(1.0)?.f_clamp_min(0.0)?
    };
    let w = w.f_mul(&inside)?;
    Ok(w.f_div(&w.f_sum_dim_intlist([2i64].as_slice(), true, Kind::Float)?)?)
}

pub fn hflip(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_flip([3])?)
}

pub fn adjust_brightness(x: &Tensor, factor: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul(&per_sample(factor)?)?.f_clamp(0.0, 1.0)?)
}

/// Blends each image with the mean of its luma (of itself when single-channel).
pub fn adjust_contrast(x: &Tensor, factor: &Tensor, one_minus: &Tensor) -> Result<Tensor> {
    let gray = if x.size()[1] == 3 { luma(x)? } else { x.shallow_clone() };
    let mean = gray.f_mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float)?;
    blend(x, &mean, factor, one_minus)
}

/// Blends each image with its luma; a no-op on single-channel images.
pub fn adjust_saturation(x: &Tensor, factor: &Tensor, one_minus: &Tensor) -> Result<Tensor> {
    if x.size()[1] != 3 {
        return Ok(x.shallow_clone());
    }
    blend(x, &luma(x)?, factor, one_minus)
}

/// Shifts hue in HSV by `shift[n]` (in turns, within [-0.5, 0.5]); a no-op on single-channel images.
pub fn adjust_hue(x: &Tensor, shift: &Tensor) -> Result<Tensor> {
    if x.size()[1] != 3 {
        return Ok(x.shallow_clone());
    }
    if x.device() == tch::Device::Cpu && x.kind() == Kind::Float {
        let shift = Vec::<f32>::try_from(shift.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?)?;
        return super::hue::adjust_hue_cpu(&x.f_contiguous()?, &shift);
    }
    let hsv = rgb_to_hsv(x)?;
    let hsv = hsv.f_unbind(1)?;
    let h = hsv[0].f_add(&shift.f_view([-1, 1, 1])?)?.f_remainder(1.0)?;
    hsv_to_rgb(&h, &hsv[1], &hsv[2])
}

/// torchvision's `_rgb_to_hsv` (after Pillow), channel-wise on `[N, 3, H, W]`.
fn rgb_to_hsv(x: &Tensor) -> Result<Tensor> {
    let rgb = x.f_unbind(1)?;
    let (r, g) = (&rgb[0], &rgb[1]);
    let maxc = x.f_amax([1i64].as_slice(), false)?;
    let minc = x.f_amin([1i64].as_slice(), false)?;
    let eqc = maxc.f_eq_tensor(&minc)?;
    let range = maxc.f_sub(&minc)?;
    let ones = maxc.f_ones_like()?;
    let s = range.f_div(&ones.f_where_self(&eqc, &maxc)?)?;
    let divisor = ones.f_where_self(&eqc, &range)?.f_unsqueeze(1)?;
    let rgbc = maxc.f_unsqueeze(1)?.f_sub(x)?.f_div(&divisor)?;
    let c = rgbc.f_unbind(1)?;
    let (rc, gc, bc) = (&c[0], &c[1], &c[2]);
    let maxc_neq_r = maxc.f_ne_tensor(r)?;
    let maxc_eq_g = maxc.f_eq_tensor(g)?;
    let hg = (rc + 2.0 - bc).f_mul(&maxc_eq_g.f_logical_and(&maxc_neq_r)?)?;
    let hr = (bc - gc).f_mul(&maxc_neq_r.f_logical_not()?)?;
    let hb = (gc + 4.0 - rc).f_mul(&maxc_neq_r.f_logical_and(&maxc_eq_g.f_logical_not()?)?)?;
    let h = (hr + hg + hb).f_mul_scalar(1.0 / 6.0)?.f_add_scalar(1.0)?.f_fmod(1.0)?;
    Ok(Tensor::f_stack(&[h, s, maxc], 1)?)
}

/// torchvision's `_hsv_to_rgb`: the sextant picks each output channel from (v, p, q, t).
fn hsv_to_rgb(h: &Tensor, s: &Tensor, v: &Tensor) -> Result<Tensor> {
    let h6 = h.f_mul_scalar(6.0)?;
    let i = h6.f_floor()?;
    let f = h6.f_sub(&i)?;
    let i = i.f_to_kind(Kind::Int64)?.f_remainder(6)?;
    let sxf = s.f_mul(&f)?;
    let one_minus_s = s.f_neg()?.f_add_scalar(1.0)?;
    let q = sxf.f_neg()?.f_add_scalar(1.0)?.f_mul(v)?.f_clamp(0.0, 1.0)?;
    let t = sxf.f_add(&one_minus_s)?.f_mul(v)?.f_clamp(0.0, 1.0)?;
    let p = one_minus_s.f_mul(v)?.f_clamp(0.0, 1.0)?;
    let vpqt = Tensor::f_stack(&[v.shallow_clone(), p, q, t], 1)?;
    let select = Tensor::from_slice(&[0i64, 2, 1, 1, 3, 0, 3, 0, 0, 2, 1, 1, 1, 1, 3, 0, 0, 2]).f_view([3, 6])?;
    let select = crate::shim::upload(&select, h.device())?;
    // select[:, i] is [3, N, H, W]; move the channel axis to 1.
    let idx = select.f_index_select(1, &i.f_flatten(0, -1)?)?.f_view([3, i.size()[0], i.size()[1], i.size()[2]])?.f_permute([1, 0, 2, 3])?;
    Ok(vpqt.f_gather(1, &idx, false)?)
}

/// Luma replicated to three channels; a no-op on single-channel images.
pub fn grayscale(x: &Tensor) -> Result<Tensor> {
    if x.size()[1] != 3 {
        return Ok(x.shallow_clone());
    }
    Ok(luma(x)?.f_expand([-1, 3, -1, -1], false)?.f_contiguous()?)
}

/// Gaussian blur with a `kernel`-tap kernel and one sigma per image, reflect padding, as
/// torchvision's `gaussian_blur`, done as two 1-D grouped convolutions.
pub fn gaussian_blur(x: &Tensor, kernel: i64, sigma: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.size()[..] else { unreachable!("checked 4-D") };
    let half = kernel / 2;
    if half >= h || half >= w {
        return Err(value_error("blur_kernel", format!("kernel {kernel} is too large for {h}x{w} images (reflect padding needs kernel/2 < side)")));
    }
    let lim = blur_extent(kernel);
    let taps = Tensor::f_linspace(-lim, lim, kernel, (Kind::Float, x.device()))?;
    let k1 = taps.f_view([1, -1])?.f_div(&sigma.f_view([-1, 1])?)?.f_square()?.f_neg()?.f_softmax(1, Kind::Float)?;
    let k1 = k1.f_repeat_interleave_self_int(c, 0, None)?; // [N*C, K]
    let padded = x.f_reshape([1, n * c, h, w])?.f_pad([half, half, half, half], "reflect", None)?;
    let vertical = padded.f_conv2d(&k1.f_view([n * c, 1, kernel, 1])?, None::<Tensor>, [1, 1], [0, 0], [1, 1], n * c)?;
    let both = vertical.f_conv2d(&k1.f_view([n * c, 1, 1, kernel])?, None::<Tensor>, [1, 1], [0, 0], [1, 1], n * c)?;
    Ok(both.f_view([n, c, h, w])?)
}

/// torchvision's Gaussian taps run over [-lim, lim] in units of sigma.
fn blur_extent(kernel: i64) -> f64 {
    (kernel - 1) as f64 / (2.0 * std::f64::consts::SQRT_2)
}

/// The `kernel` normalised 1-D taps `gaussian_blur` uses for `sigma`, on the host: the same
/// fp32 linspace and softmax, for `cpu_view`.
pub(super) fn blur_taps(kernel: usize, sigma: f32) -> Vec<f32> {
    let lim = blur_extent(kernel as i64);
    let step = if kernel > 1 { 2.0 * lim / (kernel - 1) as f64 } else { 0.0 };
    // ATen's linspace fills the first half from the start and the rest from the end.
    let t = |i: usize| if i < kernel / 2 { -lim + step * i as f64 } else { lim - step * (kernel - 1 - i) as f64 };
    let logits: Vec<f32> = (0..kernel).map(|i| -(t(i) as f32 / sigma).powi(2)).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let total: f32 = e.iter().sum();
    e.iter().map(|&v| v / total).collect()
}

pub fn solarize(x: &Tensor, threshold: f64) -> Result<Tensor> {
    Ok(x.f_neg()?.f_add_scalar(1.0)?.f_where_self(&x.f_ge(threshold)?, x)?)
}
