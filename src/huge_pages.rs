//! Fresh host tensors whose pages fault in 2 MiB at a time.
//!
//! A batch of 64 view pairs at 224 px is 77 MB of new memory on every call. On 4 KiB pages that
//! is 19,000 page faults, which cost about a third of the views' time (benches/RESULTS.md,
//! loader section). Linux's transparent huge pages in `madvise` mode (the common default) give
//! 2 MiB pages to ranges that ask for them; torch's allocator asks only under
//! `THP_MEM_ALLOC_ENABLE=1`, so the outputs the engine fills itself ask here.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

const HUGE_PAGE: usize = 2 << 20;

/// An uninitialised CPU tensor, on huge pages where the kernel grants them.
pub fn empty_cpu(shape: &[i64], kind: Kind) -> Result<Tensor> {
    let t = Tensor::f_empty(shape, (kind, Device::Cpu))?;
    advise(t.data_ptr() as usize, t.numel() * kind.elt_size_in_bytes());
    Ok(t)
}

/// Asks for huge pages on the whole 2 MiB pages inside `[start, start + len)`. Advice only: it
/// never changes the contents, and where it is refused the memory keeps 4 KiB pages.
fn advise(start: usize, len: usize) {
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + len) / HUGE_PAGE * HUGE_PAGE;
    if end < first + HUGE_PAGE {
        return;
    }
    #[cfg(target_os = "linux")]
    // Safety: the range lies inside one live allocation that this thread owns; MADV_HUGEPAGE
    // does not read, write or unmap it.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tensor_is_usable_and_has_the_shape() {
        for shape in [[1i64, 1, 1, 1], [64, 3, 224, 224]] {
            let mut t = empty_cpu(&shape, Kind::Float).unwrap();
            assert_eq!(t.size(), shape);
            let _ = t.f_fill_(1.5).unwrap();
            assert_eq!(t.sum(Kind::Double).double_value(&[]), 1.5 * shape.iter().product::<i64>() as f64);
        }
    }
}
