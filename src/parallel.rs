//! Spreading CPU work over torch's threads: contiguous fp32 rows for the hand-written
//! kernels, and whole independent tasks for work made of ATen ops too small to split.
use crate::error::Result;

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

/// A unit of work for `run_tasks`.
pub type Task<'a, T> = Box<dyn FnOnce() -> Result<T> + Send + 'a>;

/// Runs independent tasks on up to torch's thread count of threads, each thread taking the
/// next task when it is done, with ATen single-threaded inside each, and returns the results in
/// order. OpenMP's thread count is a per-thread setting, so each worker sets its own to 1; the
/// caller's is put back after.
pub fn run_tasks<'a, T: Send>(tasks: Vec<Task<'a, T>>) -> Result<Vec<T>> {
    let threads = tch::get_num_threads();
    let workers = (threads.max(1) as usize).min(tasks.len());
    if workers < 2 {
        return tasks.into_iter().map(|t| t()).collect();
    }
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            tch::set_num_threads(self.0);
        }
    }
    let _restore = Restore(threads);
    let queue: Vec<std::sync::Mutex<Option<Task<'a, T>>>> = tasks.into_iter().map(|t| std::sync::Mutex::new(Some(t))).collect();
    let results: Vec<std::sync::Mutex<Option<Result<T>>>> = queue.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        tch::set_num_threads(1);
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = queue.get(i) else { break };
            let task = slot.lock().ok().and_then(|mut t| t.take());
            let out = task.map_or_else(|| Err(tch::TchError::Torch(format!("parallel task {i} ran twice")).into()), |t| t());
            if let Ok(mut r) = results[i].lock() {
                *r = Some(out);
            }
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        work();
        for h in helpers {
            // A panicking task leaves its slot empty, reported below.
            let _ = h.join();
        }
    });
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.into_inner().ok().flatten().unwrap_or_else(|| Err(tch::TchError::Torch(format!("parallel task {i} panicked")).into())))
        .collect()
}
