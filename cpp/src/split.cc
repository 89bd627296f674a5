#include "fmrecall/split.h"

#include <algorithm>
#include <cstring>

#include <omp.h>

namespace fmrecall {

SplitLayout make_layout(const Model& M, const uint8_t* side, int64_t n_side) {
  ReadLock lock(M.mu);
  if (n_side != M.F) throw InputError("side must have one entry per field");
  if (M.normalize)
    throw InputError(
        "this model was trained with normalize=True / \"row\" (whole-row 1/||x|| scaling couples the query and "
        "item sides), so it cannot be split exactly; retrain with normalize=\"mean\" (the default: one constant "
        "scale for every row) or \"none\" (DESIGN.md §6)");
  SplitLayout L;
  L.F = M.F;
  L.k = M.k;
  L.side.assign(side, side + M.F);
  L.aware = M.aware;
  std::vector<int32_t> SQ, AQ, SI, AI;
  for (int32_t f = 0; f < M.F; ++f) {
    const bool item = L.side[f] != 0, aware = M.aware[f] != 0;
    (item ? L.i_fields : L.q_fields).push_back(f);
    (item ? (aware ? AI : SI) : (aware ? AQ : SQ)).push_back(f);
  }
  L.off_sa.assign(M.F, -1);
  L.off_bs.assign(M.F, -1);
  L.off_ab.assign(static_cast<size_t>(M.F) * M.F, -1);
  int64_t next = 0;
  if (!SQ.empty() && !SI.empty()) {
    L.off_ss = next;
    next += M.k;
  }
  if (!AI.empty())
    for (int32_t a : SQ) {
      L.off_sa[a] = next;
      next += M.k;
    }
  if (!AQ.empty())
    for (int32_t b : SI) {
      L.off_bs[b] = next;
      next += M.k;
    }
  for (int32_t a : AQ)
    for (int32_t b : AI) {
      L.off_ab[static_cast<size_t>(a) * M.F + b] = next;
      next += M.k;
    }
  L.dim = next + 1;
  return L;
}

std::vector<LayoutBlock> layout_blocks(const SplitLayout& L) {
  std::vector<LayoutBlock> out;
  if (L.off_ss >= 0) out.push_back({L.off_ss, "ss", -1, -1});
  for (int32_t f = 0; f < L.F; ++f) {
    if (L.off_sa[f] >= 0) out.push_back({L.off_sa[f], "sa", f, -1});
    if (L.off_bs[f] >= 0) out.push_back({L.off_bs[f], "bs", -1, f});
    for (int32_t g = 0; g < L.F; ++g) {
      const int64_t o = L.off_ab[static_cast<size_t>(f) * L.F + g];
      if (o >= 0) out.push_back({o, "ab", f, g});
    }
  }
  std::sort(out.begin(), out.end(), [](const LayoutBlock& a, const LayoutBlock& b) { return a.offset < b.offset; });
  return out;
}

namespace {

void check_layout(const Model& M, const SplitLayout& L) {
  if (L.F != M.F || L.k != M.k || L.aware != M.aware)
    throw InputError(
        "this split layout was made for another model (fields, k or field-aware flags differ): "
        "split the model again");
}

inline void add(float* __restrict dst, float x, const float* __restrict src, int k) {
  for (int d = 0; d < k; ++d) dst[d] += x * src[d];
}

// Each row: its own score (b_q, or the item's bias slot), then every node's cross-pair blocks.
template <class Fill>
void build(const Model& M, const SplitLayout& L, const Csr& rows, float* out, int threads, Fill&& fill) {
  for_each_scored_row(M, rows, threads, [&](const Row& row, float own, int64_t r) {
    float* v = out + r * L.dim;
    std::memset(v, 0, sizeof(float) * L.dim);
    fill(row, v, own, r);
  });
}

}  // namespace

void query_vectors(const Model& M, const SplitLayout& L, const Csr& rows, float* q, float* b, int threads) {
  ReadLock lock(M.mu);
  check_layout(M, L);
  const int k = L.k;
  build(M, L, rows, q, threads, [&](const Row& row, float* v, float own, int64_t r) {
    for (int p = 0; p < row.n; ++p) {
      const int32_t f = row.field[p];
      const float x = row.x[p];
      if (L.side[f]) continue;  // not a query field (callers check; ignore defensively)
      if (!M.aware[f]) {
        if (row.single_row[p] < 0) continue;  // no vector: linear only (in b)
        const float* vi = M.vec(row.single_row[p]);
        if (L.off_ss >= 0) add(v + L.off_ss, x, vi, k);
        if (L.off_sa[f] >= 0) add(v + L.off_sa[f], x, vi, k);
      } else if (row.aware_row[p] >= 0) {
        for (int32_t g : L.i_fields) {
          const int64_t o = M.aware[g] ? L.off_ab[static_cast<size_t>(f) * L.F + g] : L.off_bs[g];
          if (o >= 0) add(v + o, x, M.wvec(row.aware_row[p], g), k);
        }
      }
    }
    v[L.dim - 1] = 1.f;
    b[r] = own;
  });
}

void item_vectors(const Model& M, const SplitLayout& L, const Csr& rows, float* p, int threads) {
  ReadLock lock(M.mu);
  check_layout(M, L);
  const int k = L.k;
  build(M, L, rows, p, threads, [&](const Row& row, float* v, float own, int64_t) {
    for (int t = 0; t < row.n; ++t) {
      const int32_t g = row.field[t];
      const float x = row.x[t];
      if (!L.side[g]) continue;  // not an item field
      if (!M.aware[g]) {
        if (row.single_row[t] < 0) continue;  // no vector: linear only (in the bias slot)
        const float* vj = M.vec(row.single_row[t]);
        if (L.off_ss >= 0) add(v + L.off_ss, x, vj, k);
        if (L.off_bs[g] >= 0) add(v + L.off_bs[g], x, vj, k);
      } else if (row.aware_row[t] >= 0) {
        for (int32_t a : L.q_fields) {
          const int64_t o = M.aware[a] ? L.off_ab[static_cast<size_t>(a) * L.F + g] : L.off_sa[a];
          if (o >= 0) add(v + o, x, M.wvec(row.aware_row[t], a), k);
        }
      }
    }
    v[L.dim - 1] = own - M.w0;
  });
}

}  // namespace fmrecall
