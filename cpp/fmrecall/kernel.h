// The model's per-row routines, compiled once per instruction set and chosen at run time.
#pragma once

#include "row.h"

namespace fmrecall {

struct Hyper {
  float eta = 0.2f;     // AdaGrad learning rate
  float l2_lin = 0.f;   // L2 on the linear weights
  float l2_fac = 0.f;   // L2 on the latent vectors
};

// forward: score of the gathered row (keeps the sums backward needs in the row's scratch).
// backward: one AdaGrad step on every parameter the row touches, for dLoss/dScore = kappa.
// collect + apply: the same step with gradients summed per parameter over one or more rows first
// (exact when rows share parameters, e.g. the positive and negative rows of a BPR pair).
struct KernelFns {
  float (*forward)(const Model&, Row&);
  void (*backward)(Model&, Row&, float kappa, const Hyper&);
  void (*collect)(Model&, Row&, float kappa, const Hyper&, GradAcc&);
  void (*apply)(GradAcc&, const Hyper&);
  const char* arch;
};

// Picks the widest instruction set this CPU supports (AVX-512F > AVX2+FMA > SSE2) unless the
// environment variable FMRECALL_ARCH (generic | avx2 | avx512) asks for a narrower one.
KernelFns select_kernels(int32_t kp);
const char* best_arch();

namespace generic { KernelFns kernels(int32_t kp); }
namespace avx2 { KernelFns kernels(int32_t kp); }
namespace avx512 { KernelFns kernels(int32_t kp); }

}  // namespace fmrecall
