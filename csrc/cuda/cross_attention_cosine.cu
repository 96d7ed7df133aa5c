// cross_attention_cosine on CUDA (DESIGN 2.3), forward and backward, batched over the whole batch.
//
// The same algebra as csrc/cpu/cross_attention_cosine.cpp: the d-long products are batched GEMMs
// on cuBLAS (G = V T^T, Gv = V V^T, Vhat = A T and, in the backward, the four gradient GEMMs);
// the masked two-way softmax and the cosine coefficients are the kernels of this file. That is
// never formed, and the backward recomputes everything from V and T. Intermediates are
// [B, Kr, N] and one [B, Kr, d] (Vhat), freed when the call returns.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cross_attention_cosine_args.h"
#include "cuda/value_checks.cuh"

namespace mmfast {
namespace {

constexpr const char* kForward = "cross_attention_cosine";
constexpr const char* kBackward = "cross_attention_cosine_backward";
constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename acc_t>
__device__ acc_t warp_max(acc_t value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value = max(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

template <typename acc_t>
__device__ acc_t warp_sum(acc_t value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// scale * g rounded to acc_t: never contracted with the subtraction of the softmax shift into an
// FMA, whose unrounded product can exceed the rounded maximum by an ulp of scale * g (exp(+1e3)
// = inf, then NaN, for |scale * g| ~ 1e10 in float32).
__device__ __forceinline__ float scaled(float scale, float g) { return __fmul_rn(scale, g); }
__device__ __forceinline__ double scaled(double scale, double g) { return __dmul_rn(scale, g); }

// One block per batch item. A [B, Kr, N]: each region's softmax of scale * G over the item's n
// valid words (a warp per region). P [B, Kr, N]: each valid word's softmax over the regions (a
// thread per word). Both are 0 at padded words, so padding drops out of every later product.
template <typename acc_t>
__global__ void two_way_softmax_kernel(const acc_t* __restrict__ gram, const int64_t* __restrict__ counts,
                                       int64_t regions, int64_t words, acc_t scale,
                                       acc_t* __restrict__ attn_words, acc_t* __restrict__ attn_regions) {
  const int64_t b = blockIdx.x;
  const int64_t n = counts[b];
  // The host checks the range in the "full" checks mode; this guards the others.
  CUDA_KERNEL_ASSERT(n >= 0 && n <= words);
  const acc_t* g = gram + b * regions * words;
  acc_t* a = attn_words + b * regions * words;
  acc_t* p = attn_regions + b * regions * words;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int warps = blockDim.x / kWarp;

  for (int64_t i = warp; i < regions; i += warps) {
    const acc_t* row = g + i * words;
    acc_t top = -INFINITY;
    for (int64_t j = lane; j < n; j += kWarp) top = max(top, scaled(scale, row[j]));
    top = warp_max(top);
    acc_t total = 0;
    for (int64_t j = lane; j < n; j += kWarp) total += exp(scaled(scale, row[j]) - top);
    total = warp_sum(total);
    for (int64_t j = lane; j < words; j += kWarp) {
      a[i * words + j] = j < n ? exp(scaled(scale, row[j]) - top) / total : acc_t(0);
    }
  }
  for (int64_t j = threadIdx.x; j < words; j += blockDim.x) {
    if (j >= n) {
      for (int64_t i = 0; i < regions; ++i) p[i * words + j] = 0;
      continue;
    }
    acc_t top = -INFINITY;
    for (int64_t i = 0; i < regions; ++i) top = max(top, scaled(scale, g[i * words + j]));
    acc_t total = 0;
    for (int64_t i = 0; i < regions; ++i) total += exp(scaled(scale, g[i * words + j]) - top);
    for (int64_t i = 0; i < regions; ++i) p[i * words + j] = exp(scaled(scale, g[i * words + j]) - top) / total;
  }
}

// Per entry (a region or a word): cos from (dot, |a|, |b|), or, given the output's gradient, the
// three coefficients of CosineGrad (alpha, self, other) into coefficients[3 * k ...].
template <typename acc_t>
__global__ void cosine_kernel(int64_t count, const acc_t* __restrict__ dot,
                              const acc_t* __restrict__ norm_a, const acc_t* __restrict__ norm_b,
                              const acc_t* __restrict__ grad, acc_t* __restrict__ out) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= count) return;
  if (grad == nullptr) {
    out[k] = cosine(dot[k], norm_a[k], norm_b[k]);
  } else {
    const CosineGrad<acc_t> c = cosine_grad(grad[k], dot[k], norm_a[k], norm_b[k]);
    out[3 * k] = c.alpha;
    out[3 * k + 1] = c.self;
    out[3 * k + 2] = c.other;
  }
}

// dot, |a|, |b| -> cosines [count] (grad undefined) or coefficients [count, 3].
at::Tensor launch_cosine(const at::Tensor& dot, const at::Tensor& norm_a, const at::Tensor& norm_b,
                         const at::Tensor& grad) {
  const int64_t count = dot.numel();
  at::Tensor out = grad.defined() ? at::empty({count, 3}, dot.options()) : at::empty_like(dot);
  if (count == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((count + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(dot.scalar_type(), "cross_attention_cosine_cosine", [&] {
    cosine_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        count, dot.const_data_ptr<scalar_t>(), norm_a.const_data_ptr<scalar_t>(),
        norm_b.const_data_ptr<scalar_t>(),
        grad.defined() ? grad.const_data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// What both directions need, recomputed from the inputs (all [B, ...], acc dtype, padding 0).
struct Attention {
  at::Tensor regions, words, valid;          // V [B, Kr, d], T [B, N, d], [B, N] bool
  at::Tensor gram, attn_words, attn_regions, gram_vv_attn, v_hat, t_hat;  // t_hat: forms_t_hat
  at::Tensor v_norm, v_hat_norm, v_dot, t_norm, t_hat_norm, t_dot;
};

// Raises when a region or valid word is not finite, or its squared norm overflows: the messages
// of the CPU kernel's check_row. A norm is finite exactly when neither happens, so one reduction
// and one sync cover both inputs; only the failure path looks for the first bad row.
void check_norms(const at::Tensor& v_norm, const at::Tensor& t_norm, const at::Tensor& regions,
                 const at::Tensor& words) {
  if ((at::isfinite(v_norm).all() & at::isfinite(t_norm).all()).item<bool>()) return;
  const bool v_bad = !at::isfinite(v_norm).all().item<bool>();
  const at::Tensor bad = (~at::isfinite(v_bad ? v_norm : t_norm)).nonzero()[0];
  const int64_t b = bad[0].item<int64_t>(), i = bad[1].item<int64_t>();
  const at::Tensor& rows = v_bad ? regions : words;
  const char* name = v_bad ? "V" : "T";
  TORCH_CHECK_VALUE(at::isfinite(rows[b][i]).all().item<bool>(), kForward, ": ", name,
                    " must be finite, but ", name, "[", b, ", ", i, "]",
                    v_bad ? "" : " (a valid word)", " has a NaN or infinite value");
  TORCH_CHECK_VALUE(false, kForward, ": the squared norm of ", name, "[", b, ", ", i,
                    "] overflows ", rows.scalar_type() == at::kDouble ? "float64" : "float32");
}

Attention attend(const at::Tensor& V, const at::Tensor& T, const at::Tensor& counts, double scale) {
  Attention state;
  const at::ScalarType acc = V.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t batch = V.size(0), regions = V.size(1), words = T.size(1);
  state.valid = at::arange(words, counts.options()).unsqueeze(0) < counts.unsqueeze(1);
  state.regions = V.to(acc).contiguous();
  // Padded words take no part, whatever they hold (NaN included).
  state.words = at::where(state.valid.unsqueeze(2), T.to(acc), at::zeros({}, V.options().dtype(acc)))
                  .contiguous();
  state.v_norm = state.regions.norm(2, {2});
  state.t_norm = state.words.norm(2, {2});
  if (batch > 0 && cuda_value_checks()) {
    check_norms(state.v_norm, state.t_norm, state.regions, state.words);
  }
  state.gram = at::bmm(state.regions, state.words.transpose(1, 2));       // [B, Kr, N]
  state.attn_words = at::empty_like(state.gram);
  state.attn_regions = at::empty_like(state.gram);
  if (batch > 0 && regions > 0 && words > 0) {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(acc, "cross_attention_cosine_softmax", [&] {
      two_way_softmax_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
          state.gram.const_data_ptr<scalar_t>(), counts.const_data_ptr<int64_t>(), regions, words,
          static_cast<scalar_t>(scale), state.attn_words.data_ptr<scalar_t>(),
          state.attn_regions.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    state.attn_words.zero_();
    state.attn_regions.zero_();
  }
  state.v_hat = at::bmm(state.attn_words, state.words);                // [B, Kr, d]
  state.v_hat_norm = state.v_hat.norm(2, {2});
  state.v_dot = (state.regions * state.v_hat).sum(2);                  // V_i.Vhat_i, as the CPU
  if (CrossAttentionShape{batch, regions, words, V.size(2)}.forms_t_hat()) {  // That, or the region Gram: see CrossAttentionShape
    state.t_hat = at::bmm(state.attn_regions.transpose(1, 2), state.regions);  // [B, N, d]
    state.t_dot = (state.words * state.t_hat).sum(2);
    state.t_hat_norm = state.t_hat.norm(2, {2});
    return state;
  }
  const at::Tensor gram_vv = at::bmm(state.regions, state.regions.transpose(1, 2));  // [B, Kr, Kr]
  state.gram_vv_attn = at::bmm(gram_vv, state.attn_regions);           // Gv P [B, Kr, N]
  state.t_dot = (state.attn_regions * state.gram).sum(1);              // T_j.That_j
  state.t_hat_norm = (state.attn_regions * state.gram_vv_attn).sum(1).clamp_min(0).sqrt();  // |That_j|
  return state;
}

std::tuple<at::Tensor, at::Tensor> cross_attention_cosine_cuda(
    const at::Tensor& V, const at::Tensor& T, const std::optional<at::Tensor>& t_lengths,
    double scale) {
  const CrossAttentionShape shape = check_cross_attention_cosine_args(kForward, V, T, t_lengths);
  const c10::cuda::CUDAGuard guard(V.device());
  // ATen ops on the inputs below, without recording them for autograd.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor counts = checked_word_counts(kForward, t_lengths, shape, V, cuda_value_checks());
  const Attention state = attend(V, T, counts, scale);
  const at::Tensor v_bar = launch_cosine(state.v_dot, state.v_norm, state.v_hat_norm, at::Tensor());
  const at::Tensor t_bar =
      launch_cosine(state.t_dot, state.t_norm, state.t_hat_norm, at::Tensor()) * state.valid;
  return {v_bar.to(V.scalar_type()), t_bar.to(V.scalar_type())};
}

// The backward of csrc/cpu/cross_attention_cosine.cpp (see backward_item there), batched.
std::tuple<at::Tensor, at::Tensor> cross_attention_cosine_backward_cuda(
    const at::Tensor& grad_v_bar, const at::Tensor& grad_t_bar, const at::Tensor& V,
    const at::Tensor& T, const std::optional<at::Tensor>& t_lengths, double scale) {
  const CrossAttentionShape shape = check_cross_attention_cosine_args(kBackward, V, T, t_lengths);
  check_cross_attention_cosine_grads(kBackward, grad_v_bar, grad_t_bar, V, shape);
  const c10::cuda::CUDAGuard guard(V.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor counts = checked_word_counts(kBackward, t_lengths, shape, V, cuda_value_checks());
  const Attention state = attend(V, T, counts, scale);
  const at::ScalarType acc = state.regions.scalar_type();
  // [B, Kr, 3] and [B, N, 3]: alpha, self, other; padded words have a zero gradient, so zeros.
  const at::Tensor region_grad = launch_cosine(state.v_dot, state.v_norm, state.v_hat_norm,
                                               grad_v_bar.to(acc).contiguous())
                                     .view({shape.batch, shape.regions, 3});
  const at::Tensor word_grad =
      launch_cosine(state.t_dot, state.t_norm, state.t_hat_norm,
                    (grad_t_bar.to(acc) * state.valid).contiguous())
          .view({shape.batch, shape.words, 3});
  const auto coefficient = [](const at::Tensor& c, int64_t k) { return c.select(2, k); };
  const at::Tensor alpha_v = coefficient(region_grad, 0).unsqueeze(2);  // [B, Kr, 1]
  const at::Tensor other_v = coefficient(region_grad, 2).unsqueeze(2);
  const at::Tensor alpha_t = coefficient(word_grad, 0).unsqueeze(1);    // [B, 1, N]
  const at::Tensor other_t = coefficient(word_grad, 2).unsqueeze(1);

  const at::Tensor& a = state.attn_words;
  const at::Tensor& p = state.attn_regions;
  // Y and Z of the CPU backward_item, formed elementwise (they cancel at |cos| = 1).
  const at::Tensor v_side = alpha_v * state.regions + other_v * state.v_hat;  // [B, Kr, d]
  const at::Tensor grad_a = at::bmm(v_side, state.words.transpose(1, 2));     // [B, Kr, N]
  const bool explicit_t_hat = state.t_hat.defined();
  at::Tensor t_side;  // Z, where That was formed
  if (explicit_t_hat) {
    t_side = alpha_t.transpose(1, 2) * state.words + other_t.transpose(1, 2) * state.t_hat;
  }
  const at::Tensor grad_p = explicit_t_hat
                                ? at::bmm(state.regions, t_side.transpose(1, 2))
                                : alpha_t * state.gram + other_t * state.gram_vv_attn;
  const at::Tensor grad_s = a * (grad_a - (grad_a * a).sum(2, true)) +
                            p * (grad_p - (grad_p * p).sum(1, true));
  const at::Tensor self_v = coefficient(region_grad, 1).unsqueeze(2);    // [B, Kr, 1]
  const at::Tensor self_t = coefficient(word_grad, 1).unsqueeze(2);      // [B, N, 1]
  // The direct terms elementwise, as on the CPU (they cancel at |cos| = 1); with That at hand
  // its terms go through Z (P Z = P diag(alpha') T + M V) rather than through C and M.
  at::Tensor grad_V, grad_T;
  if (explicit_t_hat) {
    const at::Tensor c = scale * grad_s;                                        // [B, Kr, N]
    grad_V = at::bmm(c, state.words).baddbmm_(p, t_side) +
             (alpha_v * state.v_hat + self_v * state.regions);
    grad_T = (self_t * state.words + alpha_t.transpose(1, 2) * state.t_hat)
                 .baddbmm_(c.transpose(1, 2), state.regions)
                 .baddbmm_(a.transpose(1, 2), v_side);
  } else {
    const at::Tensor c = scale * grad_s + p * alpha_t;                          // [B, Kr, N]
    const at::Tensor m = at::bmm(p * other_t, p.transpose(1, 2));               // [B, Kr, Kr]
    grad_V = at::bmm(c, state.words).baddbmm_(m, state.regions) +
             (alpha_v * state.v_hat + self_v * state.regions);
    grad_T = (self_t * state.words)
                 .baddbmm_(c.transpose(1, 2), state.regions)
                 .baddbmm_(a.transpose(1, 2), v_side);
  }
  return {grad_V.to(V.scalar_type()), grad_T.to(T.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("cross_attention_cosine", &cross_attention_cosine_cuda);
  m.impl("_cross_attention_cosine_backward", &cross_attention_cosine_backward_cuda);
}

}  // namespace mmfast
