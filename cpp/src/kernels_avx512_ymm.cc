// The AVX-512 kernel variant (chosen at run time by dispatch.cc).
#include "kernel_arch.h"

#define FMR_ARCH avx512
#define FMR_WIDE 1
#define FMR_ARCH_NAME "avx512"
FMR_TARGET_BEGIN("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#include "fmrecall/kernel_impl.h"
FMR_TARGET_END
