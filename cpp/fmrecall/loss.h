// Losses: value and dLoss/dScore (kappa) of one row, the only part that differs per loss.
#pragma once

#include <cmath>

namespace fmrecall {

// bpr is pairwise (positive vs sampled negative): only for implicit factored data.
enum class Loss : int { logistic = 0, squared = 1, bpr = 2 };

struct LossGrad {
  double loss;
  float kappa;
};

// logistic: y > 0 is a positive (labels 0/1 or -1/1); loss = log(1 + e^t) − y t, kappa = σ(t) − y
// squared:  loss = (t − y)², kappa = t − y  (the gradient of ½(t − y)²)
inline LossGrad loss_grad(Loss L, float t, float y) {
  if (L == Loss::logistic) {
    const float y01 = y > 0.f ? 1.f : 0.f;
    const double td = t;
    const double sp = td > 0 ? td + std::log1p(std::exp(-td)) : std::log1p(std::exp(td));
    const float p = 1.f / (1.f + std::exp(-t));
    return {sp - y01 * td, p - y01};
  }
  const float d = t - y;
  return {static_cast<double>(d) * d, d};
}

inline double sigmoid(double t) { return 1.0 / (1.0 + std::exp(-t)); }

}  // namespace fmrecall
