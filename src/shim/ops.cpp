// ATen ops that tch 0.24 does not expose. Every entry point catches C++ exceptions and returns
// them as a heap string (null on success), so that no exception crosses into Rust.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/Event.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace {
char *error_string(const char *what) { return strdup(what); }

std::vector<at::Tensor> collect(at::Tensor **tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}
// Rust's callback: applies a collective to `t` in place (taking ownership of the handle);
// nonzero means failure, with a message in `err`.
typedef int (*tensor_callback)(const void *state, at::Tensor *t, char *err, size_t err_len);

void invoke(int64_t callback, int64_t state, const at::Tensor &t) {
  char err[1024] = {0};
  auto fn = reinterpret_cast<tensor_callback>(callback);
  if (fn(reinterpret_cast<const void *>(state), new at::Tensor(t), err, sizeof err) != 0)
    throw std::runtime_error(err);
}

// y = all_reduce_sum(x); dx = all_reduce_sum(dy). SyncBN's statistics go through this.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x,
                            int64_t callback, int64_t state) {
    ctx->saved_data["callback"] = callback;
    ctx->saved_data["state"] = state;
    auto y = x.contiguous().clone();
    invoke(callback, state, y);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto g = grads[0].contiguous().clone();
    invoke(ctx->saved_data["callback"].toInt(), ctx->saved_data["state"].toInt(), g);
    return {g, at::Tensor(), at::Tensor()};
  }
};
}  // namespace

extern "C" {

char *byol_all_reduce_autograd(at::Tensor *x, tensor_callback callback, const void *state,
                               at::Tensor **out) {
  try {
    *out = new at::Tensor(AllReduceSum::apply(*x, reinterpret_cast<int64_t>(callback),
                                              reinterpret_cast<int64_t>(state)));
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

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

// self[i] += alpha * other[i] for all i in one `_foreach_add_` call.
char *byol_foreach_add_(at::Tensor **self, at::Tensor **other, size_t n, double alpha) {
  try {
    c10::NoGradGuard no_grad;
    at::_foreach_add_(collect(self, n), collect(other, n), at::Scalar(alpha));
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

// Turns autocast on for one device type (CPU or CUDA) with `dtype`, saving what was there.
char *byol_autocast_enter(int cuda, int dtype, int *prev_enabled, int *prev_dtype) {
  try {
    auto device = cuda ? at::kCUDA : at::kCPU;
    *prev_enabled = at::autocast::is_autocast_enabled(device);
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

// Restores the state `byol_autocast_enter` saved; the cast cache is dropped on the way out,
// as torch.autocast does, so that no half-precision copy of a weight outlives the forward.
char *byol_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  try {
    auto device = cuda ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device, prev_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(prev_dtype));
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

// out = stack(|t_i|_2): every tensor's l2 norm in one multi-tensor kernel on CUDA.
char *byol_foreach_norm(at::Tensor **tensors, size_t n, at::Tensor **out) {
  try {
    c10::NoGradGuard no_grad;
    *out = new at::Tensor(at::stack(at::_foreach_norm(collect(tensors, n), 2)));
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

// Starts copying `t` to pinned host memory without waiting, and records an event after the
// copy on the current stream: once the event has happened, `*host` holds the value. On the
// CPU the copy is immediate and `*event` is null.
char *byol_host_copy_start(at::Tensor *t, at::Tensor **host, c10::Event **event) {
  try {
    *event = nullptr;
    if (!t->is_cuda()) {
      *host = new at::Tensor(t->clone());
      return nullptr;
    }
    auto pinned = at::empty(t->sizes(), t->options().device(at::kCPU).pinned_memory(true));
    pinned.copy_(*t, /*non_blocking=*/true);
    c10::impl::VirtualGuardImpl impl(t->device().type());
    auto ev = std::make_unique<c10::Event>(t->device().type());
    ev->record(impl.getStream(t->device()));
    *host = new at::Tensor(pinned);
    *event = ev.release();
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

// Whether the event has happened; never waits. `wait` nonzero blocks until it has.
char *byol_event_ready(c10::Event *event, int wait, int *ready) {
  try {
    if (event == nullptr) {
      *ready = 1;
      return nullptr;
    }
    if (wait) event->synchronize();
    *ready = event->query() ? 1 : 0;
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

void byol_event_free(c10::Event *event) { delete event; }

// A host tensor on CUDA device `cuda_index` (or the CPU for -1) without waiting: staged in
// pinned memory, whose allocator keeps it alive until the copy has run.
char *byol_upload(at::Tensor *t, int64_t cuda_index, at::Tensor **out) {
  try {
    if (cuda_index < 0) {
      *out = new at::Tensor(*t);
      return nullptr;
    }
    auto device = c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index));
    *out = new at::Tensor(t->pin_memory().to(device, /*non_blocking=*/true));
    return nullptr;
  } catch (const std::exception &ex) {
    return error_string(ex.what());
  }
}

}  // extern "C"
