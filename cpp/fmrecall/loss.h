// Losses: value and dLoss/dScore (kappa) of one row, the only part that differs per loss.
#pragma once

namespace fmrecall {

// The losses a training call takes; Python sees the same values as fmrecall._core.Loss.
// bpr is pairwise (positive vs sampled negative): only for implicit factored data.
enum class Loss : int { logistic = 0, squared = 1, bpr = 2 };

struct LossGrad {
  double loss;
  float kappa;
};

// Pointwise losses of score t against label y:
// logistic: y > 0 is a positive (labels 0/1 or -1/1); loss = log(1 + e^t) − y t, kappa = σ(t) − y
// squared:  loss = (t − y)², kappa = t − y  (the gradient of ½(t − y)²)
// Out of line (cpp/src/loss.cc) on purpose: compiled once for the baseline instruction set, so
// every kernel variant gets bit-identical losses (inlined into an AVX2 function the compiler
// would contract a * b + c into an FMA).
LossGrad loss_grad(Loss L, float t, float y);

// BPR of one pair with d = score(pos) − score(neg): loss = log(1 + e^{−d}), kappa = dLoss/dScore(pos)
// = −σ(−d) (and −kappa for the negative row).
LossGrad bpr_loss_grad(double d);

double sigmoid(double t);

}  // namespace fmrecall
