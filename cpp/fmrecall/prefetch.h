// Staged prefetch of the rows ahead, shared by training (train_rows) and scoring
// (for_each_scored_row: prediction, validation, the split builders).
//
// Both are bound by memory latency: a one-hot FFM row of 39 fields reads (and training writes) 39
// blocks of F·2·kp floats (20 cache lines each at k = 4) at random places, plus its CSR nodes, the
// features' vector rows (the row maps) and linear weights. Each address depends on the one before
// (order -> [event ->] indptr -> nodes -> row map -> block), so the rows ahead are prefetched in stages, each
// stage reading only what an earlier stage already brought in (no demand miss in the prefetch code
// itself). The block stage also hands the vector rows it looked up to the row build (RowRing).
#pragma once

#include <cstdint>
#include <vector>

#include "row.h"

namespace fmrecall {

// Rows ahead per stage (the block stage measured best at 2 of 1, 2, 3, 5):
constexpr int64_t kBlockAhead = 2;    // stage 3: the parameter blocks, into L2 (L1 holds less than one row's)
constexpr int64_t kMapAhead = 4;      // stage 2: row maps, linear weight and AdaGrad state of each feature
constexpr int64_t kNodesAhead = 8;    // stage 1: the row's field / feature / value lines
constexpr int64_t kDrawAhead = 10;    // stage 0.5: an event's random draws (its negatives' rows join it)
constexpr int64_t kIndptrAhead = 12;  // stage 0: the row's indptr entry(ies)
constexpr int64_t kLocateAhead = 16;  // stage -1: what locates them (an event's user and item rows)

// Every cache line of [p, p + bytes), into L1 (Locality 3) or L2 (2).
template <int Locality>
inline void prefetch_lines(const void* p, int64_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t end = a + static_cast<uintptr_t>(bytes);
  for (uintptr_t l = a & ~uintptr_t{63}; l < end; l += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(l), 0, Locality);
}

// Stage 2. Training (Write) also fetches the AdaGrad state of the linear weights, for writing.
template <bool Write>
inline void prefetch_maps(const Model& M, const Run& s) {
  for (int64_t t = 0; t < s.len; ++t) {
    const int64_t j = s.feat[t];
    const int32_t f = s.field[t];
    if (!M.holds(j, f)) continue;
    __builtin_prefetch(M.w.data() + j, Write, 3);
    if (Write) __builtin_prefetch(M.gw.data() + j, 1, 3);
    const std::vector<int32_t>& map = M.aware[f] ? M.aware_row : M.single_row;
    if (!map.empty()) __builtin_prefetch(map.data() + j, 0, 3);
  }
}

// Stage 3: each node's parameter block (W row) or vector (v row), whose row it also keeps in
// rows[t] (-1: none, or a node outside the model) for the row build two rows later (Run::rows).
template <bool Write>
inline void prefetch_blocks(const Model& M, const Run& s, int32_t* rows) {
  const int64_t block = static_cast<int64_t>(M.F) * M.vs * static_cast<int64_t>(sizeof(float));
  for (int64_t t = 0; t < s.len; ++t) {
    const int64_t j = s.feat[t];
    const int32_t f = s.field[t];
    rows[t] = -1;
    if (!M.holds(j, f)) continue;
    if (M.aware[f]) {
      const int64_t r = M.aware_row_of(j);
      rows[t] = static_cast<int32_t>(r);
      if (r >= 0) prefetch_lines<2>(M.wvec(r, 0), block);
    } else {
      const int64_t r = M.single_row_of(j);
      rows[t] = static_cast<int32_t>(r);
      if (r >= 0) __builtin_prefetch(M.vec(r), Write, 3);
    }
  }
}

// The vector rows the block stage looked up for the rows in flight: slot i % kSlots holds those of
// the row at position i, its runs' one after the other. The row build reads them from here (a few
// KiB that stay in L1) instead of looking each feature up in the row map again: a random read into
// a table of n int32 whose lines the parameter blocks streaming through the caches have mostly
// evicted by then (that second lookup cost 14-21% of a 1-thread training epoch: bench/results.md,
// "The row maps read once").
class RowRing {
 public:
  static constexpr int64_t kSlots = 4;  // > kBlockAhead: rows i .. i + kBlockAhead are in flight
  int32_t* fill(int64_t i, int64_t len) {
    Slot& s = slots_[i % kSlots];
    if (static_cast<int64_t>(s.rows.size()) < len) s.rows.resize(static_cast<size_t>(len));
    s.owner = i;
    return s.rows.data();
  }
  // Points each of the k runs of the row at position i at its vector rows, or at nullptr when the
  // block stage did not see that row (the first rows of a thread's range): the row build then
  // looks them up itself.
  void attach(int64_t i, Run* runs, int k) const {
    const Slot& s = slots_[i % kSlots];
    const int32_t* rows = s.owner == i ? s.rows.data() : nullptr;
    for (int q = 0; q < k; ++q) {
      runs[q].rows = rows;
      if (rows) rows += runs[q].len;
    }
  }

 private:
  struct Slot {
    std::vector<int32_t> rows;
    int64_t owner = -1;
  };
  Slot slots_[kSlots];
};
static_assert(RowRing::kSlots > kBlockAhead, "a slot must outlive its row's time in flight");

// The rows of a loop as the stages see them: a Dataset's CSR rows, position i being data row
// row_at(i) (a permutation in training, i itself in scoring). A source gives kMaxRuns (runs per
// row), locate(i) (stage -1: prefetch what index(i) reads), index(i) (stage 0: prefetch what
// draw(i) and runs(i) read), draw(i) (stage 0.5: what is decided ahead and adds runs) and
// runs(i, out) (the row's runs; returns how many). EventRows (interactions.h) is the other
// source: an event's user, context and item rows (and SampledRows, interactions.cc, its sampled
// negatives' item rows).
template <class RowAt>
struct CsrRows {
  static constexpr int kMaxRuns = 1;
  const Csr& data;
  RowAt row_at;
  void locate(int64_t) const {}  // row_at reads a sequential order, which the hardware prefetches
  void index(int64_t i) const { __builtin_prefetch(data.indptr + row_at(i), 0, 3); }
  void draw(int64_t) const {}
  int runs(int64_t i, Run* out) const {
    out[0] = data.row(row_at(i));
    return 1;
  }
};
template <class RowAt>
CsrRows<RowAt> csr_rows(const Csr& data, RowAt row_at) {
  return {data, row_at};
}

// The prefetch stages for the rows ahead of position i (count positions in all).
template <bool Write, class Source>
inline void prefetch_ahead(const Model& M, const Source& src, int64_t i, int64_t count, RowRing& ring) {
  Run runs[Source::kMaxRuns];
  if (i + kLocateAhead < count) src.locate(i + kLocateAhead);
  if (i + kIndptrAhead < count) src.index(i + kIndptrAhead);
  if (i + kDrawAhead < count) src.draw(i + kDrawAhead);
  if (i + kNodesAhead < count) {
    const int k = src.runs(i + kNodesAhead, runs);
    for (int q = 0; q < k; ++q) {
      const Run& s = runs[q];
      prefetch_lines<3>(s.field, s.len * static_cast<int64_t>(sizeof(int32_t)));
      prefetch_lines<3>(s.feat, s.len * static_cast<int64_t>(sizeof(int32_t)));
      if (s.val) prefetch_lines<3>(s.val, s.len * static_cast<int64_t>(sizeof(float)));
    }
  }
  if (i + kMapAhead < count) {
    const int k = src.runs(i + kMapAhead, runs);
    for (int q = 0; q < k; ++q) prefetch_maps<Write>(M, runs[q]);
  }
  if (i + kBlockAhead < count) {
    const int k = src.runs(i + kBlockAhead, runs);
    int64_t len = 0;
    for (int q = 0; q < k; ++q) len += runs[q].len;
    int32_t* rows = ring.fill(i + kBlockAhead, len);
    for (int q = 0; q < k; ++q) {
      prefetch_blocks<Write>(M, runs[q], rows);
      rows += runs[q].len;
    }
  }
}

}  // namespace fmrecall
