// Factored training data: users and items are encoded once; each event names a user row and an item
// row and carries its own context row. The training row of an event is gathered on the fly from the
// three runs of triples (user + context + item), so nothing is materialised per event.
#pragma once

#include <memory>
#include <tuple>
#include <vector>

#include "prefetch.h"
#include "train.h"

namespace fmrecall {

// Vose's alias method: O(1) draws from a fixed discrete distribution.
class AliasTable {
 public:
  AliasTable() = default;
  explicit AliasTable(const double* weights, int64_t n);
  int32_t sample(Rng& rng) const {
    const uint64_t i = rng.below(static_cast<uint64_t>(prob_.size()));
    return rng.uniform_d() < prob_[i] ? static_cast<int32_t>(i) : alias_[i];
  }
  int64_t size() const { return static_cast<int64_t>(prob_.size()); }

 private:
  std::vector<double> prob_;
  std::vector<int32_t> alias_;
};

struct Factored {
  Csr users, items, context;         // context: one row per event, or empty (indptr nullptr, rows 0)
  const int32_t* ev_user = nullptr;  // (n_events) user row of each event
  const int32_t* ev_item = nullptr;  // (n_events) item row of each event
  const float* label = nullptr;      // (n_events) or nullptr: every event is a positive
  int64_t n_events = 0;
  // Leave-one-out history: users carry a field listing their items; when an event's row is built,
  // the node of the event's own item in that field is left out (else the model learns "the item
  // is in the history"). hist_feat[item row] = that item's feature in the history field, or -1.
  int32_t hist_field = -1;
  const int32_t* hist_feat = nullptr;

  // Cold-start training: with probability cold_rate[c] a training row's value of cold_field[c]
  // becomes cold_feat[c], the field's reserved "unseen" feature, which so learns how to score an
  // item (or user) the model has never seen, from its other features.
  std::vector<int32_t> cold_field;
  std::vector<int64_t> cold_feat;
  std::vector<float> cold_rate;

  // Implicit feedback: negatives are drawn from `sampler` (over item rows); pos_ptr / pos_items (per
  // user row, its sorted positive item rows; optional) let a draw that is a positive be redrawn.
  std::unique_ptr<AliasTable> sampler;
  const int64_t* pos_ptr = nullptr;
  const int32_t* pos_items = nullptr;

  // Setters that check what they are given against the data set so far (InputError): set the
  // users, items and context first. The arrays are not copied: the caller keeps them alive.
  void set_events(const int32_t* user, int64_t n_user, const int32_t* item, int64_t n_item);
  void set_labels(const float* labels, int64_t n);
  void set_sample_weights(const double* weights, int64_t n);
  void set_positives(const int64_t* ptr, int64_t n_ptr, const int32_t* items);
  void set_history(int32_t field, const int32_t* feat, int64_t n);
  void set_cold(const std::vector<std::tuple<int32_t, int64_t, float>>& cold);

  // A negative item row for `user` from the sampler, redrawn (up to 32 times) while it is a positive.
  int32_t draw_negative(int32_t user, Rng& rng) const;

  // The runs (user, context, item) of an event's row: 2 or 3.
  int n_runs() const { return context.rows ? 3 : 2; }

  // The swaps drawn for one training row (at most 8 cold fields).
  int draw_swaps(Rng& rng, Swap* out) const {
    int k = 0;
    for (size_t c = 0; c < cold_field.size() && k < 8; ++c)
      if (rng.uniform() < cold_rate[c]) out[k++] = {cold_field[c], cold_feat[c]};
    return k;
  }

  int32_t skip_field() const { return hist_feat ? hist_field : -1; }
  int64_t skip_feat(int64_t e) const { return hist_feat ? hist_feat[ev_item[e]] : -1; }

  // The joined row (user, context, item) of event e with item row `item`, as runs.
  int runs(int64_t e, int32_t item, Run* out) const {
    int k = 0;
    out[k++] = users.row(ev_user[e]);
    if (context.rows) out[k++] = context.row(e);
    out[k++] = items.row(item);
    return k;
  }
};

// Events as a source of the prefetch stages (prefetch.h: CsrRows): position i is event order[i]
// (or i when order is nullptr), joined with its own item or with items[e]. An event's user and
// item rows sit at random places of ev_user / ev_item (items) and of the users' and items' indptr,
// so locate brings in the former (and the label and context entries) and index the latter.
// Training with sampled negatives adds their item runs (SampledRows, interactions.cc).
struct EventRows {
  static constexpr int kMaxRuns = 3;
  const Factored& D;
  const int64_t* order = nullptr;
  const int32_t* items = nullptr;
  int64_t event(int64_t i) const { return order ? order[i] : i; }
  int32_t item(int64_t e) const { return items ? items[e] : D.ev_item[e]; }
  void locate(int64_t i) const {
    const int64_t e = event(i);
    __builtin_prefetch(D.ev_user + e, 0, 3);
    __builtin_prefetch((items ? items : D.ev_item) + e, 0, 3);
    if (D.label) __builtin_prefetch(D.label + e, 0, 3);
    if (D.context.rows) __builtin_prefetch(D.context.indptr + e, 0, 3);
  }
  void index(int64_t i) const {
    const int64_t e = event(i);
    __builtin_prefetch(D.users.indptr + D.ev_user[e], 0, 3);
    __builtin_prefetch(D.items.indptr + item(e), 0, 3);
    if (D.hist_feat) __builtin_prefetch(D.hist_feat + D.ev_item[e], 0, 3);
  }
  void draw(int64_t) const {}
  int runs(int64_t i, Run* out) const {
    const int64_t e = event(i);
    return D.runs(e, item(e), out);
  }
};

// n draws from the alias table of `weights` (n_weights entries) into out[n], seeded: the draws
// training takes its negatives with.
void sample_items(const double* weights, int64_t n_weights, int64_t n, uint64_t seed, int32_t* out);

// Implicit feedback: `negatives` items per positive event, drawn from the data's sampler (with
// candidates > 1, the highest-scoring of that many draws: dynamic negative sampling, which like
// WARP concentrates on the negatives the model ranks too high); a draw that is one of the user's
// positives (Factored::pos_ptr / pos_items) is redrawn (up to 32 times).
struct Sampling {
  int negatives;
  int candidates;  // hard negatives: draw this many (>= 1), train on the one the model scores highest
  uint64_t seed;
};

struct EpochStats {
  double loss = 0.0;
  int64_t terms = 0;  // rows (pointwise losses) or pairs (BPR) the loss sums over
};

// One SGD pass over events order[0..count). Labelled events (negatives == 0) train pointwise; with
// negatives > 0 every event is a positive followed by sampled negatives (logistic), or each
// sampled negative forms a BPR pair with it (loss == bpr, one exact step per pair). InputError
// for an event out of range, negatives < 0, negatives without a sampler, bpr without negatives,
// labelled training without labels; candidates < 1 counts as 1.
EpochStats train_factored(Model& M, const Factored& D, const int64_t* order, int64_t count, Loss loss,
                          const Sampling& S, const Hyper& h, int threads);

// Scores of every event, with its own item or with items[e] instead (items may be nullptr; else
// n_items == n_events item rows, checked).
void score_factored(const Model& M, const Factored& D, const int32_t* items, int64_t n_items, float* out, int threads);

}  // namespace fmrecall
