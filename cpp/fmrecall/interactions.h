// Factored training data: users and items are encoded once; each event names a user row and an item
// row and carries its own context row. The training row of an event is gathered on the fly from the
// three segments (user + context + item), so nothing is materialised per event.
#pragma once

#include <vector>

#include "train.h"

namespace fmrecall {

struct Factored {
  Csr users, items, context;        // context.rows is the number of events, or 0 for no context
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

  // The swaps drawn for one training row (at most 8 cold fields).
  int draw_swaps(Rng& rng, Swap* out) const {
    int k = 0;
    for (size_t c = 0; c < cold_field.size() && k < 8; ++c)
      if (rng.uniform() < cold_rate[c]) out[k++] = {cold_field[c], cold_feat[c]};
    return k;
  }

  int32_t skip_field() const { return hist_feat ? hist_field : -1; }
  int64_t skip_feat(int64_t e) const { return hist_feat ? hist_feat[ev_item[e]] : -1; }

  // The joined row (user, context, item) of event e with item row `item`, as segments.
  int segments(int64_t e, int32_t item, Segment* out) const {
    int k = 0;
    out[k++] = users.row(ev_user[e]);
    if (context.rows) out[k++] = context.row(e);
    out[k++] = items.row(item);
    return k;
  }
};

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

// Implicit feedback: `negatives` items per positive event, drawn from `sampler` (over item rows)
// (with candidates > 1, the highest-scoring of that many draws: dynamic negative sampling, which
// like WARP concentrates on the negatives the model ranks too high);
// with pos_ptr / pos_items (per user row, sorted item rows) a draw that is one of the user's
// positives is redrawn (up to 32 times).
struct Sampling {
  int negatives = 0;
  int candidates = 1;  // hard negatives: draw this many, train on the one the model scores highest
  const AliasTable* sampler = nullptr;
  const int64_t* pos_ptr = nullptr;
  const int32_t* pos_items = nullptr;
  uint64_t seed = 0;

  int32_t draw(int32_t user, Rng& rng) const;
};

struct EpochStats {
  double loss = 0.0;
  int64_t terms = 0;  // rows (pointwise losses) or pairs (BPR) the loss sums over
};

// One SGD pass over events order[0..count). Labelled events (negatives == 0) train pointwise; with
// negatives > 0 every event is a positive followed by sampled negatives (logistic), or each
// sampled negative forms a BPR pair with it (loss == bpr, one exact step per pair).
EpochStats train_factored(Model& M, const Factored& D, const int64_t* order, int64_t count, Loss loss,
                          const Sampling& S, const Hyper& h, int threads);

// Scores of every event, with its own item or with items[e] instead (items may be nullptr).
void score_factored(const Model& M, const Factored& D, const int32_t* items, float* out, int threads);

}  // namespace fmrecall
