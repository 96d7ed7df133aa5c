// cross_attention_cosine on the CPU (DESIGN 2.3), forward and backward, one batch item at a time.
//
// Per item (Kr regions, n valid words, d dims) everything lives in a per-thread workspace that
// fits in L2, and the only d-long products are GEMMs:
//   G = V T^T [Kr, n], A = softmax_words(scale G), P = softmax_regions(scale G), Vhat = A T [Kr, d],
//   Gv P = V That^T [Kr, n].
// That = P^T V is formed where it is the cheaper product (CrossAttentionShape::forms_t_hat);
// otherwise T_j.That_j = sum_i P_ij G_ij and |That_j|^2 = sum_i P_ij (Gv P)_ij through the
// region Gram Gv = V V^T. The backward recomputes these from V and T (nothing but the inputs is saved)
// and folds every gradient term into two GEMM pairs (see backward_item).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cross_attention_cosine_args.h"
#include "common/simd.h"

namespace mmfast {
namespace {

using simd::kLanes;
using simd::vfloat;

constexpr const char* kForward = "cross_attention_cosine";
constexpr const char* kBackward = "cross_attention_cosine_backward";

// values[k] = exp(values[k] - shift[k]): the numerators of a softmax. The caller has already
// scaled the values and taken the shift from those very values: recomputing scale * g here
// would let the compiler contract it with the subtraction into an FMA, whose unrounded product
// exceeds the rounded maximum by up to an ulp of scale * g (exp(+1e3) = inf, then NaN, for
// |scale * g| ~ 1e10 in float32).
template <typename acc_t>
void exp_shifted(acc_t* __restrict values, const acc_t* __restrict shift, int64_t n) {
  int64_t k = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    for (; k + kLanes <= n; k += kLanes) {
      simd::store(values + k, simd::exp(simd::load(values + k) - simd::load(shift + k)));
    }
  }
  for (; k < n; ++k) values[k] = std::exp(values[k] - shift[k]);
}

template <typename acc_t>
acc_t dot(const acc_t* __restrict a, const acc_t* __restrict b, int64_t n) {
  if constexpr (std::is_same_v<acc_t, float>) return simd::dot(a, b, n);
  acc_t sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// A row's squared norm is finite exactly when its values are, unless it overflows; only then is
// the row read again, to tell which.
template <typename acc_t>
void check_row(const char* name, const acc_t* row, int64_t d, acc_t squared_norm,
               int64_t batch_index, int64_t row_index, const char* what) {
  if (std::isfinite(squared_norm)) return;
  bool finite = true;
  for (int64_t k = 0; k < d; ++k) finite &= std::isfinite(row[k]);
  TORCH_CHECK_VALUE(finite, kForward, ": ", name, " must be finite, but ", name, "[",
                    batch_index, ", ", row_index, "]", what, " has a NaN or infinite value");
  TORCH_CHECK_VALUE(false, kForward, ": the squared norm of ", name, "[", batch_index, ", ",
                    row_index, "] overflows ", sizeof(acc_t) == 4 ? "float32" : "float64");
}

// Scratch of one thread, sized for the largest item; each matrix is viewed [rows, n] contiguous.
template <typename acc_t>
struct Workspace {
  at::Tensor gram_vt, gram_vv, attn_words, attn_regions, gram_vv_attn, v_hat;
  at::Tensor regions_acc, words_acc;  // V and T items cast to acc_t (when they are not already)
  at::Tensor t_hat;                   // That [n, d], where the shape forms_t_hat
  at::Tensor v_side, t_side;          // backward: alpha V + other Vhat [Kr, d], the same for T
  std::vector<acc_t> shift;           // softmax maxima (per region, then per word)
  // Per region: |V_i|, |Vhat_i|, V_i.Vhat_i. Per word: |T_j|, |That_j|, T_j.That_j.
  std::vector<acc_t> v_norm, v_hat_norm, v_dot, t_norm, t_hat_norm, t_dot;

  Workspace(const CrossAttentionShape& s, const at::TensorOptions& options)
      : shift(s.words), v_norm(s.regions), v_hat_norm(s.regions),
        v_dot(s.regions), t_norm(s.words), t_hat_norm(s.words), t_dot(s.words) {
    const int64_t kn = s.regions * s.words;
    gram_vt = at::empty({kn}, options);
    gram_vv = at::empty({s.regions, s.regions}, options);
    attn_words = at::empty({kn}, options);
    attn_regions = at::empty({kn}, options);
    gram_vv_attn = at::empty({kn}, options);
    v_hat = at::empty({s.regions, s.dim}, options);
    regions_acc = at::empty({s.regions, s.dim}, options);
    words_acc = at::empty({s.words, s.dim}, options);
    if (s.forms_t_hat()) t_hat = at::empty({s.words * s.dim}, options);
    v_side = at::empty({s.regions, s.dim}, options);
    t_side = at::empty({s.words * s.dim}, options);
  }
};

inline at::Tensor matrix(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// The item as acc_t rows of unit stride: a view when it already is, else a copy into scratch.
inline at::Tensor as_acc(const at::Tensor& item, at::Tensor& scratch) {
  if (item.scalar_type() == scratch.scalar_type() && item.stride(-1) == 1) return item;
  at::Tensor out = scratch.narrow(0, 0, item.size(0));
  out.copy_(item);
  return out;
}

// |V_i| of the item's regions, each checked to be finite (also for an item without words,
// whose outputs do not depend on V).
template <typename acc_t>
void region_norms(Workspace<acc_t>& ws, const at::Tensor& regions, int64_t batch_index) {
  const int64_t d = regions.size(1);
  const acc_t* v = regions.const_data_ptr<acc_t>();
  for (int64_t i = 0; i < regions.size(0); ++i) {
    const acc_t* row = v + i * regions.stride(0);
    const acc_t squared_norm = dot(row, row, d);
    check_row("V", row, d, squared_norm, batch_index, i, "");
    ws.v_norm[i] = std::sqrt(squared_norm);
  }
}

// Everything both directions need for one item: G, A, P, Gv P, Vhat and the norms and dots.
// `regions` [Kr, d] and `words` [n, d] (valid words only) have unit-stride rows.
template <typename acc_t>
void attend(Workspace<acc_t>& ws, const at::Tensor& regions, const at::Tensor& words,
            acc_t scale, int64_t batch_index) {
  const int64_t kr = regions.size(0), n = words.size(0), d = regions.size(1);
  const acc_t* t = words.const_data_ptr<acc_t>();
  const int64_t t_stride = words.stride(0);
  region_norms(ws, regions, batch_index);
  for (int64_t j = 0; j < n; ++j) {
    const acc_t squared_norm = dot(t + j * t_stride, t + j * t_stride, d);
    check_row("T", t + j * t_stride, d, squared_norm, batch_index, j, " (a valid word)");
    ws.t_norm[j] = std::sqrt(squared_norm);
  }

  at::Tensor gram_vt = matrix(ws.gram_vt, kr, n);  // [Kr, n]
  at::mm_out(gram_vt, regions, words.t());
  const acc_t* g = gram_vt.const_data_ptr<acc_t>();
  acc_t* a = ws.attn_words.template data_ptr<acc_t>();
  acc_t* p = ws.attn_regions.template data_ptr<acc_t>();
  acc_t* shift = ws.shift.data();

  // A: each region's softmax over the words (rows of G).
  for (int64_t i = 0; i < kr; ++i) {
    const acc_t* row = g + i * n;
    acc_t* out = a + i * n;
    for (int64_t j = 0; j < n; ++j) out[j] = scale * row[j];
    const acc_t top = *std::max_element(out, out + n);
    std::fill(shift, shift + n, top);
    exp_shifted(out, shift, n);
    acc_t total = 0;
    for (int64_t j = 0; j < n; ++j) total += out[j];
    const acc_t inverse = acc_t(1) / total;
    for (int64_t j = 0; j < n; ++j) out[j] *= inverse;
  }
  // P: each word's softmax over the regions (columns of G), computed row by row so the inner
  // loops run along contiguous words.
  std::fill(shift, shift + n, -std::numeric_limits<acc_t>::infinity());
  for (int64_t i = 0; i < kr; ++i) {
    acc_t* out = p + i * n;
    for (int64_t j = 0; j < n; ++j) {
      out[j] = scale * g[i * n + j];
      shift[j] = std::max(shift[j], out[j]);
    }
  }
  acc_t* column_sum = ws.t_dot.data();  // reused: t_dot is filled only after P is final
  std::fill(column_sum, column_sum + n, acc_t(0));
  for (int64_t i = 0; i < kr; ++i) {
    acc_t* out = p + i * n;
    exp_shifted(out, shift, n);
    for (int64_t j = 0; j < n; ++j) column_sum[j] += out[j];
  }
  for (int64_t j = 0; j < n; ++j) column_sum[j] = acc_t(1) / column_sum[j];
  for (int64_t i = 0; i < kr; ++i) {
    for (int64_t j = 0; j < n; ++j) p[i * n + j] *= column_sum[j];
  }

  at::Tensor v_hat = ws.v_hat;  // [Kr, d]
  at::mm_out(v_hat, matrix(ws.attn_words, kr, n), words);
  // That itself, or Gv P = V That^T [Kr, n] through the Gram (see forms_t_hat: at d = 1, where
  // regions have either sign, the Gram route put the gradient off by 5e-3 where the float32
  // reference is off by 1e-5).
  at::Tensor gram_vv_attn = matrix(ws.gram_vv_attn, kr, n);
  const bool explicit_t_hat = ws.t_hat.defined();
  at::Tensor t_hat;
  if (explicit_t_hat) {
    t_hat = matrix(ws.t_hat, n, d);
    at::mm_out(t_hat, matrix(ws.attn_regions, kr, n).t(), regions);
  } else {
    at::mm_out(ws.gram_vv, regions, regions.t());  // [Kr, Kr]
    at::mm_out(gram_vv_attn, ws.gram_vv, matrix(ws.attn_regions, kr, n));
  }
  const acc_t* vh = v_hat.const_data_ptr<acc_t>();
  const acc_t* q = gram_vv_attn.const_data_ptr<acc_t>();

  // V_i.Vhat_i from the rows themselves, like |Vhat_i|: sum_j A_ij G_ij is the same number but
  // rounds apart from the norms, and at |cos| = 1 the gradient is their difference (d = 1: off
  // by 0.1 where the reference is off by 1e-5).
  const acc_t* v = regions.const_data_ptr<acc_t>();
  for (int64_t i = 0; i < kr; ++i) {
    ws.v_hat_norm[i] = std::sqrt(dot(vh + i * d, vh + i * d, d));
    ws.v_dot[i] = dot(v + i * regions.stride(0), vh + i * d, d);
  }
  if (explicit_t_hat) {
    const acc_t* th = t_hat.const_data_ptr<acc_t>();
    for (int64_t j = 0; j < n; ++j) {
      ws.t_dot[j] = dot(t + j * t_stride, th + j * d, d);
      ws.t_hat_norm[j] = std::sqrt(dot(th + j * d, th + j * d, d));
    }
    return;
  }
  std::fill(ws.t_dot.begin(), ws.t_dot.begin() + n, acc_t(0));
  std::fill(ws.t_hat_norm.begin(), ws.t_hat_norm.begin() + n, acc_t(0));
  for (int64_t i = 0; i < kr; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      ws.t_dot[j] += p[i * n + j] * g[i * n + j];
      ws.t_hat_norm[j] += p[i * n + j] * q[i * n + j];
    }
  }
  for (int64_t j = 0; j < n; ++j) ws.t_hat_norm[j] = std::sqrt(std::max(ws.t_hat_norm[j], acc_t(0)));
}

template <typename scalar_t, typename acc_t>
void forward_cpu(const at::Tensor& V, const at::Tensor& T, const int64_t* counts, double scale,
                 at::Tensor& v_bar, at::Tensor& t_bar) {
  const CrossAttentionShape shape{V.size(0), V.size(1), T.size(1), V.size(2)};
  const auto options = V.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  acc_t* v_bar_data = v_bar.data_ptr<acc_t>();
  acc_t* t_bar_data = t_bar.data_ptr<acc_t>();
  at::parallel_for(0, shape.batch, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs below go through the dispatcher on views of the inputs; below autograd (set in
    // each worker thread, the guard is thread-local) they neither record nor refuse out=.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    Workspace<acc_t> ws(shape, options);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = counts[b];
      acc_t* v_out = v_bar_data + b * shape.regions;
      acc_t* t_out = t_bar_data + b * shape.words;
      std::fill(t_out, t_out + shape.words, acc_t(0));
      if (n == 0) {  // no word to attend to: Vhat = 0, so every cosine is 0
        region_norms(ws, as_acc(V.select(0, b), ws.regions_acc), b);
        std::fill(v_out, v_out + shape.regions, acc_t(0));
        continue;
      }
      const at::Tensor regions = as_acc(V.select(0, b), ws.regions_acc);
      const at::Tensor words = as_acc(T.select(0, b).narrow(0, 0, n), ws.words_acc);
      attend(ws, regions, words, static_cast<acc_t>(scale), b);
      for (int64_t i = 0; i < shape.regions; ++i) {
        v_out[i] = cosine(ws.v_dot[i], ws.v_norm[i], ws.v_hat_norm[i]);
      }
      for (int64_t j = 0; j < n; ++j) t_out[j] = cosine(ws.t_dot[j], ws.t_norm[j], ws.t_hat_norm[j]);
    }
  });
}

// Gradients of one item. With the cosine coefficients of CosineGrad (alpha, self, other per
// region for (V, Vhat) and per word for (T, That)), Y = diag(alpha) V + diag(other) Vhat
// (the gradient of the region cosines in Vhat) and Z = diag(alpha') T + diag(other') That:
//   gA = Y T^T,  gP = V Z^T = alpha'_j G + other'_j (Gv P),
//   gS = A (gA - rowsum(gA A)) + P (gP - colsum(gP P)),
//   C = scale gS + P diag(alpha'),   M = P diag(other') P^T,
//   dV = C T + M V + diag(alpha) Vhat + diag(self) V,
//   dT = C^T V + A^T Y + diag(self') T.
// (P diag(alpha') T is the direct term alpha'_j That_j folded into the GEMM with T.) At
// |cos| = 1 (always at d = 1) Y, Z and the direct terms are differences of equal numbers:
// they are formed elementwise, where those cancel exactly, not after GEMMs that round each
// side apart (d = 1 gradients were off by 0.1). Z needs That, so it is used only where attend
// formed That (forms_t_hat): there C = scale gS, dV takes P Z in place of P diag(alpha') T + M V,
// and dT takes alpha'_j That_j beside self'_j T_j. Otherwise gP takes the Gram route.
template <typename acc_t>
void backward_item(Workspace<acc_t>& ws, const at::Tensor& regions, const at::Tensor& words,
                   acc_t scale, const acc_t* grad_v, const acc_t* grad_t, at::Tensor& scratch,
                   at::Tensor& grad_regions, at::Tensor& grad_words) {
  const int64_t kr = regions.size(0), n = words.size(0);
  const acc_t* g = ws.gram_vt.template const_data_ptr<acc_t>();
  const acc_t* a = ws.attn_words.template const_data_ptr<acc_t>();
  const acc_t* p = ws.attn_regions.template const_data_ptr<acc_t>();
  const acc_t* q = ws.gram_vv_attn.template const_data_ptr<acc_t>();

  std::vector<CosineGrad<acc_t>> region_grad(kr), word_grad(n);
  for (int64_t i = 0; i < kr; ++i) {
    region_grad[i] = cosine_grad(grad_v[i], ws.v_dot[i], ws.v_norm[i], ws.v_hat_norm[i]);
  }
  for (int64_t j = 0; j < n; ++j) {
    word_grad[j] = cosine_grad(grad_t[j], ws.t_dot[j], ws.t_norm[j], ws.t_hat_norm[j]);
  }

  const int64_t d = words.size(1);
  const acc_t* v = regions.const_data_ptr<acc_t>();
  const acc_t* t = words.const_data_ptr<acc_t>();
  const acc_t* vh = ws.v_hat.template const_data_ptr<acc_t>();
  const int64_t v_stride = regions.stride(0), t_stride = words.stride(0);
  acc_t* y = ws.v_side.template data_ptr<acc_t>();
  for (int64_t i = 0; i < kr; ++i) {
    for (int64_t k = 0; k < d; ++k) {
      y[i * d + k] = region_grad[i].grad_b(v[i * v_stride + k], vh[i * d + k]);
    }
  }
  // scratch rows: [0, Kr) gA, then C; [Kr, 2Kr) gP, then P diag(other').
  at::Tensor grad_attn_words = matrix(scratch, kr, n);
  at::mm_out(grad_attn_words, ws.v_side, words.t());
  acc_t* c = grad_attn_words.template data_ptr<acc_t>();  // becomes C in place
  acc_t* weighted = c + kr * n;
  const bool explicit_t_hat = ws.t_hat.defined();
  if (explicit_t_hat) {
    const acc_t* th = ws.t_hat.template const_data_ptr<acc_t>();
    acc_t* z = ws.t_side.template data_ptr<acc_t>();
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t k = 0; k < d; ++k) {
        z[j * d + k] = word_grad[j].grad_b(t[j * t_stride + k], th[j * d + k]);
      }
    }
    at::Tensor grad_attn_regions = matrix(scratch.narrow(0, kr * n, kr * n), kr, n);
    at::mm_out(grad_attn_regions, regions, matrix(ws.t_side, n, d).t());
  }

  // Softmax backward: the row sums of gA A and the column sums of gP P first. gA and gP wait in
  // c and weighted for the second pass.
  std::vector<acc_t> row_sum(kr, acc_t(0)), column_sum(n, acc_t(0));
  for (int64_t i = 0; i < kr; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = i * n + j;
      const acc_t grad_a = c[k];
      const acc_t grad_p = explicit_t_hat ? weighted[k]
                                          : word_grad[j].alpha * g[k] + word_grad[j].other * q[k];
      row_sum[i] += grad_a * a[k];
      column_sum[j] += grad_p * p[k];
      weighted[k] = grad_p;
    }
  }
  for (int64_t i = 0; i < kr; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = i * n + j;
      const acc_t grad_a = c[k], grad_p = weighted[k];
      const acc_t grad_s = a[k] * (grad_a - row_sum[i]) + p[k] * (grad_p - column_sum[j]);
      // With That at hand, its terms go through Z below instead of C and M.
      c[k] = scale * grad_s + (explicit_t_hat ? acc_t(0) : p[k] * word_grad[j].alpha);
      weighted[k] = p[k] * word_grad[j].other;
    }
  }
  const at::Tensor c_matrix = matrix(scratch, kr, n);
  at::mm_out(grad_regions, c_matrix, words);
  if (explicit_t_hat) {
    // P Z = P diag(alpha') T + M V from the Z that cancelled elementwise: the two GEMMs round
    // each side apart, and at d = 1 that put V's gradient off by 0.2.
    grad_regions.addmm_(matrix(ws.attn_regions, kr, n), matrix(ws.t_side, n, d));
  } else {
    // M = P diag(other') P^T, in place of Gv (no longer needed).
    at::Tensor m = ws.gram_vv;
    at::mm_out(m, matrix(scratch.narrow(0, kr * n, kr * n), kr, n),
               matrix(ws.attn_regions, kr, n).t());
    grad_regions.addmm_(m, regions);
  }

  acc_t* gr = grad_regions.template data_ptr<acc_t>();  // the region side's direct terms
  const int64_t gr_stride = grad_regions.stride(0);
  for (int64_t i = 0; i < kr; ++i) {
    for (int64_t k = 0; k < d; ++k) {
      gr[i * gr_stride + k] += region_grad[i].grad_a(v[i * v_stride + k], vh[i * d + k]);
    }
  }
  // The word side's direct terms: self' T, and alpha' That where C does not carry it.
  acc_t* gw = grad_words.template data_ptr<acc_t>();
  const acc_t* th = explicit_t_hat ? ws.t_hat.template const_data_ptr<acc_t>() : nullptr;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t k = 0; k < d; ++k) {
      gw[j * d + k] = th ? word_grad[j].grad_a(t[j * t_stride + k], th[j * d + k])
                         : word_grad[j].self * t[j * t_stride + k];
    }
  }
  grad_words.addmm_(c_matrix.t(), regions);
  grad_words.addmm_(matrix(ws.attn_words, kr, n).t(), ws.v_side);
}

template <typename scalar_t, typename acc_t>
void backward_cpu(const at::Tensor& grad_v_bar, const at::Tensor& grad_t_bar, const at::Tensor& V,
                  const at::Tensor& T, const int64_t* counts, double scale, at::Tensor& grad_V,
                  at::Tensor& grad_T) {
  const CrossAttentionShape shape{V.size(0), V.size(1), T.size(1), V.size(2)};
  const auto options = V.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const acc_t* grad_v_data = grad_v_bar.const_data_ptr<acc_t>();
  const acc_t* grad_t_data = grad_t_bar.const_data_ptr<acc_t>();
  constexpr bool kWriteInPlace = std::is_same_v<scalar_t, acc_t>;
  at::parallel_for(0, shape.batch, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in forward_cpu
    Workspace<acc_t> ws(shape, options);
    at::Tensor scratch = at::empty({2 * shape.regions * shape.words}, options);
    at::Tensor grad_regions_acc, grad_words_acc;
    if constexpr (!kWriteInPlace) {
      grad_regions_acc = at::empty({shape.regions, shape.dim}, options);
      grad_words_acc = at::empty({shape.words, shape.dim}, options);
    }
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = counts[b];
      at::Tensor grad_regions = grad_V.select(0, b);
      at::Tensor grad_words = grad_T.select(0, b);
      grad_words.narrow(0, n, shape.words - n).zero_();  // padding gets no gradient
      if (n == 0) {  // the outputs are constant 0
        region_norms(ws, as_acc(V.select(0, b), ws.regions_acc), b);
        grad_regions.zero_();
        continue;
      }
      const at::Tensor regions = as_acc(V.select(0, b), ws.regions_acc);
      const at::Tensor words = as_acc(T.select(0, b).narrow(0, 0, n), ws.words_acc);
      attend(ws, regions, words, static_cast<acc_t>(scale), b);
      at::Tensor region_out = kWriteInPlace ? grad_regions : grad_regions_acc;
      at::Tensor word_out = (kWriteInPlace ? grad_words : grad_words_acc).narrow(0, 0, n);
      backward_item(ws, regions, words, static_cast<acc_t>(scale), grad_v_data + b * shape.regions,
                    grad_t_data + b * shape.words, scratch, region_out, word_out);
      if constexpr (!kWriteInPlace) {
        grad_regions.copy_(region_out);
        grad_words.narrow(0, 0, n).copy_(word_out);
      }
    }
  });
}

// float64 runs in float64 (gradcheck); every other dtype accumulates in float32.
at::ScalarType acc_type(at::ScalarType type) {
  return type == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> cross_attention_cosine_cpu(
    const at::Tensor& V, const at::Tensor& T, const std::optional<at::Tensor>& t_lengths,
    double scale) {
  const CrossAttentionShape shape = check_cross_attention_cosine_args(kForward, V, T, t_lengths);
  const auto acc_options = V.options().dtype(acc_type(V.scalar_type()));
  at::Tensor v_bar = at::empty({shape.batch, shape.regions}, acc_options);
  at::Tensor t_bar = at::empty({shape.batch, shape.words}, acc_options);
  const at::Tensor counts = checked_word_counts(kForward, t_lengths, shape, V, true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, V.scalar_type(), kForward, [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_cpu<scalar_t, acc_t>(V, T, counts.const_data_ptr<int64_t>(), scale, v_bar, t_bar);
  });
  return {v_bar.to(V.scalar_type()), t_bar.to(V.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> cross_attention_cosine_backward_cpu(
    const at::Tensor& grad_v_bar, const at::Tensor& grad_t_bar, const at::Tensor& V,
    const at::Tensor& T, const std::optional<at::Tensor>& t_lengths, double scale) {
  const CrossAttentionShape shape = check_cross_attention_cosine_args(kBackward, V, T, t_lengths);
  check_cross_attention_cosine_grads(kBackward, grad_v_bar, grad_t_bar, V, shape);
  const at::ScalarType acc = acc_type(V.scalar_type());
  const at::Tensor grad_v = grad_v_bar.to(acc).contiguous();
  const at::Tensor grad_t = grad_t_bar.to(acc).contiguous();
  at::Tensor grad_V = at::empty({shape.batch, shape.regions, shape.dim}, V.options());
  at::Tensor grad_T = at::empty({shape.batch, shape.words, shape.dim}, T.options());
  const at::Tensor counts = checked_word_counts(kBackward, t_lengths, shape, V, true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, V.scalar_type(), kBackward, [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_cpu<scalar_t, acc_t>(grad_v, grad_t, V, T, counts.const_data_ptr<int64_t>(), scale,
                                  grad_V, grad_T);
  });
  return {grad_V, grad_T};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("cross_attention_cosine", &cross_attention_cosine_cpu);
  m.impl("_cross_attention_cosine_backward", &cross_attention_cosine_backward_cpu);
}

}  // namespace mmfast
