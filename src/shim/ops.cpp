// ATen ops that tch 0.24 does not expose. Every entry point catches C++ exceptions and returns
// them as a heap string (null on success), so that no exception crosses into Rust.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <cstring>
#include <vector>

namespace {
char *error_string(const char *what) { return strdup(what); }

std::vector<at::Tensor> collect(at::Tensor **tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}
}  // namespace

extern "C" {

void byol_free_error(char *err) { free(err); }

// self[i] <- self[i] + weight * (end[i] - self[i]), as one multi-tensor kernel on CUDA.
char *byol_foreach_lerp_(at::Tensor **self, at::Tensor **end, size_t n, double weight) {
  try {
    c10::NoGradGuard no_grad;
    auto s = collect(self, n);
    auto e = collect(end, n);
    at::_foreach_lerp_(s, e, at::Scalar(weight));
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

// A copy of `t` in channels_last (NHWC) memory order, keeping its NCHW logical shape.
char *byol_channels_last(at::Tensor *t, at::Tensor **out) {
  try {
    *out = new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast));
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

// Makes `grad` the .grad of `param`, so that autograd accumulates into it in place.
char *byol_set_grad(at::Tensor *param, at::Tensor *grad) {
  try {
    param->mutable_grad() = *grad;
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

}  // extern "C"
