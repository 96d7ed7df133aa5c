// Argument checks shared by the C++ kernels. The Python wrappers check first and give friendlier
// messages; these keep a direct torch.ops.mmfast.* call from reading out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <utility>

namespace mmfast {

// mmfast.set_checks: true ("full") makes every check, false ("shapes") skips the ones that read
// tensor values (finiteness, 0/1 targets): on CUDA each is a device-to-host copy, a stream sync,
// and a call that CUDA-graph capture refuses. Index ranges are never skipped: on the CPU they stay
// host checks, on CUDA they become device-side asserts in the kernels (CUDA_KERNEL_ASSERT).
// One flag for the whole extension (an inline function's static is shared by every TU).
inline std::atomic<bool>& full_checks_flag() {
  static std::atomic<bool> full{true};
  return full;
}

inline bool full_checks() { return full_checks_flag().load(std::memory_order_relaxed); }

// The smallest and largest value of a non-empty integer tensor, read back in one device-to-host
// copy (two .item() calls would synchronize a CUDA stream twice).
inline std::pair<int64_t, int64_t> min_max(const at::Tensor& values) {
  const auto [low, high] = at::aminmax(values);
  const at::Tensor both = at::stack({low, high}).to(at::kLong).cpu();
  return {both.const_data_ptr<int64_t>()[0], both.const_data_ptr<int64_t>()[1]};
}

}  // namespace mmfast

#define MMFAST_CHECK_DIM(op, name, tensor, ndim)                                           \
  TORCH_CHECK_VALUE((tensor).dim() == (ndim), op, ": ", name, " must have ", ndim,         \
                    " dimensions, got shape ", (tensor).sizes())

#define MMFAST_CHECK_FLOATING(op, name, tensor)                                             \
  TORCH_CHECK_TYPE((tensor).scalar_type() == at::kFloat ||                                  \
                       (tensor).scalar_type() == at::kHalf ||                               \
                       (tensor).scalar_type() == at::kBFloat16 ||                           \
                       (tensor).scalar_type() == at::kDouble,                               \
                   op, ": ", name, " must be float32, float16, bfloat16 or float64, got ", \
                   (tensor).scalar_type())

// `ref` is named in the message as written at the call site ("like V").
#define MMFAST_CHECK_SAME_DEVICE(op, name, tensor, ref)                                     \
  TORCH_CHECK_VALUE((tensor).device() == (ref).device(), op, ": ", name, " must be on ",    \
                    (ref).device(), " like " #ref ", got ", (tensor).device())

#define MMFAST_CHECK_SAME_DTYPE(op, name, tensor, ref)                                      \
  TORCH_CHECK_TYPE((tensor).scalar_type() == (ref).scalar_type(), op, ": ", name,           \
                   " must have the dtype of " #ref " (", (ref).scalar_type(), "), got ",    \
                   (tensor).scalar_type())
