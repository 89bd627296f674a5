#include "fmrecall/train.h"

#include <omp.h>

#include <algorithm>
#include <string>

namespace fmrecall {

namespace {
constexpr int64_t kAhead = 2;  // rows of look-ahead for prefetching

// Ask for the parameter blocks of a row that will be processed soon: training is bound by memory
// latency on large models (a feature's field-aware block is F·kp floats plus as many AdaGrad floats).
inline void prefetch_row(const Model& M, const Segment& s) {
  const int64_t block = static_cast<int64_t>(M.F) * M.vs * static_cast<int64_t>(sizeof(float));
  for (int64_t t = 0; t < s.len; ++t) {
    const int64_t j = s.feat[t];
    const int32_t f = s.field[t];
    if (j < 0 || j >= M.n || f < 0 || f >= M.F) continue;
    __builtin_prefetch(M.w.data() + j, 1);
    __builtin_prefetch(M.gw.data() + j, 1);
    if (M.aware[f]) {
      const int64_t r = M.row_of(j);
      if (r < 0) continue;
      const char* a = reinterpret_cast<const char*>(M.wvec(r, 0));
      for (int64_t b = 0; b < block; b += 64) __builtin_prefetch(a + b, 1);
    } else {
      __builtin_prefetch(M.vec(j), 1);
    }
  }
}
}  // namespace

int resolve_threads(int threads) {
  if (threads < 0 || threads > kMaxThreads)
    throw InputError("threads must be in [0, " + std::to_string(kMaxThreads) + "] (0 = all cores), got " +
                     std::to_string(threads));
  return threads > 0 ? threads : std::min(omp_get_max_threads(), kMaxThreads);
}

double train_rows(Model& M, const Csr& data, const int64_t* order, int64_t count, Loss loss,
                  const Hyper& h, int threads) {
  ReadLock lock(M.mu);  // Hogwild writes values in place; only structural changes are exclusive
  const KernelFns K = select_kernels(M.kp);
  double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    Row row;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = order[i];
      if (i + kAhead < count) prefetch_row(M, data.row(order[i + kAhead]));
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
  ReadLock lock(M.mu);
  for_each_scored_row(M, data, threads, [out](const Row&, float score, int64_t r) { out[r] = score; });
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
