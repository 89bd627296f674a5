#include "fmrecall/loss.h"

#include <cmath>

namespace fmrecall {

LossGrad loss_grad(Loss L, float t, float y) {
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

double sigmoid(double t) { return 1.0 / (1.0 + std::exp(-t)); }

LossGrad bpr_loss_grad(double d) {
  const double loss = d > 0 ? std::log1p(std::exp(-d)) : -d + std::log1p(std::exp(d));
  return {loss, static_cast<float>(-sigmoid(-d))};
}

}  // namespace fmrecall
