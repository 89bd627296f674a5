#include "fmrecall/hot.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace fmrecall {

namespace {
size_t hash_slot(int64_t j, size_t mask) {
  return static_cast<size_t>((static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}
size_t round4(size_t n) { return (n + 3) / 4 * 4; }  // every vector of a copy starts 16-byte aligned

// m = c = b = the model's value plus this thread's change since its last merge (c − b); the copy's
// value itself where the model still holds b (nobody else changed it). Four lanes at a time.
void merge_values(float* m, float* c, float* b, int32_t len) {
  typedef float f4 __attribute__((vector_size(16)));
  int32_t i = 0;
  for (; i + 4 <= len; i += 4) {
    f4 mv, cv, bv;
    std::memcpy(&mv, m + i, sizeof(f4));
    std::memcpy(&cv, c + i, sizeof(f4));
    std::memcpy(&bv, b + i, sizeof(f4));
    const f4 v = mv == bv ? cv : mv + (cv - bv);
    std::memcpy(m + i, &v, sizeof(f4));
    std::memcpy(c + i, &v, sizeof(f4));
    std::memcpy(b + i, &v, sizeof(f4));
  }
  for (; i < len; ++i) {
    const float v = m[i] == b[i] ? c[i] : m[i] + (c[i] - b[i]);
    m[i] = v;
    c[i] = v;
    b[i] = v;
  }
}
}  // namespace

bool HotSet::wanted(int threads, int64_t count) {
  if (count <= 0) return false;
  const char* env = std::getenv("FMRECALL_HOT");
  if (env && !std::strcmp(env, "on")) return true;
  if (env && !std::strcmp(env, "off")) return false;
  return threads > 1 && count >= int64_t{4} * threads * merge_rows(threads);
}

void HotSet::count_run(const Run& run) {
  for (int64_t t = 0; t < run.len; ++t) {
    const int64_t j = run.feat[t];
    const int32_t f = run.field[t];
    if (j >= 0 && j < M_.n && f >= 0 && f < M_.F) seen_.push_back(j);
  }
}

void HotSet::choose() {
  // (count, feature) of every counted feature, most frequent first
  std::sort(seen_.begin(), seen_.end());
  std::vector<std::pair<int64_t, int64_t>> freq;
  for (size_t i = 0; i < seen_.size();) {
    size_t e = i;
    while (e < seen_.size() && seen_[e] == seen_[i]) ++e;
    freq.emplace_back(static_cast<int64_t>(e - i), seen_[i]);
    i = e;
  }
  std::vector<int64_t>().swap(seen_);
  std::sort(freq.begin(), freq.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  const int64_t min_count =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(static_cast<double>(rows_) * kMinShare)));
  const size_t block = static_cast<size_t>(M_.F) * M_.vs;
  // slot 0: the bias and its AdaGrad state
  lin_ = {0};
  v_ = {-1};
  W_ = {-1};
  segs_ = {{&M_.w0, 0, 1}, {&M_.g0, 1, 1}};
  seg_begin_ = {0, 2};
  floats_ = 4;
  std::vector<int64_t> feats = {-1};
  for (const auto& [c, j] : freq) {
    if (c < min_count) break;
    const int64_t vr = M_.v.empty() ? -1 : M_.single_row_of(j);
    const int64_t wr = M_.W.empty() ? -1 : M_.aware_row_of(j);
    const size_t need = 4 + (vr >= 0 ? static_cast<size_t>(M_.vs) : 0) + (wr >= 0 ? block : 0);
    if ((floats_ + need) * sizeof(float) > bytes_ || feats.size() > kMaxSlots) break;
    size_t at = floats_;
    lin_.push_back(at);
    segs_.push_back({M_.w.data() + j, at, 1});
    segs_.push_back({M_.gw.data() + j, at + 1, 1});
    at += 4;
    v_.push_back(vr >= 0 ? static_cast<int64_t>(at) : -1);
    if (vr >= 0) {
      segs_.push_back({M_.vec(vr), at, M_.vs});
      at += round4(static_cast<size_t>(M_.vs));
    }
    W_.push_back(wr >= 0 ? static_cast<int64_t>(at) : -1);
    if (wr >= 0) {
      segs_.push_back({M_.wvec(wr, 0), at, static_cast<int32_t>(block)});
      at += round4(block);
    }
    seg_begin_.push_back(static_cast<int32_t>(segs_.size()));
    floats_ = at;
    feats.push_back(j);
  }
  size_t cap = 16;
  while (cap < 2 * feats.size()) cap *= 2;  // load <= 1/2
  map_.assign(cap, Key{-1, -1});
  for (size_t h = 1; h < feats.size(); ++h) {
    size_t i = hash_slot(feats[h], cap - 1);
    while (map_[i].feat >= 0) i = (i + 1) & (cap - 1);
    map_[i] = {static_cast<int32_t>(feats[h]), static_cast<int32_t>(h)};
  }
}

int32_t HotSet::slot(int64_t j) const {
  const size_t mask = map_.size() - 1;
  for (size_t i = hash_slot(j, mask);; i = (i + 1) & mask) {
    if (map_[i].feat == j) return map_[i].slot;
    if (map_[i].feat < 0) return -1;
  }
}

HotCopy::HotCopy(HotSet& set) : set_(set), copy_(set.floats_), base_(set.floats_), dirty_(set.slots(), 0) {
  std::memset(copy_.data(), 0, set.floats_ * sizeof(float));
  for (int32_t h = 0; h < set.slots(); ++h) {
    std::lock_guard<std::mutex> g(set.stripe_[h % HotSet::kStripes]);
    for (int32_t s = set.seg_begin_[h]; s < set.seg_begin_[h + 1]; ++s) {
      const HotSet::Seg& sg = set.segs_[s];
      std::memcpy(copy_.data() + sg.local, sg.master, sg.len * sizeof(float));
    }
  }
  std::memcpy(base_.data(), copy_.data(), set.floats_ * sizeof(float));
}

void HotCopy::redirect(Row& r) {
  float* c = copy_.data();
  for (int p = 0; p < r.n; ++p) {
    const int32_t h = set_.slot(r.feat[p]);
    if (h < 0) continue;
    r.lw[p] = c + set_.lin_[h];
    r.lg[p] = c + set_.lin_[h] + 1;
    if (r.vrow[p] && set_.v_[h] >= 0) r.vrow[p] = c + set_.v_[h];
    if (r.wrow[p] && set_.W_[h] >= 0) r.wrow[p] = c + set_.W_[h];
    dirty_[h] = 1;
  }
  for (int b = 0; b < r.n_aware; ++b) r.ablk[b] = r.wrow[r.aware[b]];
  r.w0 = c;
  r.g0 = c + 1;
  dirty_[0] = 1;
}

void HotCopy::merge() {
  rows_ = 0;
  float* c = copy_.data();
  float* b = base_.data();
  const int32_t slots = set_.slots();
  for (int32_t stripe = 0; stripe < HotSet::kStripes && stripe < slots; ++stripe) {
    std::lock_guard<std::mutex> g(set_.stripe_[stripe]);
    for (int32_t h = stripe; h < slots; h += HotSet::kStripes) {
      if (!dirty_[h]) continue;
      dirty_[h] = 0;
      for (int32_t s = set_.seg_begin_[h]; s < set_.seg_begin_[h + 1]; ++s) {
        const HotSet::Seg& sg = set_.segs_[s];
        merge_values(sg.master, c + sg.local, b + sg.local, sg.len);
      }
    }
  }
}

}  // namespace fmrecall
