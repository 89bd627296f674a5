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
// One event's random draws in the order training makes them, from the event's own generator
// (seeded by the seed and the event alone, so the same draws for any thread count and whenever
// they are made): its cold-start swaps, then S.negatives times C item rows (Factored::draw_negative;
// C = S.candidates, at least 1).
struct EventDraws {
  int64_t owner = -1;  // the position in the epoch they were drawn for
  Swap sw[8];
  int nsw = 0;
  std::vector<int32_t> items;
  void draw(const Factored& D, int64_t e, const Sampling& S) {
    Rng rng(mix_seed(S.seed, static_cast<uint64_t>(e)));
    nsw = D.draw_swaps(rng, sw);
    items.resize(static_cast<size_t>(S.negatives) * static_cast<size_t>(std::max(S.candidates, 1)));
    for (int32_t& j : items) j = D.draw_negative(D.ev_user[e], rng);
  }
};

// The draws of the events in flight: the draw stage makes them kDrawAhead positions early; slot
// i % kSlots is position i's.
class DrawRing {
 public:
  static constexpr int64_t kSlots = 16;
  EventDraws& operator[](int64_t i) { return slots_[i % kSlots]; }

 private:
  EventDraws slots_[kSlots];
};
static_assert(DrawRing::kSlots > kDrawAhead, "a slot must outlive its event's time in flight");

// Events with sampled negatives as a source of the prefetch stages: EventRows, whose draw stage
// makes each event's draws early (EventDraws) so that an event's runs are followed by the item runs
// of its first kNegativeRuns draws, which so go through the node, map and block stages too.
struct SampledRows {
  static constexpr int kNegativeRuns = 16;
  static constexpr int kMaxRuns = EventRows::kMaxRuns + kNegativeRuns;
  EventRows events;
  DrawRing* draws;
  const Sampling& S;
  void locate(int64_t i) const { events.locate(i); }
  void index(int64_t i) const {
    events.index(i);
    if (events.D.pos_ptr) __builtin_prefetch(events.D.pos_ptr + events.D.ev_user[events.event(i)], 0, 3);
  }
  void draw(int64_t i) const {
    EventDraws& d = (*draws)[i];
    d.draw(events.D, events.event(i), S);
    d.owner = i;
    const size_t m = std::min<size_t>(d.items.size(), kNegativeRuns);
    for (size_t n = 0; n < m; ++n) __builtin_prefetch(events.D.items.indptr + d.items[n], 0, 3);
  }
  // The event's runs, then those of its drawn items if they are drawn (else the event's runs alone).
  int runs(int64_t i, Run* out) const {
    int k = events.runs(i, out);
    EventDraws& d = (*draws)[i];
    if (d.owner != i) return k;
    const size_t m = std::min<size_t>(d.items.size(), kNegativeRuns);
    for (size_t n = 0; n < m; ++n) out[k++] = events.D.items.row(d.items[n]);
    return k;
  }
};

// The loop of one SGD pass over events order[0..count) on `threads` threads, Hogwild or with private
// copies of the hot parameters (hot.h). Per thread a Mode::Thread (its row source for the prefetch
// stages, rows, row ring), per position mode.train(thread, i, e, total), which adds the loss of the
// rows it trained to total and returns how many it trained.
template <class Mode>
EpochStats event_epoch(Model& M, const Factored& D, const int64_t* order, int64_t count, int threads,
                       const Mode& mode) {
  const bool private_hot = HotSet::wanted(threads, count);
  HotSet hot(M, threads);
  if (private_hot)  // counted on the events' own rows (user, context, item)
    hot.pick(order, count, [&D](int64_t e, Run* runs) { return D.runs(e, D.ev_item[e], runs); });
  double total = 0.0;
  int64_t terms = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total, terms)
  {
    typename Mode::Thread t(mode);
    std::optional<HotCopy> copy;
    if (private_hot) copy.emplace(hot);
    t.mine = copy ? &*copy : nullptr;  // this thread's copies of the hot parameters
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      prefetch_ahead<true>(M, t.rows, i, count, t.ring);
      const int n = mode.train(t, i, order[i], total);
      terms += n;
      if (t.mine) t.mine->after_rows(n);
    }
    if (t.mine) t.mine->merge();
  }
  return {total, terms};
}

// What both modes of event_epoch train with: the model, the data, the kernels, the loss, the
// hyper-parameters, the sampling (its seed also seeds the cold-start swaps) and the event order.
struct EventTraining {
  Model& M;
  const Factored& D;
  const KernelFns& K;
  Loss loss;
  const Hyper& h;
  const Sampling& S;
  const int64_t* order;
};

// Labelled events, pointwise: each event's row (user, context, item) steps towards its label.
struct Labelled : EventTraining {
  struct Thread {
    EventRows rows;
    Run runs[EventRows::kMaxRuns];
    RowRing ring;
    Row pos;
    HotCopy* mine = nullptr;
    explicit Thread(const Labelled& m) : rows{m.D, m.order, nullptr} {}
  };
  int train(Thread& t, int64_t i, int64_t e, double& total) const {
    Rng rng(mix_seed(S.seed, static_cast<uint64_t>(e)));  // per event: the same swaps for any thread count
    Swap sw[8];
    const int nsw = D.draw_swaps(rng, sw);
    const int k = t.rows.runs(i, t.runs);
    t.ring.attach(i, t.runs, k);
    t.pos.gather(M, t.runs, k, D.skip_field(), D.skip_feat(e), sw, nsw);
    if (t.mine) t.mine->redirect(t.pos);
    total += K.step(M, t.pos, loss, D.label[e], h);
    return 1;
  }
};

// Implicit feedback: each event is a positive, then S.negatives sampled negatives (logistic: each
// its own row; BPR: each a pair with the positive), each the best-scored of S.candidates draws.
struct Sampled : EventTraining {
  struct Thread {
    DrawRing draws;
    SampledRows rows;
    Run runs[SampledRows::kMaxRuns];
    RowRing ring;
    Row pos, neg;
    GradAcc acc;
    HotCopy* mine = nullptr;
    explicit Thread(const Sampled& m) : rows{{m.D, m.order, nullptr}, &draws, m.S} {}
  };

  // The t-th negative row of an event into thread.neg: the best-scored of its draws d.items[t·C,
  // t·C + C) (C = S.candidates, at least 1). runs[0, kpos) are the event's runs, the last of which
  // (the item's) becomes the draw's; draw n's item run is runs[kpos + n], with the vector rows the
  // block stage looked up, when n < n_drawn runs came with the event, else it is built here.
  void sample_negative(Thread& th, const EventDraws& d, int t, int kpos, int n_drawn, int32_t sf, int64_t sj) const {
    const int C = std::max(S.candidates, 1);
    Run runs[EventRows::kMaxRuns];
    std::copy(th.runs, th.runs + kpos, runs);
    auto gather = [&](int n) {
      runs[kpos - 1] = n < n_drawn ? th.runs[kpos + n] : D.items.row(d.items[n]);
      th.neg.gather(M, runs, kpos, sf, sj, d.sw, d.nsw);
      if (th.mine) th.mine->redirect(th.neg);
    };
    int pick = t * C;
    if (C > 1) {
      float best = -std::numeric_limits<float>::infinity();
      for (int n = t * C; n < t * C + C; ++n) {
        gather(n);
        const float s = K.score(M, th.neg);
        if (s > best) best = s, pick = n;
      }
    }
    gather(pick);
  }

  int train(Thread& t, int64_t i, int64_t e, double& total) const {
    EventDraws& d = t.draws[i];
    const bool late = d.owner != i;  // the first positions of this thread's range: not drawn ahead,
    if (late) {                      // so the block stage saw (at most) the event's own runs
      d.draw(D, e, S);
      d.owner = i;
    }
    const int k = t.rows.runs(i, t.runs);  // the event's runs, then its draws' item runs
    const int kpos = D.n_runs();
    t.ring.attach(i, t.runs, late ? kpos : k);
    const int32_t sf = D.skip_field();
    const int64_t sj = D.skip_feat(e);
    t.pos.gather(M, t.runs, kpos, sf, sj, d.sw, d.nsw);
    if (t.mine) t.mine->redirect(t.pos);
    if (loss == Loss::bpr) {
      for (int n = 0; n < S.negatives; ++n) {
        sample_negative(t, d, n, kpos, k - kpos, sf, sj);
        total += K.bpr_step(M, t.pos, t.neg, h, t.acc);
      }
      return S.negatives;
    }
    total += K.step(M, t.pos, loss, 1.f, h);
    for (int n = 0; n < S.negatives; ++n) {
      sample_negative(t, d, n, kpos, k - kpos, sf, sj);
      total += K.step(M, t.neg, loss, 0.f, h);
    }
    return 1 + S.negatives;
  }
};
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
  const EventTraining with{M, D, K, loss, h, S, order};
  if (S.negatives == 0) return event_epoch(M, D, order, count, threads, Labelled{with});
  return event_epoch(M, D, order, count, threads, Sampled{with});
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
