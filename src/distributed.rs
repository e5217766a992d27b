//! Data parallelism over a process group the caller owns (torch.distributed under torchrun).
//! The engine needs one primitive, an in-place sum across ranks; everything else (gradient
//! averaging, SyncBN, agreeing on errors, config checks, broadcast) is built on it here.
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use tch::Tensor;
use torch_sys::C_tensor;

/// A process group as the engine sees it.
pub trait Collective: Send + Sync {
    fn rank(&self) -> i64;
    fn world_size(&self) -> i64;
    /// Sums `t` element-wise across all ranks, in place. Every rank must call it in the same
    /// order with the same shape.
    fn all_reduce_sum(&self, t: &Tensor) -> std::result::Result<(), String>;
}

/// The learner's handle on its process group.
#[derive(Clone)]
pub struct Dist {
    cell: Arc<CollectiveCell>,
    /// Batch statistics across ranks in every BN layer (the paper's synchronised BN).
    pub sync_bn: bool,
}

/// Heap home of the collective, so that C++ autograd nodes can hold a stable pointer to it.
pub struct CollectiveCell {
    comm: Arc<dyn Collective>,
}

impl Dist {
    pub fn new(comm: Arc<dyn Collective>, sync_bn: bool) -> Self {
        Self { cell: Arc::new(CollectiveCell { comm }), sync_bn }
    }

    pub fn rank(&self) -> i64 {
        self.cell.comm.rank()
    }

    pub fn world_size(&self) -> i64 {
        self.cell.comm.world_size()
    }

    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        self.cell.comm.all_reduce_sum(t).map_err(|e| Error::Distributed(format!("all-reduce failed on rank {}: {e}", self.rank())))
    }

    /// Every rank learns whether any rank failed its local part (for example input checks),
    /// so that all of them stop together instead of one waiting in a collective forever.
    /// Control values like this one travel as small CPU tensors (the collective moves them to
    /// the backend's device when it needs to).
    pub fn agree<T>(&self, local: Result<T>) -> Result<T> {
        let flag = Tensor::from_slice(&[local.is_err() as i64 as f64]);
        self.all_reduce_sum(&flag)?;
        let failed = flag.f_double_value(&[0])?;
        match local {
            Err(e) => Err(e),
            Ok(_) if failed > 0.0 => Err(Error::Distributed(format!(
                "{failed} other rank(s) rejected their input (their own error says why); no state was changed on any rank"
            ))),
            Ok(v) => Ok(v),
        }
    }

    /// Raises on every rank unless all ranks hold the same `text` (one collective). The hash is
    /// cut into 21-bit pieces so that their squares sum exactly in f64; equal values are
    /// detected by `world * sum(h^2) == sum(h)^2`.
    pub fn check_same(&self, what: &str, text: &str) -> Result<()> {
        let h = fnv1a(text.as_bytes());
        let parts: Vec<f64> = (0..3).map(|i| ((h >> (21 * i)) & 0x1F_FFFF) as f64).collect();
        let squares: Vec<f64> = parts.iter().map(|p| p * p).collect();
        let t = Tensor::from_slice(&[parts, squares].concat());
        self.all_reduce_sum(&t)?;
        let v = Vec::<f64>::try_from(&t)?;
        let w = self.world_size() as f64;
        if (0..3).any(|i| w * v[3 + i] != v[i] * v[i]) {
            return Err(Error::Distributed(format!("the {what} differs between ranks; every rank must build the learner with the same arguments")));
        }
        Ok(())
    }

    /// Copies rank 0's values of `t` to every rank (a sum with zeros elsewhere).
    pub fn broadcast_from_rank0(&self, t: &Tensor) -> Result<()> {
        let _guard = tch::no_grad_guard();
        if self.rank() != 0 {
            let _ = t.shallow_clone().f_zero_()?;
        }
        self.all_reduce_sum(t)
    }

    /// An all-reduce that autograd differentiates: the gradient of a sum across ranks is the
    /// sum across ranks of the gradients (SyncBN's statistics).
    pub fn differentiable_all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let state = Arc::as_ptr(&self.cell) as *const c_void;
        unsafe { crate::shim::all_reduce_autograd(t, all_reduce_callback, state) }
            .map_err(|e| Error::Distributed(format!("a SyncBN all-reduce failed on rank {}: {e}", self.rank())))
    }

    /// Sums `t` across ranks and divides by the world size, in place.
    pub fn average_(&self, t: &Tensor) -> Result<()> {
        self.all_reduce_sum(t)?;
        let _guard = tch::no_grad_guard();
        let _ = t.shallow_clone().f_div_scalar_(self.world_size() as f64)?;
        Ok(())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Called from C++ (forward and backward of the autograd all-reduce). Never unwinds.
extern "C" fn all_reduce_callback(state: *const c_void, t: *mut C_tensor, err: *mut c_char, err_len: usize) -> c_int {
    let out = std::panic::catch_unwind(|| {
        let cell = unsafe { &*(state as *const CollectiveCell) };
        let t = unsafe { Tensor::from_ptr(t) };
        cell.comm.all_reduce_sum(&t)
    });
    let msg = match out {
        Ok(Ok(())) => return 0,
        Ok(Err(m)) => m,
        Err(_) => "panic in the all-reduce callback".to_string(),
    };
    let bytes = msg.as_bytes();
    let n = bytes.len().min(err_len.saturating_sub(1));
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, err, n);
        *err.add(n) = 0;
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Two ranks simulated in one process: rank 0 holds `t`, the other rank `t + offset`.
    struct FakePair {
        offset: f64,
    }

    impl Collective for FakePair {
        fn rank(&self) -> i64 {
            0
        }
        fn world_size(&self) -> i64 {
            2
        }
        fn all_reduce_sum(&self, t: &Tensor) -> std::result::Result<(), String> {
            let _ = t.shallow_clone().f_mul_scalar_(2.0).and_then(|mut t| t.f_add_scalar_(self.offset)).map_err(|e| e.to_string())?;
            Ok(())
        }
    }

    #[test]
    fn check_same_detects_a_differing_rank() {
        let same = Dist::new(Arc::new(FakePair { offset: 0.0 }), true);
        assert!(same.check_same("config", "{\"a\":1}").is_ok());
        let differs = Dist::new(Arc::new(FakePair { offset: 1.0 }), true);
        let err = differs.check_same("config", "{\"a\":1}").unwrap_err();
        assert!(err.to_string().contains("differs between ranks"), "{err}");
    }

    #[test]
    fn agree_fails_every_rank_when_one_fails() {
        let other_failed = Dist::new(Arc::new(FakePair { offset: 1.0 }), true);
        let err = other_failed.agree(Ok(())).unwrap_err();
        assert!(err.to_string().contains("other rank(s) rejected"), "{err}");
        let all_ok = Dist::new(Arc::new(FakePair { offset: 0.0 }), true);
        assert!(all_ok.agree(Ok(())).is_ok());
    }

    #[test]
    fn differentiable_all_reduce_sums_forward_and_backward() {
        let d = Dist::new(Arc::new(FakePair { offset: 0.0 }), true);
        let x = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let y = d.differentiable_all_reduce_sum(&x).unwrap();
        assert_eq!(Vec::<f32>::try_from(&y).unwrap(), vec![2.0, 4.0]);
        (y * Tensor::from_slice(&[3.0f32, 5.0])).sum(Kind::Float).backward();
        // d/dx of sum_ranks(x) * c, with the upstream gradient c summed over both ranks.
        assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![6.0, 10.0]);
    }
}
