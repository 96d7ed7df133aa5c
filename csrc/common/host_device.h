// Marks helpers that both the CPU kernels and nvcc's device code call.
#pragma once

#if defined(__CUDACC__)
#define MMFAST_HOST_DEVICE __host__ __device__
#else
#define MMFAST_HOST_DEVICE
#endif
