// CACNet on the CPU (DESIGN 2.4): the elementwise epilogues of csrc/common/cacnet.h's schedule
// as at::parallel_for loops; the GEMMs are ATen's.
//
// The BCE epilogue evaluates exp and log1p on every logit, several times per training iteration
// (each sub-network and the full network): scalar libm calls would cost a sizable fraction of
// the GEMMs, so float32 uses vectorized Cephes polynomials (within 2 ulp of libm).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/cacnet.h"
#include "common/simd.h"

namespace mmfast::cacnet {
namespace {

using simd::kLanes;
using simd::vfloat;
using simd::vint;

constexpr int64_t kGrainElements = 32768;  // elements per parallel work item

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1)); }

template <Activation A, typename T>
inline T activate(T v) {
  if constexpr (A == Activation::kRelu) return v <= T(0) ? T(0) : v;  // NaN stays NaN, as torch.relu
  if constexpr (A == Activation::kTanh) return std::tanh(v);
  if constexpr (A == Activation::kSigmoid) return T(1) / (T(1) + std::exp(-v));
}

// log(1 + e) for e in [0, 1] (Cephes logf polynomial for log(1 + m), |m| <= sqrt(2) - 1).
// Below sqrt(2) - 1 the polynomial takes e itself, which keeps full relative precision for tiny
// e (log(1 + e) would round 1 + e first); above, 1 + e = 2 (1 + (e - 1) / 2).
inline vfloat log1p_unit(vfloat e) {
  const vint small = e < 0.41421356f;
  const vfloat m = small ? e : (e - 1.0f) * 0.5f;
  const vfloat m2 = m * m;
  vfloat p = simd::broadcast(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const vfloat log1p_m = m + (p * m * m2 - 0.5f * m2);
  return small ? log1p_m : log1p_m + 0.693147180559945309f;
}

// Stable BCE with logits: with e = exp(-|z|), BCE(z, t) = max(z, 0) - z t + log1p(e) and
// sigmoid(z) = (z >= 0 ? 1 : e) / (1 + e).
inline void bce_lanes(vfloat z, vfloat t, vfloat& loss, vfloat& sigmoid) {
  const vfloat zero = vfloat{};
  const vint positive = z >= zero;
  const vfloat e = simd::exp(positive ? -z : z);
  loss = (positive ? z : zero) - z * t + log1p_unit(e);
  sigmoid = (positive ? simd::broadcast(1.0f) : e) / (1.0f + e);
}

template <typename T>
inline void bce_scalar(T z, T t, T& loss, T& sigmoid) {
  const T e = std::exp(-std::abs(z));
  loss = std::max(z, T(0)) - z * t + std::log1p(e);
  sigmoid = (z >= T(0) ? T(1) : e) / (T(1) + e);
}

// One row: z = logits (+ bias), written back when there is a bias; returns sum_c BCE.
template <bool kBias, bool kGrad>
float bce_row(float* logits, const float* bias, const float* targets, float* grad, int64_t cols,
              float grad_scale) {
  vfloat loss_sum{};
  for (int64_t c = 0; c < cols; c += kLanes) {
    const int64_t lanes = std::min<int64_t>(kLanes, cols - c);
    const size_t bytes = lanes * sizeof(float);
    // The last partial vector goes through zero-padded copies, so every logit takes one path.
    vfloat z{}, t{}, b{};
    __builtin_memcpy(&z, logits + c, bytes);
    __builtin_memcpy(&t, targets + c, bytes);
    if constexpr (kBias) {
      __builtin_memcpy(&b, bias + c, bytes);
      z += b;
      __builtin_memcpy(logits + c, &z, bytes);
    }
    vfloat loss, sigmoid;
    bce_lanes(z, t, loss, sigmoid);
    if (lanes < kLanes) loss = simd::iota(0) < int32_t(lanes) ? loss : vfloat{};
    loss_sum += loss;
    if constexpr (kGrad) {
      const vfloat g = (sigmoid - t) * grad_scale;
      __builtin_memcpy(grad + c, &g, bytes);
    }
  }
  return simd::sum(loss_sum);
}

template <bool kBias, bool kGrad>
double bce_row(double* logits, const double* bias, const double* targets, double* grad,
               int64_t cols, double grad_scale) {
  double total = 0.0;
  for (int64_t c = 0; c < cols; ++c) {
    if constexpr (kBias) logits[c] += bias[c];
    double loss, sigmoid;
    bce_scalar(logits[c], targets[c], loss, sigmoid);
    total += loss;
    if constexpr (kGrad) grad[c] = (sigmoid - targets[c]) * grad_scale;
  }
  return total;
}

struct CpuKernels {
  struct DeviceGuard {
    explicit DeviceGuard(at::Device) {}
  };

  static bool checks_values() { return full_checks(); }

  // Branch-free so that the loop vectorizes: a reduction with early exit would not.
  static bool all_valid(const at::Tensor& t, bool binary) {
    const at::Tensor values = t.contiguous();
    bool valid = true;
    AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cacnet_all_valid", [&] {
      const scalar_t* v = values.const_data_ptr<scalar_t>();
      const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
      valid = at::parallel_reduce(
          0, values.numel(), kGrainElements, true,
          [&](int64_t begin, int64_t end, bool ok) {
            int bad = 0;
            if (binary) {
              for (int64_t i = begin; i < end; ++i) bad |= (v[i] != scalar_t(0)) & (v[i] != scalar_t(1));
            } else {
              // NaN fails both comparisons; +-inf fails the second.
              for (int64_t i = begin; i < end; ++i) bad |= !((v[i] == v[i]) & (std::abs(v[i]) < inf));
            }
            return ok && !bad;
          },
          [](bool a, bool b) { return a && b; });
    });
    return valid;
  }

  static void bias_activation(const at::Tensor& out, const at::Tensor& pre, const at::Tensor& pre2,
                              const at::Tensor& bias, Activation activation) {
    const int64_t cols = bias.numel(), rows = cols ? out.numel() / cols : 0;
    const at::Tensor bias_c = bias.contiguous();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cacnet_bias_activation", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      const scalar_t* a = pre.const_data_ptr<scalar_t>();
      const scalar_t* a2 = pre2.defined() ? pre2.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* b = bias_c.const_data_ptr<scalar_t>();
      dispatch_activation(activation, [&](auto act) {
        constexpr Activation A = decltype(act)::value;
        at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const int64_t offset = r * cols;
            if (a2) {
              for (int64_t c = 0; c < cols; ++c) {
                o[offset + c] = activate<A>(a[offset + c] + a2[offset + c] + b[c]);
              }
            } else {
              for (int64_t c = 0; c < cols; ++c) {
                o[offset + c] = activate<A>(a[offset + c] + b[c]);
              }
            }
          }
        });
      });
    });
  }

  static void activation_backward_(const at::Tensor& grad, const at::Tensor& out,
                                   Activation activation) {
    const int64_t numel = grad.numel();
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "cacnet_activation_backward", [&] {
      scalar_t* g = grad.data_ptr<scalar_t>();
      const scalar_t* y = out.const_data_ptr<scalar_t>();
      dispatch_activation(activation, [&](auto act) {
        constexpr Activation A = decltype(act)::value;
        at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) g[i] *= activation_slope<A>(y[i]);
        });
      });
    });
  }

  static void bce_with_logits(const at::Tensor& logits, const at::Tensor& bias,
                              const at::Tensor& targets, const at::Tensor& loss,
                              const at::Tensor& grad, double grad_scale) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    const at::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cacnet_bce_with_logits", [&] {
      // Without a bias the logits are only read.
      scalar_t* z = const_cast<scalar_t*>(logits.const_data_ptr<scalar_t>());
      const scalar_t* t = targets.const_data_ptr<scalar_t>();
      const scalar_t* b = bias.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* l = loss.defined() ? loss.data_ptr<scalar_t>() : nullptr;
      scalar_t* g = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
      const auto scale = static_cast<scalar_t>(grad_scale);
      const auto run = [&](auto with_bias, auto with_grad) {
        constexpr bool kBias = decltype(with_bias)::value, kGrad = decltype(with_grad)::value;
        at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t total = bce_row<kBias, kGrad>(
                z + r * cols, b, t + r * cols, g ? g + r * cols : nullptr, cols, scale);
            if (l) l[r] = total / static_cast<scalar_t>(cols);
          }
        });
      };
      using Yes = std::true_type;
      using No = std::false_type;
      if (b && g) run(Yes{}, Yes{});
      else if (b) run(Yes{}, No{});
      else if (g) run(No{}, Yes{});
      else run(No{}, No{});
    });
  }
};

using CpuSchedule = Schedule<CpuKernels>;

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("cacnet_forward", &CpuSchedule::forward);
  m.impl("_cacnet_forward_backward", &CpuSchedule::forward_backward);
  m.impl("cacnet_phase1", &CpuSchedule::phase1);
  m.impl("cacnet_phase2_forward", &CpuSchedule::phase2_forward);
  m.impl("cacnet_phase2_full_backward", &CpuSchedule::phase2_full_backward);
  m.impl("cacnet_phase2_cross_active", &CpuSchedule::phase2_cross_active);
}

}  // namespace mmfast::cacnet
