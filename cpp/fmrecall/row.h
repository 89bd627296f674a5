// One instance gathered for the kernels: its in-model nodes, grouped by field ("slots"), plus the
// per-thread scratch the kernels reuse row after row (grow-only: no allocation once warmed up).
#pragma once

#include <vector>

#include "model.h"

namespace fmrecall {

// A run of (field, feature, value) triples; value == nullptr means every value is 1.
struct Segment {
  const int32_t* field;
  const int32_t* feat;
  const float* val;
  int64_t len;
};

struct Row {
  // nodes (filtered: 0 <= feature < n, 0 <= field < F, value != 0)
  int n = 0;
  std::vector<int32_t> field, slot;
  std::vector<int64_t> feat, wrow;  // wrow: row of W for field-aware nodes, -1 otherwise
  std::vector<float> x;
  // slots: the distinct fields of the row, in order of first appearance
  int nf = 0;
  std::vector<int32_t> slot_of_field;  // (F) field -> slot, -1 if absent
  std::vector<int32_t> slot_field;     // (nf)
  std::vector<uint8_t> slot_aware;     // (nf)
  int n_single = 0, n_aware = 0;
  bool one_per_slot = true;  // no field holds two field-aware nodes (one-hot fields)
  bool shared = false;       // some feature occurs in two nodes (its parameters are shared)
  std::vector<int32_t> single, aware;  // node ids of single nodes / field-aware nodes with a W row
  std::vector<int32_t> aw_begin, aw_nodes;  // field-aware nodes grouped by slot (CSR over slots)
  // per field-aware node b (in `aware` order): offset of its W block, field * vs, value
  std::vector<int64_t> aoff;
  std::vector<int32_t> afo;
  std::vector<float> ax;

  // kernel scratch (sized by prepare())
  std::vector<float> S, Q, Sa, Ca, grad;
  std::vector<uint8_t> used;
  std::vector<float> lin;      // shared rows: summed d score / d w_j per first occurrence
  float score = 0.f;

  // Gather the nodes of up to a few segments (e.g. user + context + item) into this row.
  void gather(const Model& M, const Segment* segs, int nseg);

 private:
  void reset_slots();
  void reserve_nodes(int64_t cap);
  bool any_repeated_feature();
  // open-addressing set of the row's features (stamped, so it is never cleared)
  std::vector<int64_t> hkey_;
  std::vector<uint32_t> hstamp_;
  uint32_t stamp_ = 0;
};

}  // namespace fmrecall
