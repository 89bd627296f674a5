#include "fmrecall/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

namespace fmrecall {

namespace {
// One row of `blocks` stored vectors [w | G] (vs = 2 kp floats each): w ~ U(-a, a) in its first k
// lanes drawn from one stream, G = 1 (libffm's start).
void init_row(float* row, int64_t blocks, int32_t k, int32_t kp, float a, uint64_t stream) {
  Rng rng(stream);
  for (int64_t b = 0; b < blocks; ++b) {
    float* w = row + b * 2 * kp;
    for (int32_t d = 0; d < k; ++d) w[d] = a * (2.f * rng.uniform() - 1.f);
    for (int32_t d = 0; d < kp; ++d) w[kp + d] = 1.f;
  }
}

// rows x blocks stored vectors, row r seeded by (seed, table, r): independent of the thread count.
void init_table(float* dst, int64_t rows, int64_t blocks, int32_t k, int32_t kp, float a, uint64_t seed,
                uint64_t table) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    init_row(dst + r * blocks * 2 * kp, blocks, k, kp, a, mix_seed(seed, table, static_cast<uint64_t>(r)));
}

// Single vectors through an explicit row map: every row gets G = 1, the row of feature j its
// weights from the stream (seed, 1, j), the one an identity layout gives row j (init_table, table 1).
void init_mapped(float* dst, int64_t rows, const std::vector<int32_t>& map, int32_t k, int32_t kp, float a,
                 uint64_t seed) {
  const int64_t n = static_cast<int64_t>(map.size());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t d = 0; d < kp; ++d) dst[r * 2 * kp + kp + d] = 1.f;
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j)
    if (map[j] >= 0) init_row(dst + map[j] * 2 * kp, 1, k, kp, a, mix_seed(seed, 1, static_cast<uint64_t>(j)));
}

// InputError unless `map` is empty (identity) or has n entries, each -1 or a row < rows, and (if
// `unique`) no row twice.
void check_row_map(const std::vector<int32_t>& map, int64_t n, int64_t rows, const char* name, bool unique) {
  if (map.empty()) return;
  if (static_cast<int64_t>(map.size()) != n) throw InputError(std::string(name) + " must have one entry per feature");
  std::vector<uint8_t> used(unique && rows > 0 ? static_cast<size_t>(rows) : 0);
  for (int32_t r : map) {
    if (r < -1 || r >= rows)
      throw InputError(std::string(name) + " entries must be -1 or a row < " + std::to_string(rows) + ", got " +
                       std::to_string(r));
    if (unique && r >= 0) {
      if (used[r]) throw InputError(std::string(name) + " gives two features row " + std::to_string(r));
      used[r] = 1;
    }
  }
}

// Copy the weight half of every stored vector (stride 2 kp) into a compact (count, kp) array, or back.
void copy_weights(float* compact, float* stored, int64_t count, int32_t kp, bool to_compact) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    if (to_compact)
      std::memcpy(compact + i * kp, stored + i * 2 * kp, sizeof(float) * kp);
    else
      std::memcpy(stored + i * 2 * kp, compact + i * kp, sizeof(float) * kp);
  }
}
}  // namespace

void Model::allocate(int64_t n_, int32_t F_, int32_t k_, std::vector<uint8_t> aware_, std::vector<int32_t> aware_row_,
                     int64_t aware_rows_, float init_std, uint64_t seed, bool normalize_,
                     std::vector<int32_t> single_row_, int64_t single_rows_) {
  WriteLock lock(mu);
  if (n_ < 0 || F_ < 0 || k_ < 1 || k_ > 512)
    throw InputError("model sizes out of range (need n >= 0, F >= 0, 1 <= k <= 512)");
  if (static_cast<int32_t>(aware_.size()) != F_) throw InputError("aware flags must have one entry per field");
  if (aware_rows_ < 0 || single_rows_ < 0) throw InputError("row counts must be >= 0");
  check_row_map(aware_row_, n_, aware_rows_, "aware_row", false);
  check_row_map(single_row_, n_, single_rows_, "single_row", true);
  if (!single_row_.empty() && std::find(aware_.begin(), aware_.end(), uint8_t{0}) == aware_.end())
    throw InputError("single_row given for a model without single fields");
  n = n_;
  F = F_;
  k = k_;
  kp = padded(k_);
  aware = std::move(aware_);
  normalize = normalize_;
  aware_row = std::move(aware_row_);
  aware_rows = aware_row.empty() ? (any_aware() ? n : 0) : aware_rows_;
  single_row = std::move(single_row_);
  single_rows = single_row.empty() ? (any_single() ? n : 0) : single_rows_;
  w0 = 0.f;
  g0 = 1.f;
  w.resize(n);
  gw.resize(n);
  gw.fill(1.f);
  vs = 2 * kp;
  const float a = init_std * 1.7320508f;  // U(-a, a) has standard deviation init_std
  v.resize(static_cast<size_t>(single_rows) * vs);
  if (!v.empty()) {
    if (single_row.empty())
      init_table(v.data(), single_rows, 1, k, kp, a, seed, 1);
    else
      init_mapped(v.data(), single_rows, single_row, k, kp, a, seed);
  }
  W.resize(aware_rows > 0 ? static_cast<size_t>(aware_rows) * F * vs : 0);
  if (!W.empty()) init_table(W.data(), aware_rows, F, k, kp, a, seed, 2);
  snap_w.resize(0);
  snap_v.resize(0);
  snap_W.resize(0);
}

namespace {
void copy_into(AlignedArray<float>& dst, const AlignedArray<float>& src) {
  if (dst.size() != src.size()) dst.resize(src.size());
  if (src.size()) std::memcpy(dst.data(), src.data(), src.size() * sizeof(float));
}

// One table's growth, planned aside: `map` (explicit, a copy of the model's) gets a new row for
// each listed feature without one; `table` is then the old rows followed by the new ones, each
// drawn from the stream (seed, stream_table, feature) (independent of batch order).
struct Growth {
  std::vector<int32_t> map, fresh;
  AlignedArray<float> table;

  void plan(const std::vector<int32_t>& model_map, int64_t rows, const int32_t* feats, int64_t count) {
    map = model_map;
    for (int64_t i = 0; i < count; ++i) {
      const int32_t j = feats[i];
      if (map[j] < 0) {
        map[j] = static_cast<int32_t>(rows + static_cast<int64_t>(fresh.size()));
        fresh.push_back(j);
      }
    }
    if (rows + static_cast<int64_t>(fresh.size()) > INT32_MAX) throw InputError("too many vector rows");
  }
  void build(const AlignedArray<float>& old, int64_t rows, int64_t blocks, int32_t k, int32_t kp, float a,
             uint64_t seed, uint64_t stream_table) {
    const size_t block = static_cast<size_t>(blocks) * 2 * kp;
    table.resize(static_cast<size_t>(rows + static_cast<int64_t>(fresh.size())) * block);
    if (rows) std::memcpy(table.data(), old.data(), sizeof(float) * static_cast<size_t>(rows) * block);
    for (size_t t = 0; t < fresh.size(); ++t)
      init_row(table.data() + (static_cast<size_t>(rows) + t) * block, blocks, k, kp, a,
               mix_seed(seed, stream_table, static_cast<uint64_t>(fresh[t])));
  }
};
}  // namespace

std::pair<int64_t, int64_t> Model::grow_rows(const int32_t* single_feats, int64_t n_single, const int32_t* aware_feats,
                                             int64_t n_aware, float init_std, uint64_t seed) {
  WriteLock lock(mu);
  for (const auto& [feats, count] : {std::pair{single_feats, n_single}, std::pair{aware_feats, n_aware}})
    for (int64_t i = 0; i < count; ++i)  // check all before changing anything
      if (feats[i] < 0 || feats[i] >= n)
        throw InputError("feature index " + std::to_string(feats[i]) + " out of range [0, " + std::to_string(n) + ")");
  // an identity layout gives every feature a row already
  const bool grow_v = !single_row.empty() && any_single(), grow_W = !aware_row.empty() && any_aware();
  Growth gs, ga;
  if (grow_v) gs.plan(single_row, single_rows, single_feats, n_single);
  if (grow_W) ga.plan(aware_row, aware_rows, aware_feats, n_aware);
  const float a = init_std * 1.7320508f;
  if (!gs.fresh.empty()) gs.build(v, single_rows, 1, k, kp, a, seed, 1);  // allocate's stream: same init
  if (!ga.fresh.empty()) ga.build(W, aware_rows, F, k, kp, a, seed, 3);
  const int64_t added_v = static_cast<int64_t>(gs.fresh.size()), added_W = static_cast<int64_t>(ga.fresh.size());
  if (added_v) {
    v = std::move(gs.table);
    single_row = std::move(gs.map);
    single_rows += added_v;
    snap_v.resize(0);  // a snapshot no longer matches
  }
  if (added_W) {
    W = std::move(ga.table);
    aware_row = std::move(ga.map);
    aware_rows += added_W;
    snap_W.resize(0);
  }
  if (added_v || added_W) snap_w.resize(0);
  return {added_v, added_W};
}

void Model::grow_features(int64_t n_new) {
  WriteLock lock(mu);
  if (n_new < 0) throw InputError("grow_features: n_new must be >= 0, got " + std::to_string(n_new));
  if (n_new == 0) return;
  if (n + n_new > INT32_MAX)  // feature indices are int32 everywhere
    throw InputError("grow_features: " + std::to_string(n) + " + " + std::to_string(n_new) +
                     " features exceed the int32 index range");
  const int64_t n2 = n + n_new;
  // build every new array aside, then commit (nothing changes if an allocation throws)
  AlignedArray<float> w2(static_cast<size_t>(n2)), gw2(static_cast<size_t>(n2));
  if (n) std::memcpy(w2.data(), w.data(), sizeof(float) * n);  // new linear weights stay 0
  gw2.fill(1.f);
  if (n) std::memcpy(gw2.data(), gw.data(), sizeof(float) * n);
  // the row maps gain -1 entries (an identity map becomes explicit: every old feature keeps its row)
  auto extend = [&](const std::vector<int32_t>& map, bool kind) {
    std::vector<int32_t> out;
    if (!kind) return out;
    out.reserve(static_cast<size_t>(n2));
    if (map.empty())
      for (int64_t j = 0; j < n; ++j) out.push_back(static_cast<int32_t>(j));
    else
      out = map;
    out.resize(static_cast<size_t>(n2), -1);
    return out;
  };
  std::vector<int32_t> srows = extend(single_row, any_single()), arows = extend(aware_row, any_aware());
  w = std::move(w2);
  gw = std::move(gw2);
  single_row = std::move(srows);
  aware_row = std::move(arows);
  n = n2;
  snap_w.resize(0);  // a snapshot no longer matches
  snap_v.resize(0);
  snap_W.resize(0);
}

bool Model::finite() const {
  ReadLock lock(mu);
  if (!std::isfinite(w0)) return false;
  for (size_t i = 0; i < w.size(); ++i)
    if (!std::isfinite(w[i])) return false;
  for (const AlignedArray<float>* t : {&v, &W})  // weight halves of the stored vectors [w (kp) | G (kp)]
    for (size_t r = 0; r < t->size(); r += vs)
      for (int32_t d = 0; d < k; ++d)
        if (!std::isfinite((*t)[r + d])) return false;
  return true;
}

void Model::snapshot() {
  ReadLock lock(mu);
  std::lock_guard<std::mutex> snap(snap_mu);
  snap_w0 = w0;
  copy_into(snap_w, w);
  snap_v.resize(v.size() / 2);
  if (!v.empty()) copy_weights(snap_v.data(), v.data(), static_cast<int64_t>(v.size() / vs), kp, true);
  snap_W.resize(W.size() / 2);
  if (!W.empty()) copy_weights(snap_W.data(), W.data(), static_cast<int64_t>(W.size() / vs), kp, true);
}

void Model::restore() {
  WriteLock lock(mu);
  if (snap_w.size() != w.size()) throw std::logic_error("restore() without snapshot()");
  w0 = snap_w0;
  copy_into(w, snap_w);
  if (!v.empty()) copy_weights(snap_v.data(), v.data(), static_cast<int64_t>(v.size() / vs), kp, false);
  if (!W.empty()) copy_weights(snap_W.data(), W.data(), static_cast<int64_t>(W.size() / vs), kp, false);
  snap_w.resize(0);
  snap_v.resize(0);
  snap_W.resize(0);
}

void Model::drop_snapshot() {
  std::lock_guard<std::mutex> snap(snap_mu);
  snap_w = AlignedArray<float>();
  snap_v = AlignedArray<float>();
  snap_W = AlignedArray<float>();
}

namespace {
// Unpadded copy of rows stored vectors (stride 2 kp, weights in the first k floats).
std::vector<float> unpad(const AlignedArray<float>& src, int64_t rows, int32_t k, int32_t kp) {
  std::vector<float> out(static_cast<size_t>(rows) * k);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out.data() + r * k, src.data() + r * 2 * kp, sizeof(float) * k);
  return out;
}

// Write a compact (rows, k) array into the weight halves of stored vectors (padding lanes = 0).
void pad_into(AlignedArray<float>& dst, const float* src, int64_t rows, int32_t k, int32_t kp) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst.data() + r * 2 * kp, src + r * k, sizeof(float) * k);
    for (int32_t d = k; d < kp; ++d) dst[r * 2 * kp + d] = 0.f;
  }
}

void check_finite(const float* p, int64_t count, const char* name) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(p[i]))
      throw InputError(std::string(name) + " contains a non-finite value (at flat index " + std::to_string(i) + ")");
}
}  // namespace

Weights Model::get_weights() const {
  ReadLock lock(mu);
  Weights out;
  out.bias = w0;
  out.n = n;
  out.single_rows = single_rows;
  out.aware_rows = aware_rows;
  out.F = F;
  out.k = k;
  out.linear.assign(w.data(), w.data() + n);
  out.has_v = !v.empty();
  out.has_W = !W.empty();
  out.has_single_map = !single_row.empty();
  out.has_rows = !aware_row.empty();
  if (out.has_v) out.v = unpad(v, single_rows, k, kp);
  if (out.has_single_map) out.single_row = single_row;
  if (out.has_W) out.W = unpad(W, aware_rows * F, k, kp);
  if (out.has_rows) out.aware_row = aware_row;
  return out;
}

void Model::set_weights(float bias, const float* linear, int64_t n_linear, const float* v_, int64_t n_v,
                        const float* W_, int64_t n_W) {
  // finiteness needs no lock (the caller's arrays); the sizes are checked against the model under it
  if (!std::isfinite(bias)) throw InputError("bias is not finite");
  check_finite(linear, n_linear, "linear");
  if (v_) check_finite(v_, n_v, "factors");
  if (W_) check_finite(W_, n_W, "field-aware factors");
  WriteLock lock(mu);
  if (n_linear != n)
    throw InputError("linear has " + std::to_string(n_linear) + " entries, expected n_features = " + std::to_string(n));
  if (v.empty() != !v_) throw InputError("single-vector factors given/missing for this model type");
  if (W.empty() != !W_) throw InputError("field-aware factors given/missing for this model type");
  if (v_ && n_v != single_rows * k)
    throw InputError("factors has " + std::to_string(n_v) + " entries, expected " + std::to_string(single_rows * k));
  if (W_ && n_W != aware_rows * F * k)
    throw InputError("field-aware factors has " + std::to_string(n_W) + " entries, expected " +
                     std::to_string(aware_rows * F * k));
  w0 = bias;
  if (n) std::memcpy(w.data(), linear, sizeof(float) * n);
  if (v_) pad_into(v, v_, single_rows, k, kp);
  if (W_) pad_into(W, W_, aware_rows * F, k, kp);
  snap_w.resize(0);  // a snapshot of other weights must not be restored over these
  snap_v.resize(0);
  snap_W.resize(0);
}

int64_t Model::current_single_rows() const {
  ReadLock lock(mu);
  return single_rows;
}

int64_t Model::current_aware_rows() const {
  ReadLock lock(mu);
  return aware_rows;
}

int64_t Model::current_features() const {
  ReadLock lock(mu);
  return n;
}

}  // namespace fmrecall
