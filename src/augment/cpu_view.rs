//! Both views on the CPU, one sample at a time: every op of `crop_on_device` and `finish_view`
//! runs on one image in a buffer that stays in cache (600 KB at 224 px), reading the input
//! images (a batch or a list of any sizes; uint8 or float, NCHW or NHWC) where they lie. The batched ATen ops make about 100 passes over
//! 38 MB intermediates at 224 px, each freshly mapped and page-faulted; this makes one per op
//! over L2-resident data, and spreads samples over threads as they finish.
use super::config::ViewConfig;
use super::hue::shift_pixel;
use super::ops::{blur_taps, LUMA};
use super::params::{JitterOp, SampleParams};
use super::resample::{weighted_rows, CropFilter, CropScratch};
use crate::error::Result;
use crate::parallel::{parallel_items, Ptr};
use tch::{Device, Kind, Tensor};

/// One input image, read in place: `[C, H, W]` indices through its strides (in elements).
#[derive(Clone, Copy)]
struct ImageRef {
    data: *const u8,
    kind: Kind,
    strides: [usize; 3],
}

/// The input images, in order, wherever they lie: the rows of one batch tensor, or the images
/// of a list, each at its own size. Borrows the tensors it points into.
struct Source<'a> {
    images: Vec<ImageRef>,
    _parts: std::marker::PhantomData<&'a Tensor>,
}
unsafe impl Send for Source<'_> {}
unsafe impl Sync for Source<'_> {}

impl<'a> Source<'a> {
    /// `parts`: NCHW-indexed batches (any strides, non-negative), uint8 or fp32, on the CPU.
    fn new(parts: &'a [Tensor]) -> Self {
        let mut images = Vec::new();
        for part in parts {
            let s: Vec<usize> = part.stride().iter().map(|&v| v as usize).collect();
            let bytes = if part.kind() == Kind::Uint8 { 1 } else { 4 };
            let base = part.data_ptr() as *const u8;
            for n in 0..part.size()[0] as usize {
                let data = base.wrapping_add(n * s[0] * bytes);
                images.push(ImageRef { data, kind: part.kind(), strides: [s[1], s[2], s[3]] });
            }
        }
        Self { images, _parts: std::marker::PhantomData }
    }

    /// Pixels `x0..x0 + out.len()` of row `y`, channel `c`, image `n`, as floats in [0, 1].
    #[inline(always)]
    fn read_row(&self, n: usize, c: usize, y: usize, x0: usize, out: &mut [f32]) {
        let ImageRef { data, kind, strides: [sc, sh, sw] } = self.images[n];
        let base = c * sc + y * sh + x0 * sw;
        // Planar rows (stride 1) and interleaved RGB (stride 3, as decoders write HWC) get
        // a constant stride, which the compiler vectorises; any other stride reads generically.
        match (kind, sw) {
            (Kind::Uint8, 1) => read_strided::<u8, 1>(data, base, 1, out),
            (Kind::Uint8, 3) => read_strided::<u8, 3>(data, base, 3, out),
            (Kind::Uint8, _) => read_strided::<u8, 0>(data, base, sw, out),
            (_, 1) => read_strided::<f32, 1>(data, base, 1, out),
            (_, 3) => read_strided::<f32, 3>(data, base, 3, out),
            _ => read_strided::<f32, 0>(data, base, sw, out),
        }
    }
}

/// A pixel type the kernel reads: uint8 0-255 or float 0-1.
trait Pixel: Copy {
    fn unit(self) -> f32;
}

impl Pixel for u8 {
    #[inline(always)]
    fn unit(self) -> f32 {
        self as f32 / 255.0
    }
}

impl Pixel for f32 {
    #[inline(always)]
    fn unit(self) -> f32 {
        self
    }
}

/// `out[x] = data[base + x * stride]` as a unit float; `S` is the stride when known at compile
/// time (0: use `stride`).
#[inline(always)]
fn read_strided<T: Pixel, const S: usize>(data: *const u8, base: usize, stride: usize, out: &mut [f32]) {
    let p = data as *const T;
    let step = if S == 0 { stride } else { S };
    for (x, o) in out.iter_mut().enumerate() {
        *o = unsafe { *p.add(base + x * step) }.unit();
    }
}

/// What one view does to every sample, besides its per-sample parameters.
pub struct ViewPlan<'a> {
    pub params: &'a [SampleParams],
    pub cfg: &'a ViewConfig,
}

/// Everything both views share.
pub struct Pipeline<'a> {
    pub size: (i64, i64),
    pub blur_kernel: i64,
    /// Per channel, or empty for no normalisation.
    pub mean: &'a [f32],
    pub std: &'a [f32],
    /// Stop after the resized crop (the rest runs on another device).
    pub crop_only: bool,
}

/// Per-thread buffers, reused from sample to sample.
#[derive(Default)]
struct Scratch {
    crop: CropScratch,
    plane: Vec<f32>,
    row: Vec<f32>,
}

/// Two float32 NCHW views of the images in `parts` (NCHW-indexed batches of any sizes with one
/// channel count, uint8 or fp32, on the CPU; checked by the caller), one per plan, samples
/// spread over torch's threads.
pub fn views_cpu(parts: &[Tensor], plans: [ViewPlan<'_>; 2], pipe: &Pipeline<'_>) -> Result<(Tensor, Tensor)> {
    debug_assert!(parts.iter().all(|p| p.device() == Device::Cpu && matches!(p.kind(), Kind::Uint8 | Kind::Float)));
    let src = Source::new(parts);
    let (n, c) = (src.images.len(), parts[0].size()[1] as usize);
    let (oh, ow) = (pipe.size.0 as usize, pipe.size.1 as usize);
    let empty = || crate::huge_pages::empty_cpu(&[n as i64, c as i64, pipe.size.0, pipe.size.1], Kind::Float);
    let (v1, v2) = (empty()?, empty()?);
    let dst = [Ptr(v1.data_ptr() as *mut f32), Ptr(v2.data_ptr() as *mut f32)];
    let sample_len = c * oh * ow;
    let isa = Isa::detect();
    parallel_items(2 * n, Scratch::default, |i, scratch| {
        let dst = dst;
        // View 1 and view 2 of a sample are neighbours, so threads finish together.
        let (view, img) = (i % 2, i / 2);
        let out = unsafe { std::slice::from_raw_parts_mut(dst[view].0.add(img * sample_len), sample_len) };
        let plan = &plans[view];
        augment_sample(isa, &src, img, &plan.params[img], plan.cfg, pipe, out, scratch);
    });
    Ok((v1, v2))
}

/// The vector instructions a sample is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }
}

/// One sample of one view, by the widest vector unit the CPU has. Every version runs the same
/// fp32 operations in the same order (Rust never contracts to FMA), so all give the same bits.
#[allow(clippy::too_many_arguments)]
fn augment_sample(isa: Isa, src: &Source<'_>, img: usize, p: &SampleParams, cfg: &ViewConfig, pipe: &Pipeline<'_>, out: &mut [f32], scratch: &mut Scratch) {
    match isa {
        // Safety: `Isa::detect` saw the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { augment_sample_avx512(src, img, p, cfg, pipe, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { augment_sample_avx2(src, img, p, cfg, pipe, out, scratch) },
        _ => augment_sample_inline(src, img, p, cfg, pipe, out, scratch),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn augment_sample_avx512(src: &Source<'_>, img: usize, p: &SampleParams, cfg: &ViewConfig, pipe: &Pipeline<'_>, out: &mut [f32], scratch: &mut Scratch) {
    augment_sample_inline(src, img, p, cfg, pipe, out, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn augment_sample_avx2(src: &Source<'_>, img: usize, p: &SampleParams, cfg: &ViewConfig, pipe: &Pipeline<'_>, out: &mut [f32], scratch: &mut Scratch) {
    augment_sample_inline(src, img, p, cfg, pipe, out, scratch)
}

/// One sample of one view into `out` (`[C, out_h, out_w]`), in `finish_view`'s order. Inlined,
/// with everything it calls, into each vector-width version above.
#[inline(always)]
fn augment_sample_inline(src: &Source<'_>, img: usize, p: &SampleParams, cfg: &ViewConfig, pipe: &Pipeline<'_>, out: &mut [f32], scratch: &mut Scratch) {
    let (oh, ow) = (pipe.size.0 as usize, pipe.size.1 as usize);
    let plane = oh * ow;
    let c = out.len() / plane;
    let bicubic = cfg.interpolation == "bicubic";
    let filter = CropFilter::new(p.crop, pipe.size, bicubic);
    let (top, left) = (p.crop.top as usize, p.crop.left as usize);
    for (ci, dst) in out.chunks_exact_mut(plane).enumerate() {
        filter.resample(|y, row| src.read_row(img, ci, top + y, left, row), &mut scratch.crop, dst);
    }
    if bicubic {
        clamp_unit(out); // bicubic overshoots; PIL's uint8 pipeline clamps too
    }
    if pipe.crop_only {
        return;
    }
    if p.flip {
        out.chunks_exact_mut(ow).for_each(|row| row.reverse());
    }
    if let Some(j) = &p.jitter {
        for op in j.order {
            let f = j.factors[op as usize];
            match op {
                JitterOp::Brightness => out.iter_mut().for_each(|v| *v = (*v * f as f32).clamp(0.0, 1.0)),
                JitterOp::Contrast => {
                    let mean = if c == 3 { luma_mean(out, plane) } else { plain_mean(out) };
                    blend_with(out, f, |_| mean as f32, plane);
                }
                JitterOp::Saturation if c == 3 => {
                    scratch.plane.resize(plane, 0.0);
                    luma_into(out, &mut scratch.plane);
                    let gray = &scratch.plane;
                    blend_with(out, f, |k| gray[k], plane);
                }
                JitterOp::Hue if c == 3 => {
                    let (r, rest) = out.split_at_mut(plane);
                    let (g, b) = rest.split_at_mut(plane);
                    let shift = f as f32;
                    for k in 0..plane {
                        (r[k], g[k], b[k]) = shift_pixel(r[k], g[k], b[k], shift);
                    }
                }
                JitterOp::Saturation | JitterOp::Hue => {} // no-ops on one channel
            }
        }
    }
    if p.grayscale && c == 3 {
        scratch.plane.resize(plane, 0.0);
        luma_into(out, &mut scratch.plane);
        out.chunks_exact_mut(plane).for_each(|ch| ch.copy_from_slice(&scratch.plane));
    }
    if let Some(sigma) = p.blur_sigma {
        let taps = blur_taps(pipe.blur_kernel as usize, sigma as f32);
        for ch in out.chunks_exact_mut(plane) {
            blur_plane(ch, oh, ow, &taps, scratch);
        }
    }
    if p.solarize {
        let t = cfg.solarize_threshold as f32;
        out.iter_mut().for_each(|v| *v = if *v >= t { 1.0 - *v } else { *v });
    }
    if !pipe.mean.is_empty() {
        for (ci, ch) in out.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (pipe.mean[ci.min(pipe.mean.len() - 1)], pipe.std[ci.min(pipe.std.len() - 1)]);
            ch.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }
}

#[inline(always)]
fn clamp_unit(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
}

/// torchvision's luma of one pixel, summed in its order.
#[inline(always)]
fn luma(r: f32, g: f32, b: f32) -> f32 {
    r * LUMA[0] as f32 + g * LUMA[1] as f32 + b * LUMA[2] as f32
}

/// The luma plane of a `[3, plane]` sample.
#[inline(always)]
fn luma_into(x: &[f32], gray: &mut [f32]) {
    let (r, rest) = x.split_at(gray.len());
    let (g, b) = rest.split_at(gray.len());
    for (k, o) in gray.iter_mut().enumerate() {
        *o = luma(r[k], g[k], b[k]);
    }
}

#[inline(always)]
fn luma_mean(x: &[f32], plane: usize) -> f64 {
    let (r, rest) = x.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let sum: f64 = (0..plane).map(|k| luma(r[k], g[k], b[k]) as f64).sum();
    sum / plane as f64
}

#[inline(always)]
fn plain_mean(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64
}

/// `clamp(ratio * x + (1 - ratio) * other, 0, 1)` per channel, `1 - ratio` taken in f64 as
/// torchvision's `_blend` does.
#[inline(always)]
fn blend_with(x: &mut [f32], ratio: f64, other: impl Fn(usize) -> f32, plane: usize) {
    let (a, b) = (ratio as f32, (1.0 - ratio) as f32);
    for ch in x.chunks_exact_mut(plane) {
        for (k, v) in ch.iter_mut().enumerate() {
            *v = (*v * a + other(k) * b).clamp(0.0, 1.0);
        }
    }
}

/// Separable Gaussian blur of one `[h, w]` plane in place, reflect padding, vertical pass first
/// (as `ops::gaussian_blur`). Both passes run along rows, so they vectorise.
#[inline(always)]
fn blur_plane(x: &mut [f32], h: usize, w: usize, taps: &[f32], scratch: &mut Scratch) {
    let half = taps.len() / 2;
    // Taps below the smallest normal float are skipped: their products are below 1.2e-38 and
    // vanish in any sum above 1e-30, and denormals cost a microcode assist each.
    let lo = taps.iter().position(|&t| t >= f32::MIN_POSITIVE).unwrap_or(half);
    let hi = taps.len() - lo;
    let kept = &taps[lo..hi];
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        (if i < 0 { -i } else if i >= n { 2 * n - 2 - i } else { i }) as usize
    };
    scratch.plane.resize(h * w, 0.0);
    let vertical = &mut scratch.plane;
    for y in 0..h {
        let src = |k: usize| &x[reflect((y + lo + k) as isize - half as isize, h) * w..][..w];
        weighted_rows(&mut vertical[y * w..][..w], kept, src);
    }
    let padded = &mut scratch.row;
    padded.resize(w + 2 * half, 0.0);
    for y in 0..h {
        let row = &vertical[y * w..][..w];
        padded[half..half + w].copy_from_slice(row);
        for i in 0..half {
            padded[half - 1 - i] = row[i + 1];
            padded[half + w + i] = row[w - 2 - i];
        }
        let padded = &*padded;
        weighted_rows(&mut x[y * w..][..w], kept, |k| &padded[lo + k..][..w]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::params::sample_view;
    use crate::augment::rng::Rng;

    /// The three compiled versions give the same bits on every stage of both paper views.
    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let images = [Tensor::randint(256, [6, 3, 40, 36], (Kind::Uint8, Device::Cpu))];
        let src = Source::new(&images);
        let mut rng = Rng::new(7);
        let view1 = ViewConfig { jitter_p: 1.0, grayscale_p: 0.3, ..ViewConfig::default() };
        let view2 = ViewConfig { solarize_p: 0.5, blur_p: 0.5, ..ViewConfig::byol_view2() };
        let (mean, std) = ([0.4f32, 0.5, 0.6], [0.2f32, 0.25, 0.3]);
        let pipe = Pipeline { size: (24, 20), blur_kernel: 5, mean: &mean, std: &std, crop_only: false };
        let mut isas = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        for cfg in [&view1, &view2] {
            let params = sample_view(cfg, &mut rng, &[(40, 36); 6]);
            for (img, p) in params.iter().enumerate() {
                let run = |isa| {
                    let mut out = vec![0.0f32; 3 * 24 * 20];
                    augment_sample(isa, &src, img, p, cfg, &pipe, &mut out, &mut Scratch::default());
                    out
                };
                let reference = run(Isa::Baseline);
                assert!(reference.iter().all(|v| v.is_finite()));
                for &isa in &isas[1..] {
                    let got = run(isa);
                    let same = got.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} differs from the baseline on sample {img} ({p:?})");
                }
            }
        }
    }
}
