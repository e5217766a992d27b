//! Matrix transposes for the resampler's horizontal pass, which sums vectors of rows and so
//! needs the rows as columns and back. Element by element, the strided side costs one scalar
//! access per value, a fifth of the crop's time; 8 x 8 blocks in AVX registers take 24
//! shuffles per 64 values. A transpose only moves values, so every route gives the same bits.

/// `dst[c * dst_stride + r] = src[r * src_stride + c]` for `r < rows`, `c < cols`.
#[inline(always)]
pub(super) fn transpose(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, cols: usize, rows: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((rows - 1) * src_stride + cols <= src.len() && (cols - 1) * dst_stride + rows <= dst.len(), "transpose out of bounds");
    let (mut r_done, mut c_done) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        (r_done, c_done) = (rows / 8 * 8, cols / 8 * 8);
        for r0 in (0..r_done).step_by(8) {
            for c0 in (0..c_done).step_by(8) {
                // Safety: AVX is present; the block's corners lie inside both slices (asserted).
                unsafe { block8_avx(src.as_ptr().add(r0 * src_stride + c0), src_stride, dst.as_mut_ptr().add(c0 * dst_stride + r0), dst_stride) };
            }
        }
    }
    for r in 0..rows {
        let from = if r < r_done { c_done } else { 0 };
        for c in from..cols {
            dst[c * dst_stride + r] = src[r * src_stride + c];
        }
    }
}

/// One 8 x 8 block: unpack pairs of rows, shuffle quads, swap 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // Plain loops, not closures, so that every intrinsic is compiled with AVX and inlined.
    let mut r = [_mm256_setzero_ps(); 8];
    for (i, row) in r.iter_mut().enumerate() {
        *row = _mm256_loadu_ps(src.add(i * ss));
    }
    let mut t = [_mm256_setzero_ps(); 8];
    for i in (0..8).step_by(2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    // s[lo + h]: rows lo..lo + 4, columns h and h + 4.
    let mut s = [_mm256_setzero_ps(); 8];
    for lo in [0, 4] {
        s[lo] = _mm256_shuffle_ps::<0x44>(t[lo], t[lo + 2]);
        s[lo + 1] = _mm256_shuffle_ps::<0xEE>(t[lo], t[lo + 2]);
        s[lo + 2] = _mm256_shuffle_ps::<0x44>(t[lo + 1], t[lo + 3]);
        s[lo + 3] = _mm256_shuffle_ps::<0xEE>(t[lo + 1], t[lo + 3]);
    }
    for h in 0..4 {
        _mm256_storeu_ps(dst.add(h * ds), _mm256_permute2f128_ps::<0x20>(s[h], s[4 + h]));
        _mm256_storeu_ps(dst.add((h + 4) * ds), _mm256_permute2f128_ps::<0x31>(s[h], s[4 + h]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_element_by_element_transpose_at_every_edge() {
        for (rows, cols) in [(1, 1), (8, 8), (16, 37), (13, 224), (5, 3), (24, 17)] {
            let (ss, ds) = (cols + 3, rows + 5);
            let src: Vec<f32> = (0..rows * ss).map(|v| v as f32).collect();
            let mut dst = vec![-1.0; cols * ds];
            transpose(&src, ss, &mut dst, ds, cols, rows);
            for c in 0..cols {
                for r in 0..ds {
                    let want = if r < rows { src[r * ss + c] } else { -1.0 };
                    assert_eq!(dst[c * ds + r], want, "rows {rows} cols {cols} at ({r}, {c})");
                }
            }
        }
    }
}
