// Hogwild AdaGrad epochs and batched prediction over a CSR dataset.
#pragma once

#include "kernel.h"
#include "loss.h"
#include "prefetch.h"

namespace fmrecall {

// Caller-given CSR arrays as a Csr, after the checks that keep the core from reading out of bounds
// (InputError): lengths agree (n_indptr = rows + 1 >= 1; n_feat = n_field = nnz; n_val = nnz when
// val is given; n_label = rows when label is given), indptr[0] == 0, indptr[rows] == nnz, indptr
// non-decreasing. With rows_used (the rows a call will touch, e.g. one training chunk of a
// permutation) only those rows are checked, each in range and its indptr entries within [0, nnz]:
// O(n_rows_used), not O(rows), so streaming an epoch through a large (memory-mapped) dataset in
// chunks costs O(chunk) per call; rows outside it are never read.
Csr make_csr(const int64_t* indptr, int64_t n_indptr, const int32_t* field, int64_t n_field, const int32_t* feat,
             int64_t n_feat, const float* val, int64_t n_val, const float* label, int64_t n_label,
             const int64_t* rows_used = nullptr, int64_t n_rows_used = 0);

// Largest thread count a call accepts (Python: fmrecall.MAX_THREADS). OpenMP would try to start
// any number asked for, and a huge team (threads=100000) dies on the first call.
constexpr int kMaxThreads = 1024;

// The OpenMP team size of a call: threads > 0 as given, 0 = all cores (at most kMaxThreads);
// InputError for a negative count or one above kMaxThreads.
int resolve_threads(int threads);

// The routines below hold the model's lock shared for their whole call (Model::mu): they read the
// tables and (training, Hogwild) write values in place, never reallocating anything.

// One pass of SGD over rows order[0..count) (Hogwild across `threads`). Returns the summed loss
// of the rows at the moment they were visited (before their own update). Pointwise losses only
// (bpr needs factored data: InputError); the rows in `order` must have been checked (make_csr).
double train_rows(Model& M, const Csr& data, const int64_t* order, int64_t count, Loss loss, const Hyper& h,
                  int threads);

// Raw scores of every row into out[rows].
void predict_rows(const Model& M, const Csr& data, float* out, int threads);

// fn(row, score, r) for every row r of `data`, gathered and scored, over `threads` (the shared loop
// of prediction and the query / item vector builders), with the rows ahead prefetched as in training
// (prefetch.h). Small batches (a single request) run on the calling thread: waking the OpenMP team
// would leave its idle threads spinning while faiss searches.
constexpr int64_t kParallelRows = 64;

template <class Fn>
void for_each_scored_row(const Model& M, const Csr& data, int threads, Fn&& fn) {
  const KernelFns K = select_kernels(M.kp);
#pragma omp parallel num_threads(threads) if (data.rows >= kParallelRows)
  {
    Row row;
    RowRing ring;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < data.rows; ++r) {
      prefetch_ahead<false>(M, csr_rows(data, [](int64_t at) { return at; }), r, data.rows, ring);
      Run run = data.row(r);
      ring.attach(r, &run, 1);
      row.gather(M, &run, 1);
      const float score = K.score(M, row);
      fn(row, score, r);
    }
  }
}

// A seeded permutation of 0..n-1 (Fisher–Yates with splitmix64).
void permutation(int64_t n, uint64_t seed, int64_t* out);

}  // namespace fmrecall
