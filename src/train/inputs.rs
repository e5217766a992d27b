//! What the learner accepts as images, and the memory layout it runs them in.
use super::Learner;
use crate::error::{value_error, Result};
use crate::shim;
use tch::{Kind, Tensor};

impl Learner {
    pub(super) fn check_views(&self, view1: &Tensor, view2: &Tensor) -> Result<()> {
        let finite = self.guard.checks_inputs();
        self.check_images(view1, "view1", finite)?;
        self.check_images(view2, "view2", finite)?;
        if view1.size() != view2.size() {
            return Err(value_error("view2", format!("shape {:?} does not match view1 shape {:?}", view2.size(), view1.size())));
        }
        if view1.size()[0] < 2 {
            return Err(value_error("view1", "training needs a batch of at least 2 images (BatchNorm statistics)"));
        }
        Ok(())
    }

    /// Shape, dtype and device; with `finite`, also no NaN or inf (which reads the device).
    pub(super) fn check_images(&self, x: &Tensor, arg: &str, finite: bool) -> Result<()> {
        let size = x.size();
        if size.len() != 4 {
            return Err(value_error(arg, format!("expected a 4-D [batch, channels, height, width] tensor, got shape {size:?}")));
        }
        if size[1] != self.config.network.in_channels {
            return Err(value_error(arg, format!("expected {} channels (in_channels), got shape {size:?}", self.config.network.in_channels)));
        }
        if size[0] < 1 || size[2] < 1 || size[3] < 1 {
            return Err(value_error(arg, format!("expected a non-empty batch, got shape {size:?}")));
        }
        let min_side = self.model.online.backbone.min_side();
        if size[2] < min_side || size[3] < min_side {
            return Err(value_error(arg, format!("the {} backbone needs images of at least {min_side}x{min_side} px, got shape {size:?}", self.config.network.backbone)));
        }
        if !x.is_floating_point() {
            return Err(value_error(arg, format!("expected a floating-point tensor (normalised images), got {:?}", x.kind())));
        }
        if x.device() != self.device {
            return Err(value_error(arg, format!("is on {:?} but the learner is on {:?}", x.device(), self.device)));
        }
        if finite && !bool::try_from(x.f_isfinite()?.f_all()?)? {
            return Err(value_error(arg, "contains NaN or infinite values"));
        }
        Ok(())
    }

    /// fp32 on the learner's device, NHWC in memory where that is faster.
    pub(super) fn layout(&self, images: &Tensor) -> Result<Tensor> {
        let x = images.f_to_kind(Kind::Float)?;
        // cuDNN's tensor-core convolutions are NHWC; on CPU it is the user's choice.
        if self.device.is_cuda() || self.config.run.channels_last {
            return shim::channels_last(&x);
        }
        Ok(x)
    }
}
