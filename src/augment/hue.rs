//! Hue shift on CPU in one pass per pixel: torchvision's `_rgb_to_hsv`, the shift and
//! `_hsv_to_rgb`, in the same fp32 operation order, so results equal the ATen version
//! (`ops::adjust_hue`), which makes about 25 passes over the batch.
use crate::error::Result;
use crate::parallel::{parallel_rows, Ptr};
use tch::{Device, Kind, Tensor};

/// One pixel, branch-free so that a loop over pixels vectorises: every `if` is a select.
#[inline(always)]
pub(super) fn shift_pixel(r: f32, g: f32, b: f32, shift: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let range = maxc - minc;
    let s = range / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { range };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let (neq_r, eq_g) = (maxc != r, maxc == g);
    let hg = if eq_g && neq_r { (rc + 2.0) - bc } else { 0.0 };
    let hr = if !neq_r { bc - gc } else { 0.0 };
    let hb = if neq_r && !eq_g { (gc + 4.0) - rc } else { 0.0 };
    let h = ((hr + hg) + hb) * (1.0f64 / 6.0) as f32 + 1.0;
    // fmod(h, 1): h lies in [5/6, 11/6] here, where h - floor(h) is exact, as fmod is.
    let h = h - h.floor();
    let h = h + shift;
    let h = h - h.floor(); // remainder(h, 1)
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let i = if i >= 6.0 { i - 6.0 } else { i }; // h6 may round up to 6
    let v = maxc;
    let sxf = s * f;
    let one_minus_s = 1.0 - s;
    let q = ((1.0 - sxf) * v).clamp(0.0, 1.0);
    let t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0);
    let p = (one_minus_s * v).clamp(0.0, 1.0);
    // The sextant i picks (r, g, b) from (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q).
    let pick = |c: [f32; 6]| {
        let mut out = c[5];
        for k in (0..5).rev() {
            out = if i == k as f32 { c[k] } else { out };
        }
        out
    };
    (pick([v, q, p, p, t, v]), pick([t, v, v, q, p, p]), pick([p, p, t, v, v, q]))
}

/// `x`: contiguous fp32 `[N, 3, H, W]` on the CPU; `shift[n]` in turns.
pub fn adjust_hue_cpu(x: &Tensor, shift: &[f32]) -> Result<Tensor> {
    debug_assert!(x.device() == Device::Cpu && x.kind() == Kind::Float && x.is_contiguous());
    let [n, _, h, w] = x.size()[..] else { unreachable!("checked 4-D") };
    let plane = (h * w) as usize;
    let out = x.f_empty_like()?;
    let (src, dst) = (Ptr(x.data_ptr() as *mut f32), Ptr(out.data_ptr() as *mut f32));
    parallel_rows(n as usize, 3 * plane, |start, rows| {
        let (src, dst) = (src, dst); // capture the Send wrappers, not their raw fields
        for img in start..start + rows {
            let base = img * 3 * plane;
            let input = unsafe { std::slice::from_raw_parts(src.0.add(base), 3 * plane) };
            let output = unsafe { std::slice::from_raw_parts_mut(dst.0.add(base), 3 * plane) };
            let (ri, rest) = input.split_at(plane);
            let (gi, bi) = rest.split_at(plane);
            let (ro, rest) = output.split_at_mut(plane);
            let (go, bo) = rest.split_at_mut(plane);
            for k in 0..plane {
                (ro[k], go[k], bo[k]) = shift_pixel(ri[k], gi[k], bi[k], shift[img]);
            }
        }
    });
    Ok(out)
}
