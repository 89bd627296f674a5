#include "fmrecall/interactions.h"

#include "fmrecall/hot.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>

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

void sample_items(const double* weights, int64_t n_weights, int64_t n, uint64_t seed, int32_t* out) {
  const AliasTable t(weights, n_weights);
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) out[i] = t.sample(rng);
}

namespace {
void check_range(const int32_t* a, int64_t count, int64_t n, const char* what) {
  for (int64_t i = 0; i < count; ++i)
    if (a[i] < 0 || a[i] >= n)
      throw InputError(std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(a[i]) +
                       " is out of range [0, " + std::to_string(n) + ")");
}
}  // namespace

void Factored::set_events(const int32_t* user, int64_t n_user, const int32_t* item, int64_t n_item) {
  if (n_item != n_user) throw InputError("event user and item arrays differ in length");
  if (context.indptr && context.rows != n_user) throw InputError("context must have one row per event");
  check_range(user, n_user, users.rows, "event user");
  check_range(item, n_item, items.rows, "event item");
  n_events = n_user;
  ev_user = user;
  ev_item = item;
}

void Factored::set_labels(const float* labels, int64_t n) {
  if (n != n_events) throw InputError("labels must have one entry per event");
  label = labels;
}

void Factored::set_sample_weights(const double* weights, int64_t n) {
  if (n != items.rows) throw InputError("sampling weights must have one entry per item row");
  sampler = std::make_unique<AliasTable>(weights, n);
}

void Factored::set_positives(const int64_t* ptr, int64_t n_ptr, const int32_t* items_) {
  if (n_ptr != users.rows + 1) throw InputError("pos_ptr must have users + 1 entries");
  pos_ptr = ptr;
  pos_items = items_;
}

void Factored::set_history(int32_t field, const int32_t* feat, int64_t n) {
  if (n != items.rows) throw InputError("hist_feat must have one entry per item row");
  hist_field = field;
  hist_feat = feat;
}

void Factored::set_cold(const std::vector<std::tuple<int32_t, int64_t, float>>& cold) {
  if (cold.size() > 8) throw InputError("at most 8 cold-start fields");
  for (const auto& [f, j, rate] : cold) {
    if (!(rate >= 0.f && rate <= 1.f)) throw InputError("cold-start rates must be in [0, 1]");
    cold_field.push_back(f);
    cold_feat.push_back(j);
    cold_rate.push_back(rate);
  }
}

int32_t Factored::draw_negative(int32_t user, Rng& rng) const {
  int32_t j = sampler->sample(rng);
  if (!pos_ptr) return j;
  const int32_t* b = pos_items + pos_ptr[user];
  const int32_t* e = pos_items + pos_ptr[user + 1];
  for (int tries = 0; tries < 32 && std::binary_search(b, e, j); ++tries) j = sampler->sample(rng);
  return j;
}

namespace {
// Gathers a sampled negative row for event e into `neg`: the best-scored of S.candidates draws.
// With a HotCopy, the row (and every candidate scored) reads this thread's copies of the hot features.
void sample_negative(const Model& M, const Factored& D, const Sampling& S, const KernelFns& K, int64_t e, Rng& rng,
                     Row& neg, Run* runs, int32_t sf, int64_t sj, const Swap* sw, int nsw, HotCopy* mine) {
  const int32_t u = D.ev_user[e];
  int32_t pick = D.draw_negative(u, rng);
  auto gather = [&](int32_t item) {
    neg.gather(M, runs, D.runs(e, item, runs), sf, sj, sw, nsw);
    if (mine) mine->redirect(neg);
  };
  if (S.candidates > 1) {
    float best = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < S.candidates; ++c) {
      const int32_t j = c ? D.draw_negative(u, rng) : pick;
      gather(j);
      const float s = K.score(M, neg);
      if (s > best) best = s, pick = j;
    }
  }
  gather(pick);
}
}  // namespace

EpochStats train_factored(Model& M, const Factored& D, const int64_t* order, int64_t count, Loss loss,
                          const Sampling& S, const Hyper& h, int threads) {
  for (int64_t i = 0; i < count; ++i)
    if (order[i] < 0 || order[i] >= D.n_events) throw InputError("event order out of range");
  if (loss != Loss::logistic && loss != Loss::squared && loss != Loss::bpr) throw InputError("unknown loss");
  if (S.negatives < 0) throw InputError("negatives must be >= 0");
  if (S.negatives > 0 && !D.sampler) throw InputError("negative sampling needs sampling weights");
  if (loss == Loss::bpr && S.negatives == 0) throw InputError("the BPR loss needs sampled negatives (negatives >= 1)");
  if (S.negatives == 0 && !D.label) throw InputError("labelled training needs labels");
  ReadLock lock(M.mu);  // Hogwild: values change in place, the tables do not move
  const KernelFns K = select_kernels(M.kp);
  const bool private_hot = HotSet::wanted(threads, count);
  HotSet hot(M, threads);
  if (private_hot)  // counted on the events' own rows (user, context, item)
    hot.pick(order, count, [&D](int64_t e, Run* runs) { return D.runs(e, D.ev_item[e], runs); });
  double total = 0.0;
  int64_t terms = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total, terms)
  {
    Row pos, neg;
    GradAcc acc;
    Run runs[3];
    RowRing ring;
    const EventRows events{D, order, nullptr};
    std::optional<HotCopy> copy;
    if (private_hot) copy.emplace(hot);
    HotCopy* mine = copy ? &*copy : nullptr;  // this thread's copies of the hot parameters
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t e = order[i];
      prefetch_ahead<true>(M, events, i, count, ring);
      const int32_t sf = D.skip_field();
      const int64_t sj = D.skip_feat(e);
      Rng rng(mix_seed(S.seed, static_cast<uint64_t>(e)));  // per event: same draws for any thread count
      Swap sw[8];
      const int nsw = D.draw_swaps(rng, sw);
      const int k = D.runs(e, D.ev_item[e], runs);
      ring.attach(i, runs, k);
      pos.gather(M, runs, k, sf, sj, sw, nsw);
      if (mine) mine->redirect(pos);
      if (S.negatives == 0) {  // labelled events, pointwise
        total += K.step(M, pos, loss, D.label ? D.label[e] : 1.f, h);
        ++terms;
      } else if (loss == Loss::bpr) {
        for (int t = 0; t < S.negatives; ++t) {
          sample_negative(M, D, S, K, e, rng, neg, runs, sf, sj, sw, nsw, mine);
          total += K.bpr_step(M, pos, neg, h, acc);
          ++terms;
        }
      } else {
        total += K.step(M, pos, loss, 1.f, h);
        ++terms;
        for (int t = 0; t < S.negatives; ++t) {
          sample_negative(M, D, S, K, e, rng, neg, runs, sf, sj, sw, nsw, mine);
          total += K.step(M, neg, loss, 0.f, h);
          ++terms;
        }
      }
      if (mine) mine->after_rows(S.negatives == 0 ? 1 : loss == Loss::bpr ? S.negatives : 1 + S.negatives);
    }
    if (mine) mine->merge();
  }
  return {total, terms};
}

void score_factored(const Model& M, const Factored& D, const int32_t* items, int64_t n_items, float* out, int threads) {
  if (items) {
    if (n_items != D.n_events) throw InputError("items must have one entry per event");
    check_range(items, n_items, D.items.rows, "items");
  }
  ReadLock lock(M.mu);
  const KernelFns K = select_kernels(M.kp);
#pragma omp parallel num_threads(threads)
  {
    Row row;
    Run runs[3];
    RowRing ring;
    const EventRows events{D, nullptr, items};
#pragma omp for schedule(static)
    for (int64_t e = 0; e < D.n_events; ++e) {
      prefetch_ahead<false>(M, events, e, D.n_events, ring);
      const int k = events.runs(e, runs);
      ring.attach(e, runs, k);
      row.gather(M, runs, k, D.skip_field(), D.skip_feat(e));
      out[e] = K.score(M, row);
    }
  }
}

}  // namespace fmrecall
