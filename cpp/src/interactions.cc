#include "fmrecall/interactions.h"

#include <algorithm>
#include <limits>

#include <omp.h>

namespace fmrecall {

AliasTable::AliasTable(const double* w, int64_t n) {
  if (n <= 0) throw InputError("cannot sample from an empty item set");
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!(w[i] >= 0.0) || !std::isfinite(w[i])) throw InputError("sampling weights must be finite and >= 0");
    total += w[i];
  }
  if (total <= 0.0) throw InputError("sampling weights are all zero");
  prob_.assign(n, 0.0);
  alias_.assign(n, 0);
  std::vector<double> scaled(n);
  std::vector<int32_t> small, large;
  for (int64_t i = 0; i < n; ++i) {
    scaled[i] = w[i] * static_cast<double>(n) / total;
    (scaled[i] < 1.0 ? small : large).push_back(static_cast<int32_t>(i));
  }
  while (!small.empty() && !large.empty()) {
    const int32_t s = small.back(), l = large.back();
    small.pop_back();
    prob_[s] = scaled[s];
    alias_[s] = l;
    scaled[l] = (scaled[l] + scaled[s]) - 1.0;
    if (scaled[l] < 1.0) {
      large.pop_back();
      small.push_back(l);
    }
  }
  for (int32_t i : large) prob_[i] = 1.0, alias_[i] = i;
  for (int32_t i : small) prob_[i] = 1.0, alias_[i] = i;  // rounding leftovers
}

int32_t Sampling::draw(int32_t user, Rng& rng) const {
  int32_t j = sampler->sample(rng);
  if (!pos_ptr) return j;
  const int32_t* b = pos_items + pos_ptr[user];
  const int32_t* e = pos_items + pos_ptr[user + 1];
  for (int tries = 0; tries < 32 && std::binary_search(b, e, j); ++tries) j = sampler->sample(rng);
  return j;
}

namespace {
// Gathers a sampled negative row for event e into `neg`: the best-scored of S.candidates draws.
void sample_negative(const Model& M, const Factored& D, const Sampling& S, const KernelFns& K, int64_t e, Rng& rng,
                     Row& neg, Segment* segs, int32_t sf, int64_t sj, const Swap* sw, int nsw) {
  const int32_t u = D.ev_user[e];
  int32_t pick = S.draw(u, rng);
  if (S.candidates > 1) {
    float best = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < S.candidates; ++c) {
      const int32_t j = c ? S.draw(u, rng) : pick;
      neg.gather(M, segs, D.segments(e, j, segs), sf, sj, sw, nsw);
      const float s = K.forward(M, neg);
      if (s > best) best = s, pick = j;
    }
  }
  neg.gather(M, segs, D.segments(e, pick, segs), sf, sj, sw, nsw);
}
}  // namespace

EpochStats train_factored(Model& M, const Factored& D, const int64_t* order, int64_t count, Loss loss,
                          const Sampling& S, const Hyper& h, int threads) {
  ReadLock lock(M.mu);  // Hogwild: values change in place, the tables do not move
  const KernelFns K = select_kernels(M.kp);
  double total = 0.0;
  int64_t terms = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total, terms)
  {
    Row pos, neg;
    GradAcc acc;
    Segment segs[3];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t e = order[i];
      const int32_t u = D.ev_user[e];
      const int32_t sf = D.skip_field();
      const int64_t sj = D.skip_feat(e);
      Rng rng(mix_seed(S.seed, static_cast<uint64_t>(e)));  // per event: same draws for any thread count
      Swap sw[8];
      const int nsw = D.draw_swaps(rng, sw);
      pos.gather(M, segs, D.segments(e, D.ev_item[e], segs), sf, sj, sw, nsw);
      if (S.negatives == 0) {  // labelled events, pointwise
        const LossGrad lg = loss_grad(loss, K.forward(M, pos), D.label ? D.label[e] : 1.f);
        total += lg.loss;
        ++terms;
        K.backward(M, pos, lg.kappa, h);
        continue;
      }
      if (loss == Loss::bpr) {
        for (int t = 0; t < S.negatives; ++t) {
          sample_negative(M, D, S, K, e, rng, neg, segs, sf, sj, sw, nsw);
          const double d = static_cast<double>(K.forward(M, pos)) - K.forward(M, neg);
          // loss = log(1 + e^{-d}),  dloss/ds+ = -σ(-d) = -dloss/ds-
          total += d > 0 ? std::log1p(std::exp(-d)) : -d + std::log1p(std::exp(d));
          ++terms;
          const float kappa = static_cast<float>(-sigmoid(-d));
          acc.reset(M.kp);
          K.collect(M, pos, kappa, h, acc);
          K.collect(M, neg, -kappa, h, acc);
          K.apply(acc, h);
        }
        continue;
      }
      LossGrad lg = loss_grad(loss, K.forward(M, pos), 1.f);
      total += lg.loss;
      ++terms;
      K.backward(M, pos, lg.kappa, h);
      for (int t = 0; t < S.negatives; ++t) {
        sample_negative(M, D, S, K, e, rng, neg, segs, sf, sj, sw, nsw);
        lg = loss_grad(loss, K.forward(M, neg), 0.f);
        total += lg.loss;
        ++terms;
        K.backward(M, neg, lg.kappa, h);
      }
    }
  }
  return {total, terms};
}

void score_factored(const Model& M, const Factored& D, const int32_t* items, float* out, int threads) {
  ReadLock lock(M.mu);
  const KernelFns K = select_kernels(M.kp);
#pragma omp parallel num_threads(threads)
  {
    Row row;
    Segment segs[3];
#pragma omp for schedule(static)
    for (int64_t e = 0; e < D.n_events; ++e) {
      row.gather(M, segs, D.segments(e, items ? items[e] : D.ev_item[e], segs), D.skip_field(), D.skip_feat(e));
      out[e] = K.forward(M, row);
    }
  }
}

}  // namespace fmrecall
