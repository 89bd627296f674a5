#include "fmrecall/row.h"

#include <algorithm>
#include <cmath>

namespace fmrecall {

namespace {
// A table's first float, writable: rows point into the model for training to write through.
float* table(const AlignedArray<float>& a) { return const_cast<float*>(a.data()); }
}  // namespace

// Node p (feature j) in the model's tables: linear weight and state; no vectors until set.
void Row::point(const Model& M, int p, int64_t j) {
  lw[p] = table(M.w) + j;
  lg[p] = table(M.gw) + j;
  vrow[p] = nullptr;
  wrow[p] = nullptr;
}

void Row::reset_slots() {
  for (int s = 0; s < nf; ++s) slot_of_field[slot_field[s]] = -1;
  nf = 0;
}

void Row::reserve_nodes(int64_t cap) {
  cap = std::max<int64_t>(cap, 1);
  if (static_cast<int64_t>(field.size()) >= cap) return;
  const size_t c = static_cast<size_t>(std::max<int64_t>(cap, 2 * static_cast<int64_t>(field.size())));
  for (auto* v : {&field, &slot, &slot_field, &single, &aware, &aw_nodes, &afo, &known_row_}) v->resize(c);
  aw_begin.resize(c + 1);
  feat.resize(c);
  single_row.resize(c);
  aware_row.resize(c);
  ablk.resize(c);
  for (auto* v : {&lw, &lg, &vrow, &wrow}) v->resize(c);
  x.resize(c);
  ax.resize(c);
  slot_aware.resize(c);
}

bool Row::any_repeated_feature() {
  size_t cap = 64;
  while (cap < 2 * static_cast<size_t>(n)) cap *= 2;
  if (hkey_.size() != cap) {
    hkey_.assign(cap, 0);
    hstamp_.assign(cap, 0);
    stamp_ = 0;
  }
  if (++stamp_ == 0) {  // wrapped: clear once every 2^32 rows
    std::fill(hstamp_.begin(), hstamp_.end(), 0u);
    stamp_ = 1;
  }
  const size_t mask = cap - 1;
  for (int p = 0; p < n; ++p) {
    const int64_t j = feat[p];
    size_t h = static_cast<size_t>((static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ull) >> 32) & mask;
    while (hstamp_[h] == stamp_) {
      if (hkey_[h] == j) return true;
      h = (h + 1) & mask;
    }
    hstamp_[h] = stamp_;
    hkey_[h] = j;
  }
  return false;
}

bool Row::gather_one_hot(const Model& M, const Run& g) {
  uint64_t seen = 0;  // fields met so far (M.F <= 64)
  int ns = 0, na = 0;
  n = 0;
  aw_begin[0] = 0;
  for (int64_t t = 0; t < g.len; ++t) {
    const int32_t f = g.field[t];
    const int64_t j = g.feat[t];
    if (!M.holds(j, f)) continue;  // outside the model: ignored, as in gather
    const uint64_t bit = uint64_t{1} << f;
    if (seen & bit) {  // a field met twice: the general path starts over (reset_slots clears these slots)
      nf = n;
      return false;
    }
    seen |= bit;
    // node n is slot n: the same contents the general path gives a row of distinct fields
    field[n] = f;
    feat[n] = j;
    x[n] = M.scale;  // value 1 times the model's value scale
    slot[n] = n;
    slot_of_field[f] = n;
    slot_field[n] = f;
    slot_aware[n] = M.aware[f];
    point(M, n, j);
    if (M.aware[f]) {
      const int64_t r = g.rows ? g.rows[t] : M.aware_row_of(j);
      single_row[n] = -1;
      aware_row[n] = r;
      if (r >= 0) {
        wrow[n] = table(M.W) + r * static_cast<int64_t>(M.F) * M.vs;
        ablk[na] = wrow[n];
        afo[na] = f * M.vs;
        ax[na] = M.scale;
        aw_nodes[na] = n;
        aware[na++] = n;
      }
    } else {
      const int64_t r = g.rows ? g.rows[t] : M.single_row_of(j);
      single_row[n] = r;
      aware_row[n] = -1;
      if (r >= 0) {
        vrow[n] = table(M.v) + r * M.vs;
        single[ns++] = n;
      }
    }
    aw_begin[++n] = na;
  }
  nf = n;
  n_single = ns;
  n_aware = na;
  one_per_slot = true;
  same_x = true;  // every value is M.scale
  shared = any_repeated_feature();
  return true;
}

void Row::gather(const Model& M, const Run* runs, int nrun, int32_t skip_field, int64_t skip_feat, const Swap* swaps,
                 int nswap) {
  if (static_cast<int32_t>(slot_of_field.size()) != M.F) {
    slot_of_field.assign(M.F, -1);
    nf = 0;
  }
  reset_slots();
  w0 = const_cast<float*>(&M.w0);
  g0 = const_cast<float*>(&M.g0);
  int64_t cap = 0;
  for (int s = 0; s < nrun; ++s) cap += runs[s].len;
  reserve_nodes(cap);
  // One-hot rows (one run, every value 1, no skip or swap, no instance normalisation): one pass
  if (nrun == 1 && !runs[0].val && skip_field < 0 && nswap == 0 && !M.normalize && M.F <= 64) {
    if (gather_one_hot(M, runs[0])) return;
    reset_slots();
  }

  n = 0;
  double norm2 = 0.0;
  for (int s = 0; s < nrun; ++s) {
    const Run& g = runs[s];
    for (int64_t t = 0; t < g.len; ++t) {
      const int32_t f = g.field[t];
      int64_t j = g.feat[t];
      int32_t known = g.rows ? g.rows[t] : kRowUnknown;
      for (int w = 0; w < nswap; ++w)
        if (swaps[w].field == f) j = swaps[w].feat, known = kRowUnknown;
      const float xv = g.val ? g.val[t] : 1.f;
      // Indices outside the model (unseen at training time) are ignored, as are zero values.
      if (!M.holds(j, f) || xv == 0.f) continue;
      if (f == skip_field && j == skip_feat) continue;
      field[n] = f;
      feat[n] = j;
      known_row_[n] = known;
      x[n] = xv;
      norm2 += static_cast<double>(xv) * xv;
      ++n;
    }
  }
  if (M.normalize && norm2 > 0.0) {  // libffm's instance-wise 1/||x|| (breaks the split, DESIGN §6)
    const float r = static_cast<float>(1.0 / std::sqrt(norm2));
    for (int p = 0; p < n; ++p) x[p] *= r;
  } else if (M.scale != 1.f) {  // the model's constant value scale (keeps the split exact, DESIGN §6)
    for (int p = 0; p < n; ++p) x[p] *= M.scale;
  }

  int ns = 0, na = 0;
  for (int p = 0; p < n; ++p) {
    const int32_t f = field[p];
    int32_t s = slot_of_field[f];
    if (s < 0) {
      s = nf++;
      slot_of_field[f] = s;
      slot_field[s] = f;
      slot_aware[s] = M.aware[f];
    }
    slot[p] = s;
    // a feature with no vectors (not seen in training) contributes linearly only
    point(M, p, feat[p]);
    if (M.aware[f]) {
      const int64_t r = known_row_[p] != kRowUnknown ? known_row_[p] : M.aware_row_of(feat[p]);
      single_row[p] = -1;
      aware_row[p] = r;
      if (r >= 0) {
        wrow[p] = table(M.W) + r * static_cast<int64_t>(M.F) * M.vs;
        ablk[na] = wrow[p];
        afo[na] = f * M.vs;
        ax[na] = x[p];
        aware[na++] = p;
      }
    } else {
      const int64_t r = known_row_[p] != kRowUnknown ? known_row_[p] : M.single_row_of(feat[p]);
      single_row[p] = r;
      aware_row[p] = -1;
      if (r >= 0) {
        vrow[p] = table(M.v) + r * M.vs;
        single[ns++] = p;
      }
    }
  }
  // field-aware nodes grouped by slot (counting sort)
  std::fill(aw_begin.begin(), aw_begin.begin() + nf + 1, 0);
  for (int a = 0; a < na; ++a) ++aw_begin[slot[aware[a]] + 1];
  for (int s = 0; s < nf; ++s) aw_begin[s + 1] += aw_begin[s];
  for (int a = 0; a < na; ++a) {
    const int s = slot[aware[a]];
    aw_nodes[aw_begin[s]++] = aware[a];
  }
  for (int s = nf; s > 0; --s) aw_begin[s] = aw_begin[s - 1];
  aw_begin[0] = 0;
  n_single = ns;
  n_aware = na;
  int aware_slots = 0;
  for (int s = 0; s < nf; ++s) aware_slots += aw_begin[s + 1] > aw_begin[s];
  one_per_slot = aware_slots == na;
  same_x = true;
  for (int a = 1; a < na; ++a) same_x = same_x && ax[a] == ax[0];
  shared = any_repeated_feature();
}

}  // namespace fmrecall
