// Whether a CUDA kernel's host-side value checks run: in the "full" checks mode (checks.h) and
// only while the current stream is not capturing a CUDA graph, where reading a value back to the
// host is an error (torch.compile's mode="reduce-overhead" captures every op it runs).
#pragma once
#include <ATen/cuda/CUDAGraphsUtils.cuh>

#include "common/checks.h"

namespace mmfast {

inline bool cuda_value_checks() {
  return full_checks() && at::cuda::currentStreamCaptureStatus() == at::cuda::CaptureStatus::None;
}

}  // namespace mmfast
