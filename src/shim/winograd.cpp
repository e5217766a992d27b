// 3x3, stride 1, padding 1 convolution without bias by Winograd's F(2x2, 3x3) (Lavin & Gray,
// arXiv 1509.09308), as one autograd op, for fp32 CPU activations in NHWC (channels_last) with
// even height and width:
//
//     Y = A^T [ (G g G^T) . (B^T d B) ] A   per 2x2 output tile,
//
// so each tile's 36 multiply-adds per channel pair become 16, done as 16 GEMMs. oneDNN
// runs its direct kernels at 4x4 pixels (ResNet layer 4 at 32 px) well under peak; there this
// op is faster. The backward is two more of the same shape: dX is this convolution of dY with
// the flipped, transposed kernel (whose transform is a permutation of U), and dW is
// G^T (sum over tiles of dM^T V) G. V is recomputed from x rather than kept.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>
#include <cstring>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// V[16][T][C] = B^T d B for every 4x4 input tile d (zero outside the image), T = N * H/2 * W/2.
at::Tensor input_transform(const at::Tensor &x) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t th = h / 2, tw = w / 2, tiles = n * th * tw;
  auto v = at::empty({16, tiles, c}, x.options());
  const float *xp = x.data_ptr<float>();
  float *vp = v.data_ptr<float>();
  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> zero(c, 0.f), r(16 * c);
    const float *d[4][4];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t y = 2 * ty + i - 1, xx = 2 * tx + j - 1;
          d[i][j] = (y < 0 || y >= h || xx < 0 || xx >= w) ? zero.data() : xp + ((img * h + y) * w + xx) * c;
        }
      // Rows: r[a][j] = (B^T d)[a][j]; B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
      for (int j = 0; j < 4; ++j) {
        float *r0 = &r[(0 * 4 + j) * c], *r1 = &r[(1 * 4 + j) * c], *r2 = &r[(2 * 4 + j) * c], *r3 = &r[(3 * 4 + j) * c];
        const float *d0 = d[0][j], *d1 = d[1][j], *d2 = d[2][j], *d3 = d[3][j];
        for (int64_t k = 0; k < c; ++k) {
          r0[k] = d0[k] - d2[k];
          r1[k] = d1[k] + d2[k];
          r2[k] = d2[k] - d1[k];
          r3[k] = d1[k] - d3[k];
        }
      }
      // Columns: V[a][b] = (r B)[a][b].
      for (int a = 0; a < 4; ++a) {
        const float *q0 = &r[(a * 4 + 0) * c], *q1 = &r[(a * 4 + 1) * c], *q2 = &r[(a * 4 + 2) * c], *q3 = &r[(a * 4 + 3) * c];
        float *o0 = vp + ((a * 4 + 0) * tiles + t) * c, *o1 = vp + ((a * 4 + 1) * tiles + t) * c;
        float *o2 = vp + ((a * 4 + 2) * tiles + t) * c, *o3 = vp + ((a * 4 + 3) * tiles + t) * c;
        for (int64_t k = 0; k < c; ++k) {
          o0[k] = q0[k] - q2[k];
          o1[k] = q1[k] + q2[k];
          o2[k] = q2[k] - q1[k];
          o3[k] = q1[k] - q3[k];
        }
      }
    }
  });
  return v;
}

// Y (NHWC, [n, k, h, w] channels_last) = A^T M A per tile; A^T = [[1,1,1,0],[0,1,-1,-1]].
at::Tensor output_transform(const at::Tensor &m, int64_t n, int64_t h, int64_t w) {
  const int64_t k = m.size(2), th = h / 2, tw = w / 2, tiles = n * th * tw;
  auto y = at::empty({n, k, h, w}, m.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float *mp = m.data_ptr<float>();
  float *yp = y.data_ptr<float>();
  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(8 * k);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
      auto at_ = [&](int a, int b) { return mp + ((a * 4 + b) * tiles + t) * k; };
      // s[p][b] = (A^T M)[p][b]
      for (int b = 0; b < 4; ++b) {
        const float *m0 = at_(0, b), *m1 = at_(1, b), *m2 = at_(2, b), *m3 = at_(3, b);
        float *s0 = &s[(0 * 4 + b) * k], *s1 = &s[(1 * 4 + b) * k];
        for (int64_t j = 0; j < k; ++j) {
          s0[j] = m0[j] + m1[j] + m2[j];
          s1[j] = m1[j] - m2[j] - m3[j];
        }
      }
      for (int p = 0; p < 2; ++p) {
        const float *q0 = &s[(p * 4 + 0) * k], *q1 = &s[(p * 4 + 1) * k], *q2 = &s[(p * 4 + 2) * k], *q3 = &s[(p * 4 + 3) * k];
        float *y0 = yp + ((img * h + 2 * ty + p) * w + 2 * tx) * k, *y1 = y0 + k;
        for (int64_t j = 0; j < k; ++j) {
          y0[j] = q0[j] + q1[j] + q2[j];
          y1[j] = q1[j] - q2[j] - q3[j];
        }
      }
    }
  });
  return y;
}

// dM[16][T][K] = A dY A^T per tile: the adjoint of output_transform.
at::Tensor output_transform_adjoint(const at::Tensor &dy) {
  const int64_t n = dy.size(0), k = dy.size(1), h = dy.size(2), w = dy.size(3);
  const int64_t th = h / 2, tw = w / 2, tiles = n * th * tw;
  auto dm = at::empty({16, tiles, k}, dy.options().memory_format(at::MemoryFormat::Contiguous));
  const float *gp = dy.data_ptr<float>();
  float *mp = dm.data_ptr<float>();
  // A = [[1,0],[1,1],[1,-1],[0,-1]]: row a of A times (g0, g1) is g0 + g1, g0, g0 - g1... per a.
  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(8 * k);  // s[a][q] = (A dY)[a][q]
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
      for (int q = 0; q < 2; ++q) {
        const float *g0 = gp + ((img * h + 2 * ty) * w + 2 * tx + q) * k, *g1 = g0 + w * k;
        float *a0 = &s[(0 * 2 + q) * k], *a1 = &s[(1 * 2 + q) * k], *a2 = &s[(2 * 2 + q) * k], *a3 = &s[(3 * 2 + q) * k];
        for (int64_t j = 0; j < k; ++j) {
          a0[j] = g0[j];
          a1[j] = g0[j] + g1[j];
          a2[j] = g0[j] - g1[j];
          a3[j] = -g1[j];
        }
      }
      for (int a = 0; a < 4; ++a) {
        const float *q0 = &s[(a * 2 + 0) * k], *q1 = &s[(a * 2 + 1) * k];
        float *o0 = mp + ((a * 4 + 0) * tiles + t) * k, *o1 = mp + ((a * 4 + 1) * tiles + t) * k;
        float *o2 = mp + ((a * 4 + 2) * tiles + t) * k, *o3 = mp + ((a * 4 + 3) * tiles + t) * k;
        for (int64_t j = 0; j < k; ++j) {
          o0[j] = q0[j];
          o1[j] = q0[j] + q1[j];
          o2[j] = q0[j] - q1[j];
          o3[j] = -q1[j];
        }
      }
    }
  });
  return dm;
}

// G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]].
constexpr float kG[4][3] = {{1.f, 0.f, 0.f}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0.f, 0.f, 1.f}};

// U[16][K][C] = G g G^T for the weight [K, C, 3, 3] (any layout).
at::Tensor weight_transform(const at::Tensor &weight) {
  const int64_t k = weight.size(0), c = weight.size(1);
  auto g = weight.permute({0, 2, 3, 1}).contiguous();  // [K, 3, 3, C]
  auto u = at::empty({16, k, c}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  const float *gp = g.data_ptr<float>();
  float *up = u.data_ptr<float>();
  at::parallel_for(0, k, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> r(12 * c);  // r[a][j] = (G g)[a][j]
    for (int64_t o = k0; o < k1; ++o) {
      const float *w = gp + o * 9 * c;
      for (int a = 0; a < 4; ++a)
        for (int j = 0; j < 3; ++j) {
          float *dst = &r[(a * 3 + j) * c];
          for (int64_t i = 0; i < c; ++i)
            dst[i] = kG[a][0] * w[(0 * 3 + j) * c + i] + kG[a][1] * w[(1 * 3 + j) * c + i] + kG[a][2] * w[(2 * 3 + j) * c + i];
        }
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          float *dst = up + ((a * 4 + b) * k + o) * c;
          const float *r0 = &r[(a * 3 + 0) * c], *r1 = &r[(a * 3 + 1) * c], *r2 = &r[(a * 3 + 2) * c];
          for (int64_t i = 0; i < c; ++i) dst[i] = kG[b][0] * r0[i] + kG[b][1] * r1[i] + kG[b][2] * r2[i];
        }
    }
  });
  return u;
}

// dW [K, C, 3, 3] channels_last = G^T dU G, the adjoint of weight_transform; dU is [16][K][C].
at::Tensor weight_transform_adjoint(const at::Tensor &du) {
  const int64_t k = du.size(1), c = du.size(2);
  auto dw = at::empty({k, c, 3, 3}, du.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float *dp = du.data_ptr<float>();
  float *wp = dw.data_ptr<float>();  // [K, 3, 3, C] in memory
  at::parallel_for(0, k, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> r(12 * c);  // r[a][j] = sum_b dU[a][b] G[b][j]
    for (int64_t o = k0; o < k1; ++o) {
      for (int a = 0; a < 4; ++a)
        for (int j = 0; j < 3; ++j) {
          float *dst = &r[(a * 3 + j) * c];
          for (int64_t i = 0; i < c; ++i) {
            float s = 0.f;
            for (int b = 0; b < 4; ++b) s += dp[((a * 4 + b) * k + o) * c + i] * kG[b][j];
            dst[i] = s;
          }
        }
      for (int i3 = 0; i3 < 3; ++i3)
        for (int j = 0; j < 3; ++j) {
          float *dst = wp + ((o * 3 + i3) * 3 + j) * c;
          for (int64_t i = 0; i < c; ++i) {
            float s = 0.f;
            for (int a = 0; a < 4; ++a) s += kG[a][i3] * r[(a * 3 + j) * c + i];
            dst[i] = s;
          }
        }
    }
  });
  return dw;
}

// out[i] = a[i] @ b[perm[i]] for the 16 Winograd components, one GEMM each: a permuted b needs
// no copy, and a run of plain GEMMs leaves MKL fewer cached buffers than one batched call.
at::Tensor component_mm(const at::Tensor &a, const at::Tensor &b, const int64_t *perm) {
  auto out = at::empty({16, a.size(1), b.size(2)}, a.options().memory_format(at::MemoryFormat::Contiguous));
  for (int64_t i = 0; i < 16; ++i) {
    auto o = out.select(0, i);
    at::mm_out(o, a.select(0, i), b.select(0, perm ? perm[i] : i));
  }
  return out;
}

// Component ab of the flipped kernel's transform is component perm(a) perm(b) of U, read as
// [K][C] instead of [C][K]: reversing G's columns swaps its first and last rows.
constexpr int64_t kFlipped[16] = {15, 13, 14, 12, 7, 5, 6, 4, 11, 9, 10, 8, 3, 1, 2, 0};

// x [N, C, H, W] channels_last, U [16][K][C] -> y [N, K, H, W] channels_last; with `perm`, by
// the kernel whose transform has components U[perm[i]]^T. U is taken over and freed before the
// output is allocated (the peak of a backward is here).
at::Tensor convolve(const at::Tensor &x, at::Tensor u_kc, const int64_t *perm = nullptr) {
  auto m = component_mm(input_transform(x), perm ? u_kc : u_kc.transpose(1, 2), perm);
  u_kc.reset();
  return output_transform(m, x.size(0), x.size(2), x.size(3));
}

struct Winograd : public torch::autograd::Function<Winograd> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight) {
    ctx->save_for_backward({x, weight});
    return convolve(x, weight_transform(weight));
  }
  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    at::Tensor dx, dw;
    if (!grads[0].defined()) return {dx, dw};
    auto dy = grads[0].contiguous(at::MemoryFormat::ChannelsLast);
    if (ctx->needs_input_grad(0)) {
      // conv(dY, flip(W)^T), whose transform is U permuted and read as [K][C].
      dx = convolve(dy, weight_transform(weight), kFlipped);
    }
    if (ctx->needs_input_grad(1)) {
      auto du = component_mm(output_transform_adjoint(dy).transpose(1, 2), input_transform(x), nullptr);  // [16][K][C]
      dw = weight_transform_adjoint(du);
    }
    return {dx, dw};
  }
};

bool usable(const at::Tensor &x, const at::Tensor &w) {
  // Under autocast ATen's convolution would run in the lower precision.
  if (at::autocast::is_autocast_enabled(at::kCPU)) return false;
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.size(2) % 2 == 0 && x.size(3) % 2 == 0 &&
         x.size(0) > 0 && w.device().is_cpu() && w.scalar_type() == at::kFloat && w.dim() == 4 &&
         w.size(1) == x.size(1) && w.size(2) == 3 && w.size(3) == 3;
}
}  // namespace

extern "C" {
// 3x3 stride-1 padding-1 convolution of x by weight through Winograd F(2x2, 3x3); null in *out
// when the inputs are not fp32 CPU NHWC with even height and width.
char *byol_winograd_conv3x3(at::Tensor *x, at::Tensor *weight, at::Tensor **out) {
  try {
    *out = nullptr;
    if (!usable(*x, *weight)) return nullptr;
    RECORD_FUNCTION("byol_rs::winograd_conv3x3", std::vector<c10::IValue>());
    *out = new at::Tensor(Winograd::apply(*x, *weight));
    return nullptr;
  } catch (const std::exception &ex) {
    return strdup(ex.what());
  }
}
}
