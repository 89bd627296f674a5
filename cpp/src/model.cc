#include "fmrecall/model.h"

#include <omp.h>

#include <cmath>

namespace fmrecall {

namespace {
// rows x blocks stored vectors [w | G] of vs = 2 kp floats: w ~ U(-a, a) in its first k lanes
// (seeded by (seed, table, row), so independent of the thread count), G = 1 (libffm's start).
void init_table(float* dst, int64_t rows, int64_t blocks, int32_t k, int32_t kp, float a, uint64_t seed,
                uint64_t table) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(mix_seed(seed, table, static_cast<uint64_t>(r)));
    float* row = dst + r * blocks * 2 * kp;
    for (int64_t b = 0; b < blocks; ++b) {
      float* w = row + b * 2 * kp;
      for (int32_t d = 0; d < k; ++d) w[d] = a * (2.f * rng.uniform() - 1.f);
      for (int32_t d = 0; d < kp; ++d) w[kp + d] = 1.f;
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
                     int64_t aware_rows_, float init_std, uint64_t seed, bool normalize_) {
  WriteLock lock(mu);
  for (int32_t r : aware_row_)
    if (r < -1 || r >= aware_rows_) throw InputError("aware_row entries must be -1 or a row of W");
  if (n_ < 0 || F_ < 0 || k_ < 1 || k_ > 512)
    throw InputError("model sizes out of range (need n >= 0, F >= 0, 1 <= k <= 512)");
  if (static_cast<int32_t>(aware_.size()) != F_) throw InputError("aware flags must have one entry per field");
  n = n_;
  F = F_;
  k = k_;
  kp = padded(k_);
  aware = std::move(aware_);
  normalize = normalize_;
  aware_row = std::move(aware_row_);
  aware_rows = aware_row.empty() ? (any_aware() ? n : 0) : aware_rows_;
  if (!aware_row.empty() && static_cast<int64_t>(aware_row.size()) != n)
    throw InputError("aware_row must have one entry per feature");
  w0 = 0.f;
  g0 = 1.f;
  w.resize(n);
  gw.resize(n);
  gw.fill(1.f);
  vs = 2 * kp;
  const float a = init_std * 1.7320508f;  // U(-a, a) has standard deviation init_std
  v.resize(any_single() ? static_cast<size_t>(n) * vs : 0);
  if (!v.empty()) init_table(v.data(), n, 1, k, kp, a, seed, 1);
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
}  // namespace

int64_t Model::grow_rows(const int32_t* features, int64_t count, float init_std, uint64_t seed) {
  WriteLock lock(mu);
  if (aware_row.empty() || !any_aware()) return 0;  // identity layout: every feature has a row
  for (int64_t i = 0; i < count; ++i)               // check all before changing anything
    if (features[i] < 0 || features[i] >= n)
      throw InputError("feature index " + std::to_string(features[i]) + " out of range [0, " + std::to_string(n) + ")");
  std::vector<int32_t> fresh;
  std::vector<int32_t> rows(aware_row);  // the new row map, committed once the table exists
  for (int64_t i = 0; i < count; ++i) {
    const int32_t j = features[i];
    if (rows[j] < 0) {
      rows[j] = static_cast<int32_t>(aware_rows + static_cast<int64_t>(fresh.size()));
      fresh.push_back(j);
    }
  }
  if (fresh.empty()) return 0;
  if (aware_rows + static_cast<int64_t>(fresh.size()) > INT32_MAX) throw InputError("too many field-aware rows");
  const size_t block = static_cast<size_t>(F) * vs;
  AlignedArray<float> bigger(static_cast<size_t>(aware_rows + static_cast<int64_t>(fresh.size())) * block);
  if (aware_rows) std::memcpy(bigger.data(), W.data(), sizeof(float) * static_cast<size_t>(aware_rows) * block);
  const float a = init_std * 1.7320508f;
  for (size_t t = 0; t < fresh.size(); ++t) {  // seeded by (seed, feature): independent of batch order
    Rng rng(mix_seed(seed, 3, static_cast<uint64_t>(fresh[t])));
    float* row = bigger.data() + (static_cast<size_t>(aware_rows) + t) * block;
    for (int32_t b = 0; b < F; ++b) {
      for (int32_t d = 0; d < k; ++d) row[b * vs + d] = a * (2.f * rng.uniform() - 1.f);
      for (int32_t d = 0; d < kp; ++d) row[b * vs + kp + d] = 1.f;
    }
  }
  W = std::move(bigger);
  aware_row = std::move(rows);
  aware_rows += static_cast<int64_t>(fresh.size());
  snap_W.resize(0);  // a snapshot no longer matches
  snap_w.resize(0);
  return static_cast<int64_t>(fresh.size());
}

void Model::grow_features(int64_t n_new, const uint8_t* seen, int64_t n_seen, float init_std, uint64_t seed) {
  if (seen && n_seen != n_new) throw InputError("seen must have one entry per new feature");
  WriteLock lock(mu);
  if (n_new < 0) throw InputError("grow_features: n_new must be >= 0, got " + std::to_string(n_new));
  if (n_new == 0) return;
  if (n + n_new > INT32_MAX)  // feature indices are int32 everywhere
    throw InputError("grow_features: " + std::to_string(n) + " + " + std::to_string(n_new) +
                     " features exceed the int32 index range");
  const int64_t n2 = n + n_new;
  // build every new table aside, then commit (nothing changes if an allocation throws)
  AlignedArray<float> w2(static_cast<size_t>(n2)), gw2(static_cast<size_t>(n2));
  if (n) std::memcpy(w2.data(), w.data(), sizeof(float) * n);  // new linear weights stay 0
  gw2.fill(1.f);
  if (n) std::memcpy(gw2.data(), gw.data(), sizeof(float) * n);
  AlignedArray<float> v2;
  if (any_single()) {
    v2.resize(static_cast<size_t>(n2) * vs);
    if (!v.empty()) std::memcpy(v2.data(), v.data(), sizeof(float) * static_cast<size_t>(n) * vs);
    const float a = init_std * 1.7320508f;
    for (int64_t j = n; j < n2; ++j) {  // the stream allocate() uses for feature j (table 1)
      float* x = v2.data() + j * vs;
      if (!seen || seen[j - n]) {
        Rng rng(mix_seed(seed, 1, static_cast<uint64_t>(j)));
        for (int32_t d = 0; d < k; ++d) x[d] = a * (2.f * rng.uniform() - 1.f);
      }
      for (int32_t d = 0; d < kp; ++d) x[kp + d] = 1.f;
    }
  }
  std::vector<int32_t> rows;
  if (any_aware()) {
    rows.reserve(static_cast<size_t>(n2));
    if (aware_row.empty())  // identity layout (aware_rows == n): every old feature keeps its row
      for (int64_t j = 0; j < n; ++j) rows.push_back(static_cast<int32_t>(j));
    else
      rows = aware_row;
    rows.resize(static_cast<size_t>(n2), -1);
  }
  w = std::move(w2);
  gw = std::move(gw2);
  if (any_single()) v = std::move(v2);
  if (any_aware()) aware_row = std::move(rows);
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
  out.aware_rows = aware_rows;
  out.F = F;
  out.k = k;
  out.linear.assign(w.data(), w.data() + n);
  out.has_v = !v.empty();
  out.has_W = !W.empty();
  out.has_rows = !aware_row.empty();
  if (out.has_v) out.v = unpad(v, n, k, kp);
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
  if (v_ && n_v != n * k)
    throw InputError("factors has " + std::to_string(n_v) + " entries, expected " + std::to_string(n * k));
  if (W_ && n_W != aware_rows * F * k)
    throw InputError("field-aware factors has " + std::to_string(n_W) + " entries, expected " +
                     std::to_string(aware_rows * F * k));
  w0 = bias;
  if (n) std::memcpy(w.data(), linear, sizeof(float) * n);
  if (v_) pad_into(v, v_, n, k, kp);
  if (W_) pad_into(W, W_, aware_rows * F, k, kp);
  snap_w.resize(0);  // a snapshot of other weights must not be restored over these
  snap_v.resize(0);
  snap_W.resize(0);
}

void Model::zero_unseen(const uint8_t* seen, int64_t count) {
  WriteLock lock(mu);
  if (count != n) throw InputError("seen must have one entry per feature");
  if (v.empty()) return;
  for (int64_t j = 0; j < n; ++j)
    if (!seen[j]) std::memset(vec(j), 0, sizeof(float) * kp);
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
