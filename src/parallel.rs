//! Splitting contiguous fp32 rows across threads for the hand-written CPU kernels.

/// Below this many elements the thread start-up costs more than it saves.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Splits `rows` rows of `dim` elements into one contiguous block per torch thread and runs
/// `f(first_row, rows)` on each.
pub fn parallel_rows<F: Fn(usize, usize) + Sync>(rows: usize, dim: usize, f: F) {
    let threads = (tch::get_num_threads().max(1) as usize)
        .min((rows * dim).div_ceil(PARALLEL_MIN_ELEMENTS))
        .clamp(1, rows.max(1));
    if threads == 1 {
        return f(0, rows);
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for start in (per..rows).step_by(per) {
            let f = &f;
            s.spawn(move || f(start, per.min(rows - start)));
        }
        f(0, per.min(rows));
    });
}

/// A raw pointer that row blocks can carry across threads; callers keep the blocks disjoint.
#[derive(Clone, Copy)]
pub struct Ptr(pub *mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}
