//! Spreading the hand-written CPU kernels' work over torch's threads.
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Runs `f(item, state)` for every item in `0..items` on up to torch's thread count of threads,
/// each thread taking the next item when it is done (so items may differ in cost), with one
/// `state` per thread from `init`.
pub fn parallel_items<S, I: Fn() -> S + Sync, F: Fn(usize, &mut S) + Sync>(items: usize, init: I, f: F) {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut state = init();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            f(i, &mut state);
        }
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(items);
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
}
