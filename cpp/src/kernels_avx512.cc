// The AVX-512 kernel variant (chosen at run time by dispatch.cc): 512-bit lanes (f16 chunks) for a
// padded latent size K that is a multiple of 16, 256-bit lanes for K = 8 and the K = 4 pair loops,
// as in the AVX2 variant (a vector of 4 or 8 floats cannot fill a zmm register).
#include "kernel_arch.h"

#define FMR_ARCH avx512
#define FMR_WIDE 2
#define FMR_ARCH_NAME "avx512"
FMR_TARGET_BEGIN("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#include "fmrecall/kernel_impl.h"
FMR_TARGET_END
