// Portability macros shared by the CPU (g++) and CUDA (nvcc) translation units.
#pragma once

#if defined(__CUDACC__)
#define PT_HOST_DEVICE __host__ __device__ __forceinline__
#define PT_DEVICE __device__ __forceinline__
#else
#define PT_HOST_DEVICE inline
#define PT_DEVICE inline
#endif
