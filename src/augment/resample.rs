//! Antialiased resized crop on the CPU, image by image but without ATen's per-call overhead
//! (about 22 us per 32 px image, most of a 28-32 px batch's crop time). It computes the
//! separable filter of ATen's `_upsample_{bilinear,bicubic}2d_aa` (PIL's): taps and their
//! normalisation in fp32 as ATen does, the horizontal pass over the crop's rows, then the
//! vertical pass, each sum in tap order. Agrees with the ATen path to float rounding.
use super::params::CropBox;
use super::transpose::transpose;
use crate::error::Result;
use crate::parallel::{parallel_rows, Ptr};
use tch::{Device, Kind, Tensor};

/// For each output pixel of one axis: its first input index and its normalised taps.
struct Taps {
    first: Vec<usize>,
    count: Vec<usize>,
    /// `weights[o * width..][..count[o]]`.
    weights: Vec<f32>,
    width: usize,
}

fn bilinear(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Keys' cubic with a = -0.5, as ATen's antialiased bicubic and PIL use.
fn bicubic(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// ATen's `_compute_indices_min_size_weights_aa` for every output index.
fn taps(input: usize, output: usize, cubic: bool) -> Taps {
    let scale = input as f32 / output as f32;
    let half = if cubic { 2.0 } else { 1.0 };
    let support = if scale >= 1.0 { half * scale } else { half };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let width = support.ceil() as usize * 2 + 1;
    let filter = if cubic { bicubic } else { bilinear };
    let mut t = Taps { first: vec![0; output], count: vec![0; output], weights: vec![0.0; output * width], width };
    for o in 0..output {
        let centre = scale * (o as f32 + 0.5);
        let lo = ((centre - support + 0.5) as i64).max(0) as usize;
        let hi = ((centre + support + 0.5) as i64).min(input as i64) as usize;
        let w = &mut t.weights[o * width..][..hi - lo];
        let mut total = 0.0f32;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = filter(((j + lo) as f32 - centre + 0.5) * invscale);
            total += *wj;
        }
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        (t.first[o], t.count[o]) = (lo, hi - lo);
    }
    t
}

/// `x`: contiguous fp32 `[N, C, H, W]` on the CPU; boxes already checked to lie inside it.
pub fn resized_crop_cpu(x: &Tensor, boxes: &[CropBox], size: (i64, i64), cubic: bool) -> Result<Tensor> {
    debug_assert!(x.device() == Device::Cpu && x.kind() == Kind::Float && x.is_contiguous());
    let [n, c, h, w] = x.size()[..] else { unreachable!("checked 4-D") };
    let (c, h, w) = (c as usize, h as usize, w as usize);
    let (oh, ow) = (size.0 as usize, size.1 as usize);
    let out = Tensor::f_empty([n, c as i64, size.0, size.1], (Kind::Float, Device::Cpu))?;
    let (src, dst) = (Ptr(x.data_ptr() as *mut f32), Ptr(out.data_ptr() as *mut f32));
    parallel_rows(n as usize, c * oh * ow, |start, rows| {
        let (src, dst) = (src, dst);
        let mut scratch = CropScratch::default();
        for img in start..start + rows {
            let b = boxes[img];
            let filter = CropFilter::new(b, size, cubic);
            for ci in 0..c {
                let plane = unsafe { std::slice::from_raw_parts(src.0.add((img * c + ci) * h * w), h * w) };
                let output = unsafe { std::slice::from_raw_parts_mut(dst.0.add((img * c + ci) * oh * ow), oh * ow) };
                let (top, left, cw) = (b.top as usize, b.left as usize, b.width as usize);
                filter.resample(|y, row| row.copy_from_slice(&plane[(top + y) * w + left..][..cw]), &mut scratch, output);
            }
        }
    });
    Ok(out)
}

/// The separable filter of one crop box: horizontal taps over its width, vertical over its height.
pub(super) struct CropFilter {
    tx: Taps,
    ty: Taps,
    height: usize,
    width: usize,
}

/// Per-thread buffers for `CropFilter::resample`, reused from image to image.
#[derive(Default)]
pub(super) struct CropScratch {
    /// `[LANES][width]`: crop rows as read.
    row: Vec<f32>,
    /// `[width][LANES]`: the same rows, transposed.
    tile: Vec<f32>,
    /// `[out_w][LANES]`: the horizontal sums of one block of rows.
    sums: Vec<f32>,
    rows: Vec<f32>,
}

/// Crop rows filtered together by the horizontal pass: one AVX-512 vector of fp32.
const LANES: usize = 16;

impl CropFilter {
    pub(super) fn new(b: CropBox, size: (i64, i64), cubic: bool) -> Self {
        let (height, width) = (b.height as usize, b.width as usize);
        Self { tx: taps(width, size.1 as usize, cubic), ty: taps(height, size.0 as usize, cubic), height, width }
    }

    /// One channel: `read_row(y, row)` fills `row` with the crop's row `y` (`width` values);
    /// `output` is `[out_h, out_w]`.
    #[inline(always)]
    pub(super) fn resample(&self, mut read_row: impl FnMut(usize, &mut [f32]), scratch: &mut CropScratch, output: &mut [f32]) {
        let (ch, cw) = (self.height, self.width);
        let (oh, ow) = (self.ty.first.len(), self.tx.first.len());
        let (tx, ty) = (&self.tx, &self.ty);
        scratch.rows.resize(ch * ow, 0.0);
        if cw == ow {
            // The width stays: no horizontal pass, as in ATen.
            for y in 0..ch {
                read_row(y, &mut scratch.rows[y * ow..][..ow]);
            }
        } else {
            // Horizontal pass, LANES crop rows at a time: the rows are transposed into `tile`
            // (`[cw][LANES]`), so each output column sums its taps over whole vectors of rows.
            // Both transposes go in 8 x 8 register blocks (transpose.rs): element by element they
            // were a fifth of the crop's time.
            scratch.row.resize(LANES * cw, 0.0);
            scratch.tile.resize(cw * LANES, 0.0);
            scratch.sums.resize(ow * LANES, 0.0);
            for y0 in (0..ch).step_by(LANES) {
                let here = LANES.min(ch - y0);
                // Rows past `here` hold stale values; their sums are never stored.
                for r in 0..here {
                    read_row(y0 + r, &mut scratch.row[r * cw..][..cw]);
                }
                transpose(&scratch.row, cw, &mut scratch.tile, LANES, cw, LANES);
                let tile = &scratch.tile;
                for (o, sums) in scratch.sums.chunks_exact_mut(LANES).enumerate() {
                    let wts = &tx.weights[o * tx.width..][..tx.count[o]];
                    sums.copy_from_slice(&weighted_block::<LANES>(wts, |k| tile[(tx.first[o] + k) * LANES..][..LANES].try_into().expect("LANES values")));
                }
                transpose(&scratch.sums, LANES, &mut scratch.rows[y0 * ow..], ow, here, ow);
            }
        }
        // Vertical pass.
        let rows = &scratch.rows;
        if ch == oh {
            output.copy_from_slice(&rows[..oh * ow]);
            return;
        }
        for o in 0..oh {
            let wts = &ty.weights[o * ty.width..][..ty.count[o]];
            let first = ty.first[o];
            weighted_rows(&mut output[o * ow..][..ow], wts, |k| &rows[(first + k) * ow..][..ow]);
        }
    }
}

/// `out[x] = sum_k taps[k] * row(k)[x]`, each sum in tap order from the first, a block of
/// outputs at a time so that the sums stay in vector registers. The core of every separable
/// filter pass here.
#[inline(always)]
pub(super) fn weighted_rows<'a>(out: &mut [f32], taps: &[f32], row: impl Fn(usize) -> &'a [f32]) {
    const BLOCK: usize = 32;
    let n = out.len();
    let mut x0 = 0;
    while x0 + BLOCK <= n {
        let block = |k: usize| -> &[f32; BLOCK] { row(k)[x0..x0 + BLOCK].try_into().expect("BLOCK values") };
        out[x0..x0 + BLOCK].copy_from_slice(&weighted_block(taps, block));
        x0 += BLOCK;
    }
    for (x, o) in out.iter_mut().enumerate().skip(x0) {
        let mut acc = row(0)[x] * taps[0];
        for (k, &t) in taps.iter().enumerate().skip(1) {
            acc += row(k)[x] * t;
        }
        *o = acc;
    }
}

/// `sum_k taps[k] * lanes(k)` for L lanes at once, in tap order from the first: a fixed size,
/// so the sums stay in vector registers.
#[inline(always)]
fn weighted_block<'a, const L: usize>(taps: &[f32], lanes: impl Fn(usize) -> &'a [f32; L]) -> [f32; L] {
    let mut acc = [0.0f32; L];
    let first = lanes(0);
    for l in 0..L {
        acc[l] = first[l] * taps[0];
    }
    for (k, &t) in taps.iter().enumerate().skip(1) {
        let v = lanes(k);
        for l in 0..L {
            acc[l] += v[l] * t;
        }
    }
    acc
}
