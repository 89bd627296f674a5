// The AVX-512 kernel variant on 256-bit lanes ("avx512-ymm"), chosen at run time by dispatch.cc
// for FMRECALL_ARCH / best_arch() level "avx512". It is the AVX2 kernel compiled with the AVX-512
// encodings (32 vector registers, EVEX forms); its vectors stay 8 floats wide, as a latent vector
// of k <= 8 floats cannot fill a 512-bit register. Measured the same as AVX2 (README, Performance).
#include "kernel_arch.h"

#define FMR_ARCH avx512_ymm
#define FMR_WIDE 1
#define FMR_ARCH_NAME "avx512-ymm"
FMR_TARGET_BEGIN("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#include "fmrecall/kernel_impl.h"
FMR_TARGET_END
