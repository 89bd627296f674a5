// The AVX2 + FMA kernel variant (chosen at run time by dispatch.cc).
#include "kernel_arch.h"

#define FMR_ARCH avx2
#define FMR_WIDE 1
#define FMR_ARCH_NAME "avx2"
FMR_TARGET_BEGIN("avx2,fma")
#include "fmrecall/kernel_impl.h"
FMR_TARGET_END
