// Training-mode batch norm fused with the residual add and ReLU that follow it, as one autograd
// op, for fp32 CPU activations stored as rows of channels (NHWC-contiguous 4-D, or contiguous
// 2-D [batch, features]):
//
//     y = relu(x * scale + shift [+ residual]),  scale = w / sqrt(var + eps), shift = b - mean * scale
//
// ATen runs BN, the add and ReLU as separate passes over memory, forward and backward; here the
// forward is two passes (statistics, then output) and the backward two (sums, then dx).
// Statistics and gradient sums are accumulated in double over a fixed split of the rows, so the
// result does not depend on the thread count. Anything else (CUDA, NCHW, other dtypes) gets a
// null result and Rust falls back to ATen.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#define BYOL_CLONES __attribute__((target_clones("avx2", "default")))

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Fixed, not per thread: the summation order must not depend on the thread count.
constexpr int64_t kChunks = 16;

// The pre-activation, written once so that forward and the backward's mask recomputation round
// identically (the file is built with -ffp-contract=off).
inline float affine(float x, float scale, float shift) { return x * scale + shift; }

#define BYOL_INLINE inline __attribute__((always_inline))

// `keep ? v : 0` as a bit mask, which GCC vectorises where it will not if-convert the select.
BYOL_INLINE float keep_if(bool keep, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits &= -static_cast<uint32_t>(keep);
  std::memcpy(&v, &bits, 4);
  return v;
}

BYOL_CLONES void row_sums(const float *__restrict__ x, int64_t rows, int64_t c,
                          double *__restrict__ sum, double *__restrict__ sum_sq) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *__restrict__ xr = x + r * c;
    for (int64_t j = 0; j < c; ++j) {
      double v = xr[j];
      sum[j] += v;
      sum_sq[j] += v * v;
    }
  }
}

// One row of each kernel below, with its flags fixed at compile time so that the inner loop has
// no branches and vectorises.
template <bool Relu, bool Residual>
BYOL_INLINE void forward_row(const float *__restrict__ x, const float *__restrict__ res,
                             float *__restrict__ y, int64_t c, const float *__restrict__ scale,
                             const float *__restrict__ shift) {
  for (int64_t j = 0; j < c; ++j) {
    float t = affine(x[j], scale[j], shift[j]);
    if (Residual) t += res[j];
    y[j] = Relu && t < 0.f ? 0.f : t;
  }
}

BYOL_CLONES void rows_forward(const float *x, const float *res, float *y, int64_t rows, int64_t c,
                              const float *scale, const float *shift, bool relu) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * c;
    if (res)
      forward_row<true, true>(x + o, res + o, y + o, c, scale, shift);
    else if (relu)
      forward_row<true, false>(x + o, nullptr, y + o, c, scale, shift);
    else
      forward_row<false, false>(x + o, nullptr, y + o, c, scale, shift);
  }
}

// gm = g masked by ReLU (from y > 0 with a residual, else recomputed from x); sums of gm and
// gm * x; with a residual gm is also written out.
template <int Mask>  // 0: none, 1: from x, 2: from y
BYOL_INLINE void grad_sums_row(const float *__restrict__ g, const float *__restrict__ x,
                               const float *__restrict__ y, float *__restrict__ gm_out, int64_t c,
                               const float *__restrict__ scale, const float *__restrict__ shift,
                               double *__restrict__ sum_g, double *__restrict__ sum_gx) {
  for (int64_t j = 0; j < c; ++j) {
    float gm = g[j];
    if (Mask == 1) gm = keep_if(affine(x[j], scale[j], shift[j]) > 0.f, gm);
    if (Mask == 2) {
      gm = keep_if(y[j] > 0.f, gm);
      gm_out[j] = gm;
    }
    sum_g[j] += gm;
    sum_gx[j] += (double)gm * x[j];
  }
}

BYOL_CLONES void rows_grad_sums(const float *g, const float *x, const float *y, float *gm_out,
                                int64_t rows, int64_t c, const float *scale, const float *shift,
                                bool relu, double *sum_g, double *sum_gx) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * c;
    if (y)
      grad_sums_row<2>(g + o, x + o, y + o, gm_out + o, c, scale, shift, sum_g, sum_gx);
    else if (relu)
      grad_sums_row<1>(g + o, x + o, nullptr, nullptr, c, scale, shift, sum_g, sum_gx);
    else
      grad_sums_row<0>(g + o, x + o, nullptr, nullptr, c, scale, shift, sum_g, sum_gx);
  }
}

// dx = a * (gm - mean_g) - k * (x - mean), with gm masked from x when `mask`.
template <bool Mask>
BYOL_INLINE void grad_input_row(const float *__restrict__ g, const float *__restrict__ x,
                                float *__restrict__ dx, int64_t c, const float *__restrict__ scale,
                                const float *__restrict__ shift, const float *__restrict__ a,
                                const float *__restrict__ mean_g, const float *__restrict__ k,
                                const float *__restrict__ mean) {
  for (int64_t j = 0; j < c; ++j) {
    float gm = g[j];
    if (Mask) gm = keep_if(affine(x[j], scale[j], shift[j]) > 0.f, gm);
    dx[j] = a[j] * (gm - mean_g[j]) - k[j] * (x[j] - mean[j]);
  }
}

BYOL_CLONES void rows_grad_input(const float *g, const float *x, float *dx, int64_t rows, int64_t c,
                                 const float *scale, const float *shift, bool mask, const float *a,
                                 const float *mean_g, const float *k, const float *mean) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * c;
    if (mask)
      grad_input_row<true>(g + o, x + o, dx + o, c, scale, shift, a, mean_g, k, mean);
    else
      grad_input_row<false>(g + o, x + o, dx + o, c, scale, shift, a, mean_g, k, mean);
  }
}

// Per-channel double sums over all rows: each of kChunks row ranges into its own slot (in
// parallel), then the slots in order.
template <typename F>
std::vector<double> chunked_sums(int64_t rows, int64_t c, F &&sum_rows) {
  int64_t chunks = std::min<int64_t>(kChunks, rows);
  std::vector<double> part(chunks * 2 * c, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t r0 = rows * i / chunks, r1 = rows * (i + 1) / chunks;
      sum_rows(r0, r1 - r0, part.data() + i * 2 * c, part.data() + i * 2 * c + c);
    }
  });
  std::vector<double> total(2 * c, 0.0);
  for (int64_t i = 0; i < chunks; ++i)
    for (int64_t j = 0; j < 2 * c; ++j) total[j] += part[i * 2 * c + j];
  return total;
}

// Row ranges big enough to be worth a thread.
int64_t grain(int64_t c) { return std::max<int64_t>(1, 32768 / c); }

at::MemoryFormat format_of(const at::Tensor &x) {
  return x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A tensor that owns a copy of `v` (float or double).
template <typename T>
at::Tensor per_channel(const std::vector<T> &v) {
  return at::from_blob(const_cast<T *>(v.data()), {(int64_t)v.size()}, c10::CppTypeToScalarType<T>::value).clone();
}

// Forward and backward shared by the two autograd ops below (autograd takes no undefined
// tensor inputs, so "no residual" is its own op). `residual` may be undefined.
struct Impl {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                            const at::Tensor &b, const at::Tensor &residual, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps, bool relu) {
    const int64_t c = x.size(1), rows = x.numel() / c;
    const float *xp = x.data_ptr<float>();
    auto sums = chunked_sums(rows, c, [&](int64_t r0, int64_t n, double *s, double *q) {
      row_sums(xp + r0 * c, n, c, s, q);
    });
    std::vector<double> mean(c), invstd(c);
    std::vector<float> scale(c), shift(c);
    const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
    // ATen's running-statistics update, with the unbiased variance.
    float *rmp = running_mean.data_ptr<float>(), *rvp = running_var.data_ptr<float>();
    for (int64_t j = 0; j < c; ++j) {
      mean[j] = sums[j] / rows;
      double var = std::max(0.0, sums[c + j] / rows - mean[j] * mean[j]);
      invstd[j] = 1.0 / std::sqrt(var + eps);
      scale[j] = (float)(wp[j] * invstd[j]);
      shift[j] = (float)(bp[j] - mean[j] * wp[j] * invstd[j]);
      rmp[j] = (float)(momentum * mean[j] + (1 - momentum) * rmp[j]);
      rvp[j] = (float)(momentum * var * rows / (rows - 1) + (1 - momentum) * rvp[j]);
    }

    auto y = at::empty_like(x, format_of(x));
    const float *rp = residual.defined() ? residual.data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>();
    at::parallel_for(0, rows, grain(c), [&](int64_t r0, int64_t r1) {
      rows_forward(xp + r0 * c, rp ? rp + r0 * c : nullptr, yp + r0 * c, r1 - r0, c, scale.data(),
                   shift.data(), relu);
    });

    // With a residual the ReLU mask needs y; without one it is recomputed from x.
    ctx->save_for_backward({x, w, residual.defined() ? y : at::Tensor()});
    ctx->saved_data["mean"] = per_channel(mean);
    ctx->saved_data["invstd"] = per_channel(invstd);
    ctx->saved_data["scale"] = per_channel(scale);
    ctx->saved_data["shift"] = per_channel(shift);
    ctx->saved_data["relu"] = relu;
    return y;
  }

  // [dx, dw, db, d residual]
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &y = saved[2];
    const bool relu = ctx->saved_data["relu"].toBool(), has_residual = y.defined();
    variable_list out(4);
    if (!grads[0].defined()) return out;
    auto g = grads[0].contiguous(format_of(x));
    const int64_t c = x.size(1), rows = x.numel() / c;
    auto mean_t = ctx->saved_data["mean"].toTensor(), invstd_t = ctx->saved_data["invstd"].toTensor();
    auto scale_t = ctx->saved_data["scale"].toTensor(), shift_t = ctx->saved_data["shift"].toTensor();
    const double *mean = mean_t.data_ptr<double>(), *invstd = invstd_t.data_ptr<double>();
    const float *scale = scale_t.data_ptr<float>(), *shift = shift_t.data_ptr<float>();
    const float *gp = g.data_ptr<float>(), *xp = x.data_ptr<float>();

    // With a residual, gm = g * (y > 0) is materialised: it is the residual's gradient.
    at::Tensor gm = has_residual ? at::empty_like(x, format_of(x)) : at::Tensor();
    const float *yp = has_residual ? y.data_ptr<float>() : nullptr;
    float *gmp = has_residual ? gm.data_ptr<float>() : nullptr;
    auto sums = chunked_sums(rows, c, [&](int64_t r0, int64_t n, double *sg, double *sgx) {
      rows_grad_sums(gp + r0 * c, xp + r0 * c, yp ? yp + r0 * c : nullptr,
                     gmp ? gmp + r0 * c : nullptr, n, c, scale, shift, relu, sg, sgx);
    });

    // sum(gm * xhat) = invstd * (sum(gm * x) - mean * sum(gm)).
    std::vector<double> dw(c), db(c);
    std::vector<float> a(c), mean_g(c), k(c), mean_f(c);
    const float *wp = w.data_ptr<float>();
    for (int64_t j = 0; j < c; ++j) {
      db[j] = sums[j];
      dw[j] = invstd[j] * (sums[c + j] - mean[j] * sums[j]);
      a[j] = (float)(wp[j] * invstd[j]);
      mean_g[j] = (float)(db[j] / rows);
      k[j] = (float)(wp[j] * invstd[j] * invstd[j] * dw[j] / rows);
      mean_f[j] = (float)mean[j];
    }
    if (ctx->needs_input_grad(0)) {
      auto dx = at::empty_like(x, format_of(x));
      float *dxp = dx.data_ptr<float>();
      const float *src = has_residual ? gmp : gp;
      at::parallel_for(0, rows, grain(c), [&](int64_t r0, int64_t r1) {
        rows_grad_input(src + r0 * c, xp + r0 * c, dxp + r0 * c, r1 - r0, c, scale, shift,
                        relu && !has_residual, a.data(), mean_g.data(), k.data(), mean_f.data());
      });
      out[0] = dx;
    }
    if (ctx->needs_input_grad(1)) out[1] = per_channel(dw).to(at::kFloat);
    if (ctx->needs_input_grad(2)) out[2] = per_channel(db).to(at::kFloat);
    if (has_residual) out[3] = gm;
    return out;
  }
};

// relu?(bn(x))
struct BatchNormAct : public torch::autograd::Function<BatchNormAct> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                            const at::Tensor &b, at::Tensor running_mean, at::Tensor running_var,
                            double momentum, double eps, bool relu) {
    return Impl::forward(ctx, x, w, b, at::Tensor(), running_mean, running_var, momentum, eps, relu);
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto g = Impl::backward(ctx, grads);
    return {g[0], g[1], g[2], {}, {}, {}, {}, {}};
  }
};

// relu(bn(x) + residual)
struct BatchNormAddRelu : public torch::autograd::Function<BatchNormAddRelu> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &w,
                            const at::Tensor &b, const at::Tensor &residual, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps) {
    return Impl::forward(ctx, x, w, b, residual, running_mean, running_var, momentum, eps, true);
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto g = Impl::backward(ctx, grads);
    return {g[0], g[1], g[2], g[3], {}, {}, {}, {}};
  }
};

bool fusable(const at::Tensor &x, const at::Tensor *residual, const at::Tensor &w, const at::Tensor &b,
             const at::Tensor &rm, const at::Tensor &rv) {
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat) return false;
  if (!(x.dim() == 2 && x.is_contiguous()) && !(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)))
    return false;
  const int64_t c = x.size(1);
  if (c == 0 || x.numel() / c < 2) return false;  // ATen raises the proper error
  for (const at::Tensor *t : {&w, &b, &rm, &rv})
    if (!t->defined() || t->scalar_type() != at::kFloat || !t->is_contiguous() || t->numel() != c ||
        !t->device().is_cpu())
      return false;
  if (residual && (residual->sizes() != x.sizes() || residual->scalar_type() != at::kFloat ||
                   !residual->is_contiguous(format_of(x)) || !residual->device().is_cpu()))
    return false;
  return true;
}
}  // namespace

extern "C" {
// The fused op's output in *out, or null in *out when the inputs are not ones it handles.
char *byol_batch_norm_act(at::Tensor *x, at::Tensor *w, at::Tensor *b, at::Tensor *residual,
                          at::Tensor *running_mean, at::Tensor *running_var, double momentum,
                          double eps, int relu, at::Tensor **out) {
  try {
    *out = nullptr;
    // A residual add without ReLU after it is not a shape the networks have.
    if ((residual && !relu) || !fusable(*x, residual, *w, *b, *running_mean, *running_var)) return nullptr;
    // Named in torch.profiler traces (a custom Function's forward is not recorded otherwise).
    RECORD_FUNCTION("byol_rs::batch_norm_act", std::vector<c10::IValue>());
    *out = new at::Tensor(
        residual ? BatchNormAddRelu::apply(*x, *w, *b, *residual, *running_mean, *running_var, momentum, eps)
                 : BatchNormAct::apply(*x, *w, *b, *running_mean, *running_var, momentum, eps, relu != 0));
    return nullptr;
  } catch (const std::exception &ex) {
    return strdup(ex.what());
  }
}
}
