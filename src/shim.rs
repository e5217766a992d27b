//! Safe wrappers over `shim/ops.cpp`: ATen ops that tch does not expose.
use crate::error::Result;
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn byol_free_error(err: *mut c_char);
    fn byol_foreach_lerp_(
        s: *const *const C_tensor,
        e: *const *const C_tensor,
        n: usize,
        weight: f64,
    ) -> *mut c_char;
    fn byol_foreach_add_(
        s: *const *const C_tensor,
        o: *const *const C_tensor,
        n: usize,
        alpha: f64,
    ) -> *mut c_char;
    fn byol_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn byol_set_grad(param: *const C_tensor, grad: *const C_tensor) -> *mut c_char;
}

fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { byol_free_error(err) };
    Err(tch::TchError::Torch(msg).into())
}

/// `this[i] += weight * (end[i] - this[i])` for all i in one `_foreach_lerp_` call.
pub fn foreach_lerp_(this: &[Tensor], end: &[Tensor], weight: f64) -> Result<()> {
    let s: Vec<_> = this.iter().map(|t| t.as_ptr()).collect();
    let e: Vec<_> = end.iter().map(|t| t.as_ptr()).collect();
    check(unsafe { byol_foreach_lerp_(s.as_ptr(), e.as_ptr(), s.len(), weight) })
}

/// `this[i] += alpha * other[i]` for all i in one `_foreach_add_` call.
pub fn foreach_add_(this: &[Tensor], other: &[Tensor], alpha: f64) -> Result<()> {
    let s: Vec<_> = this.iter().map(|t| t.as_ptr()).collect();
    let o: Vec<_> = other.iter().map(|t| t.as_ptr()).collect();
    check(unsafe { byol_foreach_add_(s.as_ptr(), o.as_ptr(), s.len(), alpha) })
}

/// A channels_last (NHWC in memory) copy of an NCHW tensor.
pub fn channels_last(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(unsafe { byol_channels_last(t.as_ptr(), &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Installs `grad` as `param.grad`; autograd then accumulates into it in place.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<()> {
    check(unsafe { byol_set_grad(param.as_ptr(), grad.as_ptr()) })
}

/// A collective the shim calls back into (`shim/ops.cpp`): `callback(state, t, err, err_len)`
/// applies it to `t` in place, taking ownership of the handle; nonzero means failure, with a
/// message in `err`.
pub type TensorCallback = extern "C" fn(*const c_void, *mut C_tensor, *mut c_char, usize) -> c_int;

extern "C" {
    fn byol_all_reduce_autograd(
        x: *const C_tensor,
        callback: TensorCallback,
        state: *const c_void,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// `callback(state, copy of x)` as an autograd op whose backward applies the same callback to
/// the incoming gradient (a sum across ranks is its own adjoint).
///
/// # Safety
/// `state` must stay valid for as long as the returned tensor's graph can be backpropagated.
pub unsafe fn all_reduce_autograd(x: &Tensor, callback: TensorCallback, state: *const c_void) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(byol_all_reduce_autograd(x.as_ptr(), callback, state, &mut out))?;
    Ok(Tensor::from_ptr(out))
}

extern "C" {
    fn byol_autocast_enter(cuda: i32, dtype: i32, prev_enabled: *mut i32, prev_dtype: *mut i32) -> *mut c_char;
    fn byol_autocast_exit(cuda: i32, prev_enabled: i32, prev_dtype: i32) -> *mut c_char;
}

/// Mixed precision for the forward pass (what `torch.autocast` does): while the guard lives,
/// convolutions and matmuls on `device` run in `kind`, reductions and BN in fp32.
pub struct Autocast {
    cuda: i32,
    prev_enabled: i32,
    prev_dtype: i32,
}

pub fn autocast(device: tch::Device, kind: tch::Kind) -> Result<Autocast> {
    // c10::ScalarType's numbering (tch keeps its own conversion private).
    let dtype = match kind {
        tch::Kind::Half => 5,
        tch::Kind::BFloat16 => 15,
        other => return Err(crate::error::value_error("precision", format!("autocast to {other:?} is not supported"))),
    };
    let cuda = device.is_cuda() as i32;
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    check(unsafe { byol_autocast_enter(cuda, dtype, &mut prev_enabled, &mut prev_dtype) })?;
    Ok(Autocast { cuda, prev_enabled, prev_dtype })
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // Restoring thread-local flags cannot fail in practice; a failure is reported, not raised.
        if let Err(e) = check(unsafe { byol_autocast_exit(self.cuda, self.prev_enabled, self.prev_dtype) }) {
            eprintln!("byol_rs: leaving autocast failed: {e}");
        }
    }
}

extern "C" {
    fn byol_foreach_norm(tensors: *const *const C_tensor, n: usize, out: *mut *mut C_tensor) -> *mut c_char;
    fn byol_host_copy_start(t: *const C_tensor, host: *mut *mut C_tensor, event: *mut *mut std::ffi::c_void) -> *mut c_char;
    fn byol_event_ready(event: *mut std::ffi::c_void, wait: i32, ready: *mut i32) -> *mut c_char;
    fn byol_event_free(event: *mut std::ffi::c_void);
    fn byol_upload(t: *const C_tensor, cuda_index: i64, out: *mut *mut C_tensor) -> *mut c_char;
}

/// A CPU tensor moved to `device` without the host waiting (a plain copy would synchronise).
pub fn upload(t: &Tensor, device: tch::Device) -> Result<Tensor> {
    let index = match device {
        tch::Device::Cuda(i) => i as i64,
        _ => return Ok(t.f_to_device(device)?),
    };
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(unsafe { byol_upload(t.as_ptr(), index, &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `[|t_0|, |t_1|, ...]`, the l2 norm of every tensor, as one 1-D tensor on their device.
pub fn foreach_norm(tensors: &[Tensor]) -> Result<Tensor> {
    let ptrs: Vec<_> = tensors.iter().map(|t| t.as_ptr()).collect();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(unsafe { byol_foreach_norm(ptrs.as_ptr(), ptrs.len(), &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A device value on its way to the host: the copy is queued behind the work that produces
/// it, so starting one never waits for the device.
pub struct HostCopy {
    host: Tensor,
    event: *mut std::ffi::c_void,
}

// The event is only queried or waited on, which CUDA allows from any thread.
unsafe impl Send for HostCopy {}

impl HostCopy {
    pub fn start(t: &Tensor) -> Result<Self> {
        let (mut host, mut event) = (std::ptr::null_mut(), std::ptr::null_mut());
        check(unsafe { byol_host_copy_start(t.as_ptr(), &mut host, &mut event) })?;
        Ok(Self { host: unsafe { Tensor::from_ptr(host) }, event })
    }

    /// The host copy once the device has produced it; `None` while it has not (with `wait`,
    /// blocks instead).
    pub fn get(&self, wait: bool) -> Result<Option<&Tensor>> {
        let mut ready = 0;
        check(unsafe { byol_event_ready(self.event, wait as i32, &mut ready) })?;
        Ok((ready != 0).then_some(&self.host))
    }
}

impl Drop for HostCopy {
    fn drop(&mut self) {
        if !self.event.is_null() {
            unsafe { byol_event_free(self.event) };
        }
    }
}

extern "C" {
    fn byol_batch_norm_act(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        residual: *const C_tensor,
        running_mean: *const C_tensor,
        running_var: *const C_tensor,
        momentum: f64,
        eps: f64,
        relu: i32,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Training-mode BN fused with what follows it, `relu?(bn(x) + residual?)`, as one autograd op
/// (`shim/batch_norm.cpp`); updates the running statistics. `None` when the inputs are not
/// fp32 CPU rows of channels (NHWC-contiguous 4-D or contiguous 2-D): the caller then uses ATen.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    residual: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
    relu: bool,
) -> Result<Option<Tensor>> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let r = residual.map_or(std::ptr::null(), |t| t.as_ptr());
    check(unsafe {
        byol_batch_norm_act(
            x.as_ptr(), w.as_ptr(), b.as_ptr(), r, running_mean.as_ptr(), running_var.as_ptr(),
            momentum, eps, relu as i32, &mut out,
        )
    })?;
    Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out) }))
}

extern "C" {
    fn byol_winograd_conv3x3(x: *const C_tensor, w: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
}

/// A 3x3, stride-1, padding-1 convolution without bias through Winograd's F(2x2, 3x3), as one
/// autograd op (`shim/winograd.cpp`). `None` unless `x` is fp32 CPU NHWC with even height and
/// width (and autocast is off): the caller then uses ATen.
pub fn winograd_conv3x3(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(unsafe { byol_winograd_conv3x3(x.as_ptr(), w.as_ptr(), &mut out) })?;
    Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out) }))
}
