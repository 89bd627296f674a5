// One instance gathered for the kernels: its in-model nodes, grouped by field ("slots"), plus the
// per-thread scratch the kernels reuse row after row (grow-only: no allocation once warmed up).
#pragma once

#include <algorithm>
#include <vector>

#include "model.h"

namespace fmrecall {

// A run of (field, feature, value) triples, e.g. one CSR row; val == nullptr means every value is 1.
// rows, when given, holds each triple's vector row, looked up already by the block prefetch stage
// (prefetch.h): its W row in a field-aware field, its v row in a single field (-1: none, or a
// triple outside the model). The row build reads it instead of the model's row maps.
struct Run {
  const int32_t* field;
  const int32_t* feat;
  const float* val;
  int64_t len;
  const int32_t* rows = nullptr;
};

// Field-aware CSR rows; val == nullptr means all values are 1, label may be nullptr for predict.
struct Csr {
  const int64_t* indptr = nullptr;
  const int32_t* field = nullptr;
  const int32_t* feat = nullptr;
  const float* val = nullptr;
  const float* label = nullptr;
  int64_t rows = 0;

  Run row(int64_t r) const {
    const int64_t b = indptr[r];
    return {field + b, feat + b, val ? val + b : nullptr, indptr[r + 1] - b};
  }
};

// Gradients summed per parameter (keyed by the parameter's address) before one AdaGrad step each:
// the exact step when parameters are shared between nodes of a row or between the two rows of a
// BPR pair. Grow-only storage, stamped hash table (no clearing, no allocation once warmed up).
struct GradAcc {
  struct Entry {
    float* w;
    float* G;
    int32_t len;
    float l2;
  };
  std::vector<Entry> entries;
  std::vector<float> grad;  // entries.size() * stride
  int32_t stride = 0;
  int32_t count = 0;

  void reset(int32_t kp) {
    stride = kp;
    count = 0;
    if (++stamp_ == 0) {
      std::fill(hstamp_.begin(), hstamp_.end(), 0u);
      stamp_ = 1;
    }
  }
  // The gradient slot of parameter w (len floats, accumulator G, L2 l2), zeroed on first use.
  float* slot(float* w, float* G, int32_t len, float l2) {
    if (2 * (count + 1) > static_cast<int32_t>(hkey_.size())) grow();
    const size_t mask = hkey_.size() - 1;
    size_t h = (reinterpret_cast<uintptr_t>(w) >> 2) * 0x9E3779B97F4A7C15ull >> 20 & mask;
    while (hstamp_[h] == stamp_) {
      if (hkey_[h] == w) return grad.data() + static_cast<size_t>(hval_[h]) * stride;
      h = (h + 1) & mask;
    }
    if (static_cast<size_t>(count) >= entries.size()) {
      entries.resize(2 * entries.size() + 16);
      grad.resize(entries.size() * stride);
    }
    if (grad.size() < entries.size() * stride) grad.resize(entries.size() * stride);
    hstamp_[h] = stamp_;
    hkey_[h] = w;
    hval_[h] = count;
    entries[count] = {w, G, len, l2};
    float* g = grad.data() + static_cast<size_t>(count) * stride;
    std::fill(g, g + stride, 0.f);
    ++count;
    return g;
  }

 private:
  void grow() {  // rehash into a table twice as large
    const size_t cap = std::max<size_t>(64, 2 * hkey_.size());
    hkey_.assign(cap, nullptr);
    hval_.assign(cap, 0);
    hstamp_.assign(cap, 0u);
    stamp_ = 1;
    for (int32_t i = 0; i < count; ++i) {
      size_t h = (reinterpret_cast<uintptr_t>(entries[i].w) >> 2) * 0x9E3779B97F4A7C15ull >> 20 & (cap - 1);
      while (hstamp_[h] == stamp_) h = (h + 1) & (cap - 1);
      hstamp_[h] = stamp_;
      hkey_[h] = entries[i].w;
      hval_[h] = i;
    }
  }
  std::vector<float*> hkey_;
  std::vector<int32_t> hval_;
  std::vector<uint32_t> hstamp_;
  uint32_t stamp_ = 0;
};

// During training, the value of `field` is replaced by `feat` (its reserved "unseen" feature).
struct Swap {
  int32_t field;
  int64_t feat;
};

struct Row {
  // nodes (filtered: 0 <= feature < n, 0 <= field < F, value != 0)
  int n = 0;
  std::vector<int32_t> field, slot;
  std::vector<int64_t> feat;
  std::vector<int64_t> single_row;  // Model::single_row_of(feat) for single nodes, else -1
  std::vector<int64_t> aware_row;   // Model::aware_row_of(feat) for field-aware nodes, else -1
  std::vector<float> x;
  // slots: the distinct fields of the row, in order of first appearance
  int nf = 0;
  std::vector<int32_t> slot_of_field;  // (F) field -> slot, -1 if absent
  std::vector<int32_t> slot_field;     // (nf)
  std::vector<uint8_t> slot_aware;     // (nf)
  int n_single = 0, n_aware = 0;
  bool one_per_slot = true;                 // no field holds two field-aware nodes (one-hot fields)
  bool same_x = false;                      // every field-aware node has the same value (ax[b] == ax[0])
  bool shared = false;                      // some feature occurs in two nodes (its parameters are shared)
  std::vector<int32_t> single, aware;       // node ids of single nodes with a v row / field-aware nodes with a W row
  std::vector<int32_t> aw_begin, aw_nodes;  // field-aware nodes grouped by slot (CSR over slots)
  // per field-aware node b (in `aware` order): its W block (F * vs floats), field * vs, value
  std::vector<float*> ablk;
  std::vector<int32_t> afo;
  std::vector<float> ax;
  // Where each node's parameters live, for the kernels: its linear weight and AdaGrad state, its
  // single vector (nullptr if none) and its W block (nullptr if none); and the bias and its state.
  // gather points them into the model's tables; a training thread's HotCopy (hot.h) then points
  // the hot features and the bias at its private copies. Writable: training writes through them
  // (a row gathered from a const Model is only scored).
  std::vector<float*> lw, lg, vrow, wrow;
  float* w0 = nullptr;
  float* g0 = nullptr;

  // kernel scratch (sized by prepare())
  std::vector<float> S, Q, Sa, Ca, grad;
  std::vector<uint8_t> used;
  GradAcc acc;  // rows with shared parameters: per-parameter gradient sums
  float score = 0.f;

  // Gather the nodes of up to a few runs (e.g. user + context + item) into this row, leaving
  // out node (skip_field, skip_feat) if given (an event's own item in the user's history) and
  // replacing the feature of every node in a swapped field (cold-start training).
  void gather(const Model& M, const Run* runs, int nrun, int32_t skip_field = -1, int64_t skip_feat = -1,
              const Swap* swaps = nullptr, int nswap = 0);

 private:
  // gather's fast path for a single run of unit values: true when every field occurs once (the
  // common libffm / Criteo row), with the same contents the general path would give the row;
  // false at the first field met twice (the general path then starts over).
  bool gather_one_hot(const Model& M, const Run& g);
  void point(const Model& M, int p, int64_t j);
  void reset_slots();
  void reserve_nodes(int64_t cap);
  bool any_repeated_feature();
  // The general path's vector row of each node, from Run::rows, or kRowUnknown (none given, or
  // the node's feature swapped): the second pass looks those up in the row maps.
  static constexpr int32_t kRowUnknown = -2;
  std::vector<int32_t> known_row_;
  // open-addressing set of the row's features (stamped, so it is never cleared)
  std::vector<int64_t> hkey_;
  std::vector<uint32_t> hstamp_;
  uint32_t stamp_ = 0;
};

}  // namespace fmrecall
