#include "fmrecall/train.h"

#include "fmrecall/hot.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

namespace fmrecall {

int resolve_threads(int threads) {
  if (threads < 0 || threads > kMaxThreads)
    throw InputError("threads must be in [0, " + std::to_string(kMaxThreads) + "] (0 = all cores), got " +
                     std::to_string(threads));
  return threads > 0 ? threads : std::min(omp_get_max_threads(), kMaxThreads);
}

Csr make_csr(const int64_t* indptr, int64_t n_indptr, const int32_t* field, int64_t n_field, const int32_t* feat,
             int64_t n_feat, const float* val, int64_t n_val, const float* label, int64_t n_label,
             const int64_t* rows_used, int64_t n_rows_used) {
  if (n_indptr < 1) throw InputError("indptr must be a 1-d array of length rows + 1");
  const int64_t rows = n_indptr - 1;
  const int64_t nnz = n_field;
  if (n_feat != nnz) throw InputError("fields and features must have the same length");
  if (val && n_val != nnz) throw InputError("values must have the same length as features");
  if (label && n_label != rows) throw InputError("labels must have one entry per row");
  const int64_t* ip = indptr;
  if (ip[0] != 0) throw InputError("indptr[0] must be 0");
  if (ip[rows] != nnz) throw InputError("indptr[-1] must equal the number of nodes");
  if (rows_used) {
    for (int64_t i = 0; i < n_rows_used; ++i) {
      const int64_t r = rows_used[i];
      if (r < 0 || r >= rows) throw InputError("row order out of range");
      if (ip[r] < 0 || ip[r + 1] < ip[r] || ip[r + 1] > nnz)
        throw InputError("indptr must be non-decreasing within [0, nnz] (row " + std::to_string(r) + ")");
    }
  } else {
    for (int64_t r = 0; r < rows; ++r)
      if (ip[r + 1] < ip[r]) throw InputError("indptr must be non-decreasing (row " + std::to_string(r) + ")");
  }
  Csr c;
  c.indptr = ip;
  c.field = field;
  c.feat = feat;
  c.val = val;
  c.label = label;
  c.rows = rows;
  return c;
}

double train_rows(Model& M, const Csr& data, const int64_t* order, int64_t count, Loss loss, const Hyper& h,
                  int threads) {
  if (loss != Loss::logistic && loss != Loss::squared) throw InputError("this loss needs factored (Interactions) data");
  if (!data.label) throw InputError("training needs labels");
  ReadLock lock(M.mu);  // Hogwild writes values in place; only structural changes are exclusive
  const KernelFns K = select_kernels(M.kp);
  const bool private_hot = HotSet::wanted(threads, count);
  HotSet hot(M, threads);
  if (private_hot)
    hot.pick(order, count, [&data](int64_t r, Run* runs) {
      runs[0] = data.row(r);
      return 1;
    });
  double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    Row row;
    RowRing ring;
    std::optional<HotCopy> mine;
    if (private_hot) mine.emplace(hot);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = order[i];
      prefetch_ahead<true>(M, csr_rows(data, [order](int64_t at) { return order[at]; }), i, count, ring);
      Run run = data.row(r);
      ring.attach(i, &run, 1);
      row.gather(M, &run, 1);
      if (mine) mine->redirect(row);
      total += K.step(M, row, loss, data.label[r], h);
      if (mine) mine->after_rows(1);
    }
    if (mine) mine->merge();
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
