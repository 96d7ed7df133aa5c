// Argument checks and the gate of bilinear_fusion, shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string_view>

#include "common/checks.h"

namespace mmfast {

// Which input goes through a sigmoid before the bilinear form (Kiela's bilinear-gated model).
enum class BilinearGate { kNone, kFirst, kSecond };

inline BilinearGate parse_bilinear_gate(std::string_view gate) {
  if (gate == "none") return BilinearGate::kNone;
  if (gate == "first") return BilinearGate::kFirst;
  TORCH_CHECK_VALUE(gate == "second",
                    "bilinear_fusion: gate must be 'none', 'first' or 'second', got '", gate, "'");
  return BilinearGate::kSecond;
}

struct BilinearShape {
  int64_t batch, in1, in2, out;  // B, P, Q, K
};

inline BilinearShape check_bilinear_fusion_args(const at::Tensor& u, const at::Tensor& v,
                                                const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "bilinear_fusion";
  MMFAST_CHECK_DIM(op, "u", u, 2);
  MMFAST_CHECK_DIM(op, "v", v, 2);
  MMFAST_CHECK_DIM(op, "weight", weight, 3);
  MMFAST_CHECK_FLOATING(op, "u", u);
  MMFAST_CHECK_SAME_DTYPE(op, "v", v, u);
  MMFAST_CHECK_SAME_DEVICE(op, "v", v, u);
  MMFAST_CHECK_SAME_DTYPE(op, "weight", weight, u);
  MMFAST_CHECK_SAME_DEVICE(op, "weight", weight, u);
  const BilinearShape shape{u.size(0), u.size(1), v.size(1), weight.size(0)};
  TORCH_CHECK_VALUE(v.size(0) == shape.batch, op, ": v must have the batch size of u (",
                    shape.batch, "), got shape ", v.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == shape.in1 && weight.size(2) == shape.in2, op,
                    ": weight must have shape [K, ", shape.in1, ", ", shape.in2,
                    "] to match u and v, got ", weight.sizes());
  if (bias) {
    MMFAST_CHECK_SAME_DTYPE(op, "bias", *bias, u);
    MMFAST_CHECK_SAME_DEVICE(op, "bias", *bias, u);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == shape.out, op,
                      ": bias must have shape [", shape.out, "] to match weight, got ",
                      bias->sizes());
  }
  return shape;
}

inline BilinearShape check_bilinear_fusion_backward_args(const at::Tensor& grad_out,
                                                         const at::Tensor& u, const at::Tensor& v,
                                                         const at::Tensor& weight) {
  const BilinearShape shape = check_bilinear_fusion_args(u, v, weight, std::nullopt);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == shape.batch &&
                        grad_out.size(1) == shape.out,
                    "_bilinear_fusion_backward: grad_out must have shape [", shape.batch, ", ",
                    shape.out, "], got ", grad_out.sizes());
  MMFAST_CHECK_SAME_DEVICE("_bilinear_fusion_backward", "grad_out", grad_out, u);
  MMFAST_CHECK_FLOATING("_bilinear_fusion_backward", "grad_out", grad_out);
  return shape;
}

}  // namespace mmfast
