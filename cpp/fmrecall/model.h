// The parameters of one factorization model, shared by FM, FFM and the hybrid.
//
// Every field is either *single* (its features keep one latent vector v_j, FM rule) or
// *field-aware* (its features keep one vector w_{j,f} per field f, FFM rule). Vectors are stored
// only for the features that have them (those seen in training): a row map per table says which
// row of v (single_row) or W (aware_row) holds a feature's vectors, -1 for none; a node of a feature
// without vectors contributes its linear term only (as a zero vector would). A pair (i, j) scores
//   both single:        <v_i, v_j>                     (DESIGN.md §2)
//   both field-aware:   <w_{i,f(j)}, w_{j,f(i)}>        (DESIGN.md §3)
//   i single, j aware:  <v_i, w_{j,f(i)}>               (DESIGN.md §4, the hybrid)
// so FM = no field-aware field, FFM = all fields field-aware, HybridFM = one side field-aware.
//
// Concurrency: a Model is shared by threads that read it (predict, split vectors, training rows —
// Hogwild training only writes values in place) and a thread that changes its structure (grow_rows,
// grow_features, restore, set_weights). Every core routine that reads the tables holds `mu` shared for its whole
// call; every routine that replaces / reallocates tables or writes all weights at once holds it
// exclusively. The lock is taken once per call, never per row, and only by the core (cpp/src): the
// binding releases the GIL first, so a Python thread waiting for the lock never blocks the others.
#pragma once

#include <mutex>
#include <shared_mutex>
#include <utility>
#include <vector>

#include "common.h"

namespace fmrecall {

// A readers–writer lock that does not starve writers: std::shared_mutex (glibc's rwlock) prefers
// readers, so a stream of overlapping predict calls could keep a partial_fit's grow_rows waiting
// forever. A writer first takes `gate_`, which new readers pass through, then waits for the readers
// already inside. Meets the SharedMutex requirements (std::shared_lock / std::unique_lock).
// Not recursive: a routine holding it must not call another routine that takes it.
class RwMutex {
 public:
  void lock() {
    std::lock_guard<std::mutex> g(gate_);
    rw_.lock();
  }
  bool try_lock() { return rw_.try_lock(); }
  void unlock() { rw_.unlock(); }
  void lock_shared() {
    { std::lock_guard<std::mutex> g(gate_); }
    rw_.lock_shared();
  }
  bool try_lock_shared() { return rw_.try_lock_shared(); }
  void unlock_shared() { rw_.unlock_shared(); }

 private:
  std::shared_mutex rw_;
  std::mutex gate_;
};

using ReadLock = std::shared_lock<RwMutex>;
using WriteLock = std::unique_lock<RwMutex>;

// The weights without padding or AdaGrad state (bias, linear (n), v (single_rows, k),
// W (aware_rows, F, k)) and the row maps; has_* say which tables the model has (FM: v, FFM: W,
// hybrid: both) and whether a row map is explicit (else identity: row j is feature j's).
struct Weights {
  float bias = 0.f;
  int64_t n = 0, single_rows = 0, aware_rows = 0;
  int32_t F = 0, k = 0;
  std::vector<float> linear, v, W;
  std::vector<int32_t> single_row, aware_row;
  bool has_v = false, has_W = false, has_single_map = false, has_rows = false;
};

struct Model {
  int64_t n = 0;           // number of features (global indices 0..n-1)
  int32_t F = 0;           // number of fields
  int32_t k = 0;           // latent size
  int32_t kp = 0;          // k padded to a multiple of 4 (padding lanes stay exactly 0)
  bool normalize = false;  // scale every row to unit L2 norm (libffm's default; breaks the split)
  // Otherwise every value is multiplied by this constant (fixed at fit time: 1/sqrt(mean ||x||^2) of
  // the training rows). The same for every row, so pairs get scale^2 and the split stays exact
  // (DESIGN.md §6: q and p are built from the scaled values).
  float scale = 1.f;

  AlignedArray<float> w, gw;  // (n)             linear weights
  // Latent vectors are stored interleaved with their AdaGrad accumulators, [w (kp) | G (kp)], so a
  // vector and its state share cache lines (the forward pass brings in what the update needs).
  int32_t vs = 0;                   // 2 * kp: floats per stored vector
  AlignedArray<float> v;            // (single_rows, 2, kp)      single vectors (empty if none)
  AlignedArray<float> W;            // (aware_rows, F, 2, kp)    field-aware vectors (empty if none)
  std::vector<uint8_t> aware;       // (F)             1 = field is field-aware
  std::vector<int32_t> single_row;  // (n) feature -> row of v, -1 = none; empty = identity (single_rows == n)
  int64_t single_rows = 0;          // rows of v
  std::vector<int32_t> aware_row;   // (n) feature -> row of W, -1 = none; empty = identity (aware_rows == n)
  int64_t aware_rows = 0;           // rows of W

  // Bias and its AdaGrad accumulator: written by every training row of every thread, so they get
  // a cache line of their own (sharing one with the fields above, which every row reads, would make
  // the other thread re-fetch that line after each of these writes).
  alignas(64) float w0 = 0.f;
  float g0 = 1.f;
  alignas(64) char pad_after_bias_ = 0;

  // Early-stopping snapshot of the weights only (never of the AdaGrad state).
  float snap_w0 = 0.f;
  AlignedArray<float> snap_w, snap_v, snap_W;

  // Per-epoch exponential moving average of the weights only (README "Accuracy at default
  // settings"): avg <- beta avg + (1 - beta) w after each epoch of fit; empty = none.
  float avg_w0 = 0.f;
  AlignedArray<float> avg_w, avg_v, avg_W;

  mutable RwMutex mu;          // shared: routines that read the tables; exclusive: structural changes
  mutable std::mutex snap_mu;  // two concurrent snapshot() calls (both hold mu shared) write snap_*
  mutable std::mutex avg_mu;   // likewise for average() and avg_*

  Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  bool any_single() const {
    for (uint8_t a : aware)
      if (!a) return true;
    return false;
  }
  bool any_aware() const {
    for (uint8_t a : aware)
      if (a) return true;
    return false;
  }
  // Feature j in field f is a node of this model (rows are scored and trained without the others).
  bool holds(int64_t j, int32_t f) const { return j >= 0 && j < n && f >= 0 && f < F; }
  int64_t single_row_of(int64_t j) const { return single_row.empty() ? j : single_row[j]; }
  int64_t aware_row_of(int64_t j) const { return aware_row.empty() ? j : aware_row[j]; }
  float* vec(int64_t row) { return v.data() + row * vs; }  // row of v (single_row_of(feature))
  const float* vec(int64_t row) const { return v.data() + row * vs; }
  float* wvec(int64_t row, int32_t f) { return W.data() + (row * F + f) * vs; }
  const float* wvec(int64_t row, int32_t f) const { return W.data() + (row * F + f) * vs; }

  static int32_t padded(int32_t k) { return (k + 3) / 4 * 4; }

  // Allocate parameters; latent entries ~ U(-a, a) with a = init_std * sqrt(3), seeded per feature
  // (single vectors: by (seed, feature), wherever its row is) or per row (W) so initialisation
  // does not depend on the thread count or the row map. AdaGrad accumulators start at 1 (libffm).
  // aware_row / single_row: empty (identity: the table has a row per feature when a field of its
  // kind exists) or n entries, each -1 or a row < aware_rows / single_rows (else InputError); no
  // two features share a single row.
  void allocate(int64_t n_, int32_t F_, int32_t k_, std::vector<uint8_t> aware_, std::vector<int32_t> aware_row_,
                int64_t aware_rows_, float init_std, uint64_t seed, bool normalize_,
                std::vector<int32_t> single_row_ = {}, int64_t single_rows_ = 0);

  bool finite() const;   // every weight (bias, linear, vectors; not the AdaGrad state) finite? Shared lock
  void snapshot();       // shared lock (reads the tables; snap_* are guarded by snap_mu)
  void restore();        // exclusive lock
  void drop_snapshot();  // frees the snapshot (snap_mu only)
  // avg <- beta avg + (1 - beta) w (the first call, or one after a change of the tables, copies w).
  // Shared lock (avg_* are guarded by avg_mu).
  void average(float beta);
  void swap_average();  // the weights and their average trade places (exclusive lock; logic_error if none)
  void drop_average();  // frees the average (avg_mu only)

  // Give vectors (random init, AdaGrad state 1) to the listed features that have none: single
  // vectors to `single_feats` (seeded by (seed, feature) as allocate seeds them), field-aware ones
  // to `aware_feats`, growing v / W: how partial_fit takes in features a model has not trained
  // before. Returns the rows added to each table (a table the model lacks, or an identity row map,
  // gets none). Exclusive lock (the tables are reallocated); on an InputError nothing has changed.
  std::pair<int64_t, int64_t> grow_rows(const int32_t* single_feats, int64_t n_single, const int32_t* aware_feats,
                                        int64_t n_aware, float init_std, uint64_t seed);

  // Append n_new features (indices n .. n + n_new - 1): how partial_fit takes in the new values of
  // a grown Schema. Linear weight 0, AdaGrad state 1, no vectors yet (row -1 in each row map; an
  // identity map becomes explicit): grow_rows gives them to those the data holds. Existing
  // parameters are copied unchanged. Exclusive lock; on an InputError nothing has changed.
  void grow_features(int64_t n_new);

  // Copies of the weights (shared lock), and all weights at once (exclusive lock). set_weights
  // checks everything (sizes against the model's row counts, finiteness) before it writes
  // anything; v / W are nullptr for a table the caller does not give, which must be one the model
  // does not have (or has with 0 rows).
  Weights get_weights() const;
  void set_weights(float bias, const float* linear, int64_t n_linear, const float* v, int64_t n_v, const float* W,
                   int64_t n_W);

  int64_t current_single_rows() const;  // single_rows, read under the shared lock (grow_rows changes it)
  int64_t current_aware_rows() const;   // aware_rows, read under the shared lock (grow_rows changes it)
  int64_t current_features() const;     // n, read under the shared lock (grow_features changes it)
};

}  // namespace fmrecall
