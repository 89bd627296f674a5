#include "fmrecall/model.h"

#include <omp.h>

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

void Model::allocate(int64_t n_, int32_t F_, int32_t k_, std::vector<uint8_t> aware_,
                     std::vector<int32_t> aware_row_, int64_t m_, float init_std, uint64_t seed) {
  if (n_ < 0 || F_ < 0 || k_ < 1 || k_ > 512)
    throw InputError("model sizes out of range (need n >= 0, F >= 0, 1 <= k <= 512)");
  if (static_cast<int32_t>(aware_.size()) != F_) throw InputError("aware flags must have one entry per field");
  n = n_;
  F = F_;
  k = k_;
  kp = padded(k_);
  aware = std::move(aware_);
  aware_row = std::move(aware_row_);
  m = aware_row.empty() ? (any_aware() ? n : 0) : m_;
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
  W.resize(m > 0 ? static_cast<size_t>(m) * F * vs : 0);
  if (!W.empty()) init_table(W.data(), m, F, k, kp, a, seed, 2);
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
  if (aware_row.empty() || !any_aware()) return 0;  // identity layout: every feature has a row
  std::vector<int32_t> fresh;
  for (int64_t i = 0; i < count; ++i) {
    const int32_t j = features[i];
    if (j < 0 || j >= n) throw InputError("feature index out of range");
    if (aware_row[j] < 0) {
      aware_row[j] = static_cast<int32_t>(m + static_cast<int64_t>(fresh.size()));
      fresh.push_back(j);
    }
  }
  if (fresh.empty()) return 0;
  const size_t block = static_cast<size_t>(F) * vs;
  AlignedArray<float> bigger(static_cast<size_t>(m + static_cast<int64_t>(fresh.size())) * block);
  if (m) std::memcpy(bigger.data(), W.data(), sizeof(float) * static_cast<size_t>(m) * block);
  const float a = init_std * 1.7320508f;
  for (size_t t = 0; t < fresh.size(); ++t) {  // seeded by (seed, feature): independent of batch order
    Rng rng(mix_seed(seed, 3, static_cast<uint64_t>(fresh[t])));
    float* row = bigger.data() + (static_cast<size_t>(m) + t) * block;
    for (int32_t b = 0; b < F; ++b) {
      for (int32_t d = 0; d < k; ++d) row[b * vs + d] = a * (2.f * rng.uniform() - 1.f);
      for (int32_t d = 0; d < kp; ++d) row[b * vs + kp + d] = 1.f;
    }
  }
  W = std::move(bigger);
  m += static_cast<int64_t>(fresh.size());
  snap_W.resize(0);  // a snapshot no longer matches
  snap_w.resize(0);
  return static_cast<int64_t>(fresh.size());
}

void Model::snapshot() {
  snap_w0 = w0;
  copy_into(snap_w, w);
  snap_v.resize(v.size() / 2);
  if (!v.empty()) copy_weights(snap_v.data(), v.data(), static_cast<int64_t>(v.size() / vs), kp, true);
  snap_W.resize(W.size() / 2);
  if (!W.empty()) copy_weights(snap_W.data(), W.data(), static_cast<int64_t>(W.size() / vs), kp, true);
}

void Model::restore() {
  if (snap_w.size() != w.size()) throw std::logic_error("restore() without snapshot()");
  w0 = snap_w0;
  copy_into(w, snap_w);
  if (!v.empty()) copy_weights(snap_v.data(), v.data(), static_cast<int64_t>(v.size() / vs), kp, false);
  if (!W.empty()) copy_weights(snap_W.data(), W.data(), static_cast<int64_t>(W.size() / vs), kp, false);
  snap_w.resize(0);
  snap_v.resize(0);
  snap_W.resize(0);
}

}  // namespace fmrecall
