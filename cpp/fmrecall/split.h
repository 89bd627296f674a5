// The exact query/item split (DESIGN.md §2–4): score(query ⊕ item) = b_q + <q, p>.
//
// With fields on the query side Q (user + context) or the item side I, each single (S) or
// field-aware (A), the cross pairs fall into blocks of k floats:
//   [ss]       q = Σ_{i∈SQ} x_i v_i                 p = Σ_{j∈SI} x_j v_j              (FM, §2)
//   [s a]      q = Σ_{i∈a} x_i v_i      (a ∈ SQ)    p = Σ_{j∈AI} x_j w_{j,a}          (hybrid, §4)
//   [b s]      q = Σ_{i∈AQ} x_i w_{i,b} (b ∈ SI)    p = Σ_{j∈b} x_j v_j               (hybrid, §4)
//   [a b]      q = Σ_{i∈a} x_i w_{i,b}              p = Σ_{j∈b} x_j w_{j,a}           (FFM, §3, a-major)
// then one last slot: q = 1, p = lin(I) + intra(I) = score(item row) − w0.
// b_q = score(query row) = w0 + lin(Q) + intra(Q) (user×user, user×context, context×context).
#pragma once

#include <vector>

#include "train.h"

namespace fmrecall {

struct SplitLayout {
  int32_t F = 0, k = 0;
  std::vector<uint8_t> side;                // (F) 0 = query field, 1 = item field
  std::vector<uint8_t> aware;               // (F) the model's field-aware flags the offsets were made for
  int64_t off_ss = -1;                      // [ss] block
  std::vector<int64_t> off_sa;              // (F) [s a] block of single query field a
  std::vector<int64_t> off_bs;              // (F) [b s] block of single item field b
  std::vector<int64_t> off_ab;              // (F*F) [a b] block of aware query field a × aware item field b
  std::vector<int32_t> q_fields, i_fields;  // fields of each side, increasing
  int64_t dim = 0;                          // total, bias slot included (the last coordinate)
};

// All three hold the model's lock shared (Model::mu). The vector builders check that the layout
// was made for a model of this shape (F, k, field-aware flags), else InputError: a layout kept from
// before a refit must not index another model's tables.
// side: n_side == F entries (else InputError), 0 = query field, 1 = item field.
SplitLayout make_layout(const Model& M, const uint8_t* side, int64_t n_side);

// One block of a layout: its offset in the vectors, its kind ("ss", "sa", "bs" or "ab", as in the
// table above), its query field a (or -1) and its item field b (or -1).
struct LayoutBlock {
  int64_t offset;
  const char* kind;
  int32_t query_field, item_field;
};
// The blocks of L in vector order (increasing offset); the bias slot is not one of them.
std::vector<LayoutBlock> layout_blocks(const SplitLayout& L);

// q: (rows, dim) query vectors, b: (rows) per-query constants.
void query_vectors(const Model& M, const SplitLayout& L, const Csr& rows, float* q, float* b, int threads);
// p: (rows, dim) item vectors (bias slot = item linear + item-internal pairs).
void item_vectors(const Model& M, const SplitLayout& L, const Csr& rows, float* p, int threads);

}  // namespace fmrecall
