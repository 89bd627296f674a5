// The model's per-row routines, compiled once per instruction set and chosen at run time.
#pragma once

#include "loss.h"
#include "row.h"

namespace fmrecall {

// AdaGrad's settings for one training call. No defaults here: the Python estimators own them
// (python/fmrecall/models.py) and pass every value.
struct Hyper {
  float eta;     // AdaGrad learning rate
  float l2_lin;  // L2 on the linear weights
  float l2_fac;  // L2 on the latent vectors
};

// The kernel's entries. The AdaGrad update is reachable only through `step` / `bpr_step`, which
// score the row first: the update reads the sums the forward pass leaves in the row's scratch, so
// the two always run together, on the same row.
//   score:    score of the gathered row (prediction, negative candidates, split vectors).
//   step:     one SGD step on a gathered row: score it, take the loss against `label`, make one
//             AdaGrad step on every parameter the row touches. Returns the row's loss (before the step).
//   bpr_step: one exact BPR step on the pair (pos, neg): both scored, their gradients summed per
//             parameter in `acc` (the rows share the user and context parameters), then one AdaGrad
//             step per parameter. Returns the pair's loss (before the step).
struct KernelFns {
  float (*score)(const Model&, Row&);
  double (*step)(Model&, Row&, Loss, float label, const Hyper&);
  double (*bpr_step)(Model&, Row& pos, Row& neg, const Hyper&, GradAcc& acc);
  const char* arch;
};

// Picks the widest instruction set this CPU supports (AVX-512 > AVX2+FMA > SSE2) unless the
// environment variable FMRECALL_ARCH (generic | avx2 | avx512) asks for a narrower one. Lanes:
// generic 128-bit; avx2 256-bit; avx512 512-bit where the padded latent size is a multiple of 16,
// else 256-bit (lanes.h: Chunk).
KernelFns select_kernels(int32_t kp);
const char* best_arch();  // "generic", "avx2" or "avx512"

namespace generic {
KernelFns kernels(int32_t kp);
}
namespace avx2 {
KernelFns kernels(int32_t kp);
}
namespace avx512 {
KernelFns kernels(int32_t kp);
}

}  // namespace fmrecall
