#include "fmrecall/train.h"

#include "fmrecall/hot.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

namespace fmrecall {

namespace {
// Training is bound by memory latency: a one-hot FFM row of 39 fields reads and writes 39 blocks of
// F·2·kp floats (20 cache lines each at k = 4) at random places, plus its CSR nodes, the features'
// W rows (aware_row) and linear weights. Each address depends on the one before (order -> indptr ->
// nodes -> aware_row -> W block), so the rows ahead are prefetched in stages, each stage reading
// only what an earlier stage already brought in (no demand miss in the prefetch code itself).
// Rows ahead per stage (the block stage measured best at 2 of 1, 2, 3, 5):
constexpr int64_t kBlockAhead = 2;    // stage 3: the parameter blocks, into L2 (L1 holds less than one row's)
constexpr int64_t kMapAhead = 4;      // stage 2: aware_row, linear weight and AdaGrad state of each feature
constexpr int64_t kNodesAhead = 8;    // stage 1: the row's field / feature / value lines
constexpr int64_t kIndptrAhead = 12;  // stage 0: the row's indptr entry

// Every cache line of [p, p + bytes), into L1 (Locality 3) or L2 (2).
template <int Locality>
inline void prefetch_lines(const void* p, int64_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t end = a + static_cast<uintptr_t>(bytes);
  for (uintptr_t l = a & ~uintptr_t{63}; l < end; l += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(l), 0, Locality);
}

inline bool in_model(const Model& M, int64_t j, int32_t f) { return j >= 0 && j < M.n && f >= 0 && f < M.F; }

inline void prefetch_maps(const Model& M, const Run& s) {
  for (int64_t t = 0; t < s.len; ++t) {
    const int64_t j = s.feat[t];
    const int32_t f = s.field[t];
    if (!in_model(M, j, f)) continue;
    __builtin_prefetch(M.w.data() + j, 1, 3);
    __builtin_prefetch(M.gw.data() + j, 1, 3);
    if (M.aware[f] && !M.aware_row.empty()) __builtin_prefetch(M.aware_row.data() + j, 0, 3);
  }
}

// Also keeps each node's vector row in rows (-1: none), for the row build two rows later (Run::rows).
inline void prefetch_blocks(const Model& M, const Run& s, int32_t* rows) {
  const int64_t block = static_cast<int64_t>(M.F) * M.vs * static_cast<int64_t>(sizeof(float));
  for (int64_t t = 0; t < s.len; ++t) {
    const int64_t j = s.feat[t];
    const int32_t f = s.field[t];
    rows[t] = -1;
    if (!in_model(M, j, f)) continue;
    if (M.aware[f]) {
      const int64_t r = M.aware_row_of(j);
      rows[t] = static_cast<int32_t>(r);
      if (r >= 0) prefetch_lines<2>(M.wvec(r, 0), block);
    } else {
      const int64_t r = M.single_row_of(j);
      rows[t] = static_cast<int32_t>(r);
      if (r >= 0) __builtin_prefetch(M.vec(r), 1, 3);
    }
  }
}

// The vector rows the block stage looked up for the rows in flight: slot i % kSlots holds row i's.
// The row build reads them from here (a few KiB that stay in L1) instead of looking each feature up
// in the model's row map again, a random read into a table of n int32 whose lines the parameter
// blocks streaming through the caches have mostly evicted by then.
class RowRing {
 public:
  static constexpr int64_t kSlots = 4;  // > kBlockAhead: rows i .. i + kBlockAhead are in flight
  int32_t* fill(int64_t i, int64_t len) {
    Slot& s = slots_[i % kSlots];
    if (static_cast<int64_t>(s.rows.size()) < len) s.rows.resize(static_cast<size_t>(len));
    s.owner = i;
    return s.rows.data();
  }
  // Row i's vector rows, or nullptr when the block stage did not see row i (the first rows of a range).
  const int32_t* get(int64_t i) const {
    const Slot& s = slots_[i % kSlots];
    return s.owner == i ? s.rows.data() : nullptr;
  }

 private:
  struct Slot {
    std::vector<int32_t> rows;
    int64_t owner = -1;
  };
  Slot slots_[kSlots];
};
static_assert(RowRing::kSlots > kBlockAhead, "a slot must outlive its row's time in flight");

// The prefetch stages for the rows ahead of position i of `order` (count rows in all).
inline void prefetch_ahead(const Model& M, const Csr& data, const int64_t* order, int64_t i, int64_t count,
                           RowRing& ring) {
  if (i + kIndptrAhead < count) __builtin_prefetch(data.indptr + order[i + kIndptrAhead], 0, 3);
  if (i + kNodesAhead < count) {
    const Run s = data.row(order[i + kNodesAhead]);
    prefetch_lines<3>(s.field, s.len * static_cast<int64_t>(sizeof(int32_t)));
    prefetch_lines<3>(s.feat, s.len * static_cast<int64_t>(sizeof(int32_t)));
    if (s.val) prefetch_lines<3>(s.val, s.len * static_cast<int64_t>(sizeof(float)));
  }
  if (i + kMapAhead < count) prefetch_maps(M, data.row(order[i + kMapAhead]));
  if (i + kBlockAhead < count) {
    const Run s = data.row(order[i + kBlockAhead]);
    prefetch_blocks(M, s, ring.fill(i + kBlockAhead, s.len));
  }
}
}  // namespace

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
      prefetch_ahead(M, data, order, i, count, ring);
      Run run = data.row(r);
      run.rows = ring.get(i);
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
