// Private copies of the hottest parameters for training on several threads (issue 9, contention).
//
// Hogwild lets every thread write the shared tables in place. On long-tailed data every row also
// holds a few very frequent features (a field's top values, the bias), so all threads write the
// same cache lines row after row: each write waits for the line to come back from another core,
// and concurrent read-modify-writes lose updates. A HotSet names the bias and the most frequent
// features of a training call; each thread trains them in a HotCopy of its own (rows point at it,
// Row::lw / vrow / wrow / w0), and every merge_rows rows adds what it changed since its last merge
// to the model: master += copy − base, then copy = base = master (exact: no update is lost, and a
// thread sees the others' updates about kStaleRows rows late). The other features stay Hogwild.
// One thread trains the model in place as before (no copies, deterministic).
#pragma once

#include <algorithm>
#include <mutex>
#include <vector>

#include "model.h"
#include "row.h"

namespace fmrecall {

class HotSet {
 public:
  static constexpr int kMergeRows = 256;          // rows of a thread between its merges, at most
  static constexpr int kStaleRows = 1024;         // rows of all threads between two merges of one, about
  static constexpr int kSampleRows = 4096;        // rows whose features are counted to pick the hot ones
  static constexpr double kMinShare = 1.0 / 512;  // a hot feature occurs in at least this share of rows
  static constexpr size_t kBytes = 256 << 10;     // at most this many bytes of parameters per copy
  static constexpr size_t kAllBytes = 32 << 20;   // and of all threads' copies together (many threads)
  static constexpr size_t kMaxSlots = 1024;       // and at most this many features (the map stays in L1 / L2)

  // Rows of a thread between its merges on `threads` threads: kStaleRows / threads within [16,
  // kMergeRows], so that what a thread does not yet see of the others stays about kStaleRows rows
  // (the copies sum the threads' changes: staler views would add up larger steps).
  static int merge_rows(int threads) { return std::clamp(kStaleRows / std::max(threads, 1), 16, kMergeRows); }

  // Whether a training call of `count` rows on `threads` threads uses private copies: FMRECALL_HOT =
  // auto (the default: when threads > 1 and each thread has at least 4 merges' worth of rows; a
  // thread with fewer would train them all from the call's starting values), on (at any thread
  // count: the kernel paths through the copies can be checked on one thread, where they give the
  // in-place results exactly) or off (Hogwild on every parameter, as before; for A/B benchmarks).
  // Read at every call, like FMRECALL_ARCH.
  static bool wanted(int threads, int64_t count);

  HotSet(Model& M, int threads)
      : M_(M), merge_rows_(merge_rows(threads)), bytes_(std::min(kBytes, kAllBytes / std::max(threads, 1))) {}
  // Chooses the hot features of the call's rows order[0..count): counts the features of about
  // kSampleRows of them, evenly spaced (runs_of(row, Run* out) gives a row's runs, at most 3, and
  // returns how many), then takes those with a share of sampled rows >= kMinShare, most frequent
  // first, while a copy stays within kBytes (and all threads' within kAllBytes). Slot 0 is the bias.
  template <class RunsOf>
  void pick(const int64_t* order, int64_t count, RunsOf runs_of) {
    Run runs[3];
    const int64_t stride = std::max<int64_t>(1, count / kSampleRows);
    for (int64_t i = 0; i < count; i += stride, ++rows_) {
      const int nrun = runs_of(order[i], runs);
      for (int r = 0; r < nrun; ++r) count_run(runs[r]);
    }
    choose();
  }
  int32_t slots() const { return static_cast<int32_t>(lin_.size()); }
  int32_t slot(int64_t j) const;  // slot of feature j, -1 if not hot

 private:
  friend class HotCopy;
  void count_run(const Run& run);  // the features of one run of a sampled row
  void choose();                   // the hot features among those counted
  struct Seg {
    float* master;  // in the model's tables
    size_t local;   // offset in a copy
    int32_t len;
  };
  Model& M_;
  int merge_rows_;
  size_t bytes_;               // at most this many bytes per copy
  std::vector<int64_t> seen_;  // features of the sampled rows (with repeats)
  int64_t rows_ = 0;
  struct Key {
    int32_t feat;  // -1 = empty (features are int32 in every row source)
    int32_t slot;
  };
  std::vector<Key> map_;        // open-addressing map feature -> slot (small: it stays in L1 / L2)
  std::vector<size_t> lin_;     // per slot: offset of its linear weight (its AdaGrad state at + 1)
  std::vector<int64_t> v_, W_;  // per slot: offset of its single vector / W block in a copy, -1 if none
  std::vector<Seg> segs_;
  std::vector<int32_t> seg_begin_;  // (slots + 1)
  size_t floats_ = 0;               // floats per copy
  static constexpr int kStripes = 16;
  std::mutex stripe_[kStripes];  // slot h merges under stripe_[h % kStripes]
};

// One thread's copy of a HotSet's parameters (taken from the model when made).
class HotCopy {
 public:
  explicit HotCopy(HotSet& set);
  // Points the row's hot nodes and its bias at this copy. After Row::gather, before the step.
  void redirect(Row& r);
  // Counts trained rows; merges once HotSet::merge_rows have passed since the last merge.
  void after_rows(int rows) {
    rows_ += rows;
    if (rows_ >= set_.merge_rows_) merge();
  }
  // master += copy − base for every slot changed since the last merge (master = copy where nobody
  // else changed it, so that one thread gives the in-place results bit for bit); then copy = base =
  // master.
  void merge();

 private:
  HotSet& set_;
  AlignedArray<float> copy_, base_;
  std::vector<uint8_t> dirty_;
  int rows_ = 0;
};

}  // namespace fmrecall
