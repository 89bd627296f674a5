#include "fmrecall/train.h"

#include <omp.h>

namespace fmrecall {

double train_rows(Model& M, const Csr& data, const int64_t* order, int64_t count, Loss loss,
                  const Hyper& h, int threads) {
  const KernelFns K = select_kernels(M.kp);
  double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    Row row;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = order[i];
      const Segment seg = data.row(r);
      row.gather(M, &seg, 1);
      const float t = K.forward(M, row);
      const LossGrad lg = loss_grad(loss, t, data.label[r]);
      total += lg.loss;
      K.backward(M, row, lg.kappa, h);
    }
  }
  return total;
}

void predict_rows(const Model& M, const Csr& data, float* out, int threads) {
  const KernelFns K = select_kernels(M.kp);
#pragma omp parallel num_threads(threads)
  {
    Row row;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < data.rows; ++r) {
      const Segment seg = data.row(r);
      row.gather(M, &seg, 1);
      out[r] = K.forward(M, row);
    }
  }
}

void permutation(int64_t n, uint64_t seed, int64_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(out[i], out[j]);
  }
}

}  // namespace fmrecall
