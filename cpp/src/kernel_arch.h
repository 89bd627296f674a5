// Shared prelude of cpp/src/kernels_*.cc: every standard and project header the kernel uses is
// included here, *before* a file's target pragma, so that only the kernel's own functions (in
// namespace fmrecall::FMR_ARCH) are compiled for the wider instruction set and no inline library
// function gets an AVX copy that the linker could hand to baseline code.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "fmrecall/kernel.h"

#define FMR_DO_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define FMR_TARGET_BEGIN(t) FMR_DO_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define FMR_TARGET_END FMR_DO_PRAGMA(clang attribute pop)
#else
#define FMR_TARGET_BEGIN(t) FMR_DO_PRAGMA(GCC push_options) FMR_DO_PRAGMA(GCC target(t))
#define FMR_TARGET_END FMR_DO_PRAGMA(GCC pop_options)
#endif
