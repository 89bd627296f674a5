// The parameters of one factorization model, shared by FM, FFM and the hybrid.
//
// Every field is either *single* (its features keep one latent vector v_j, FM rule) or
// *field-aware* (its features keep one vector w_{j,f} per field f, FFM rule). A pair (i, j) scores
//   both single:        <v_i, v_j>                     (DESIGN.md §2)
//   both field-aware:   <w_{i,f(j)}, w_{j,f(i)}>        (DESIGN.md §3)
//   i single, j aware:  <v_i, w_{j,f(i)}>               (DESIGN.md §4, the hybrid)
// so FM = no field-aware field, FFM = all fields field-aware, HybridFM = one side field-aware.
#pragma once

#include <vector>

#include "common.h"

namespace fmrecall {

struct Model {
  int64_t n = 0;   // number of features (global indices 0..n-1)
  int32_t F = 0;   // number of fields
  int32_t k = 0;   // latent size
  int32_t kp = 0;  // k padded to a multiple of 4 (padding lanes stay exactly 0)
  bool normalize = false;  // scale every row to unit L2 norm (libffm's default; breaks the split)

  AlignedArray<float> w, gw;        // (n)             linear weights
  // Latent vectors are stored interleaved with their AdaGrad accumulators, [w (kp) | G (kp)], so a
  // vector and its state share cache lines (the forward pass brings in what the update needs).
  int32_t vs = 0;                   // 2 * kp: floats per stored vector
  AlignedArray<float> v;            // (n, 2, kp)      single vectors (empty if no single field)
  AlignedArray<float> W;            // (m, F, 2, kp)   field-aware vectors (empty if none)
  std::vector<uint8_t> aware;       // (F)             1 = field is field-aware
  std::vector<int32_t> aware_row;   // (n) feature -> row of W, -1 = none; empty = identity (m == n)
  int64_t m = 0;                    // rows of W

  // Bias and its AdaGrad accumulator: written by every training row of every thread, so they get
  // a cache line of their own (sharing one with the fields above, which every row reads, would make
  // the other thread re-fetch that line after each of these writes).
  alignas(64) float w0 = 0.f;
  float g0 = 1.f;
  alignas(64) char pad_after_bias_ = 0;

  // Early-stopping snapshot of the weights only (never of the AdaGrad state).
  float snap_w0 = 0.f;
  AlignedArray<float> snap_w, snap_v, snap_W;

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
  int64_t row_of(int64_t j) const { return aware_row.empty() ? j : aware_row[j]; }
  float* vec(int64_t j) { return v.data() + j * vs; }
  const float* vec(int64_t j) const { return v.data() + j * vs; }
  float* wvec(int64_t row, int32_t f) { return W.data() + (row * F + f) * vs; }
  const float* wvec(int64_t row, int32_t f) const { return W.data() + (row * F + f) * vs; }

  static int32_t padded(int32_t k) { return (k + 3) / 4 * 4; }

  // Allocate parameters; latent entries ~ U(-a, a) with a = init_std * sqrt(3), per-row seeded so
  // initialisation does not depend on the thread count. AdaGrad accumulators start at 1 (libffm).
  void allocate(int64_t n_, int32_t F_, int32_t k_, std::vector<uint8_t> aware_,
                std::vector<int32_t> aware_row_, int64_t m_, float init_std, uint64_t seed);

  void snapshot();
  void restore();

  // Give field-aware vectors (random init, AdaGrad state 1) to the listed features that have none,
  // growing W: how partial_fit takes in features a model has not seen before. Returns rows added.
  int64_t grow_rows(const int32_t* features, int64_t count, float init_std, uint64_t seed);
};

}  // namespace fmrecall
