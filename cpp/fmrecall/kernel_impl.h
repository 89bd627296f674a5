// The FM / FFM / hybrid row kernel. Included once per instruction set by cpp/src/kernels_*.cc
// inside `namespace fmrecall::FMR_ARCH` under a target pragma, so every variant has its own
// symbols (no ODR clash between the SSE2 and AVX2 copies).
//
// score(x) = w0 + Σ_j w_j x_j
//          + ½ Σ_d [(Σ_{single i} x_i v_id)² − Σ_{single i} x_i² v_id²]          single×single (§2)
//          + Σ_{aware j} x_j Σ_{single slot a} <w_{j,a}, S_a>,  S_a = Σ_{i∈a} x_i v_i   single×aware (§4)
//          + Σ_{aware i<j} x_i x_j <w_{i,f(j)}, w_{j,f(i)}>                        aware×aware (§3)
// Lane loops step over fixed-width vectors (lanes.h); K is the compile-time padded latent size
// (0 = run-time kp). No allocation, strings or virtual calls inside a row.
#ifndef FMR_ARCH
#error "define FMR_ARCH before including kernel_impl.h"
#endif

namespace fmrecall {
namespace FMR_ARCH {

#include "lanes.h"

constexpr int kMaxLanes = 512;  // run-time kp is capped at this (checked when a model is made)

template <int K>
inline void prepare(const Model& M, Row& r) {
  const size_t kp = K ? K : M.kp;
  auto grow = [](std::vector<float>& b, size_t sz) {
    if (b.size() < sz) b.resize(sz);
  };
  grow(r.S, kp);
  grow(r.Q, kp);
  grow(r.Sa, static_cast<size_t>(r.nf) * kp);
  grow(r.Ca, static_cast<size_t>(r.nf) * kp);
  grow(r.grad, (static_cast<size_t>(r.n_aware) * r.nf + r.n_single) * kp);
  if (r.used.size() < static_cast<size_t>(r.n_aware) * r.nf) r.used.resize(static_cast<size_t>(r.n_aware) * r.nf);
}

// acc += x * a ⊙ b over one latent vector, lane by lane (an element-wise product added, not a dot)
template <int K>
inline void add_prod(float* __restrict acc, float x, const float* a, const float* b, int kp_rt) {
  using T = Chunk<K>;
  const int kp = K ? K : kp_rt;
  const T xv = splat<T>(x);
  for (int d = 0; d < kp; d += width<T>()) store(acc + d, load<T>(acc + d) + xv * load<T>(a + d) * load<T>(b + d));
}

// acc += Σ_c xb x_c <Wb[afo_c], blk_c[fb]>: one node against the later ones (forward pair loop).
// Same: every x_c is ax[0] (Row::same_x), so the K = 4 loop takes the pair value out of the loop.
template <int K, bool Same>
inline void pair_dots(float* __restrict acc, float xb, const float* Wb, int32_t fb, float* const* blk,
                      const int32_t* afo, const float* ax, int count, int kp_rt) {
  using T = Chunk<K>;
  constexpr int L = width<T>();
#if FMR_WIDE
  if (K == 4) {  // two pairs per 256-bit register
    __m256 a = _mm256_setzero_ps();
    int c = 0;
    const __m256 same = _mm256_set1_ps(count ? xb * ax[0] : 0.f);  // the pair value of every c when Same
    for (; c + 1 < count; c += 2) {
      const __m256 x = Same ? same : _mm256_set_m128(_mm_set1_ps(xb * ax[c + 1]), _mm_set1_ps(xb * ax[c]));
      const __m256 p = _mm256_loadu2_m128(Wb + afo[c + 1], Wb + afo[c]);
      const __m256 q = _mm256_loadu2_m128(blk[c + 1] + fb, blk[c] + fb);
      a = _mm256_fmadd_ps(_mm256_mul_ps(x, p), q, a);
    }
    __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    if (c < count)
      a4 = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(xb * ax[c]), _mm_loadu_ps(Wb + afo[c])), _mm_loadu_ps(blk[c] + fb), a4);
    _mm_storeu_ps(acc, _mm_add_ps(_mm_loadu_ps(acc), a4));
    return;
  }
#endif
  if (K) {  // compile-time size: one chunk at a time, four independent sums (no single add chain)
    for (int i = 0; i < (K ? K : L); i += L) {
      const float* p = Wb + i;
      const int32_t q = fb + i;
      auto term = [&](int c) { return splat<T>(xb * ax[c]) * load<T>(p + afo[c]) * load<T>(blk[c] + q); };
      T a0 = load<T>(acc + i), a1 = {}, a2 = {}, a3 = {};
      int c = 0;
      for (; c + 3 < count; c += 4) {
        a0 += term(c);
        a1 += term(c + 1);
        a2 += term(c + 2);
        a3 += term(c + 3);
      }
      for (; c < count; ++c) a0 += term(c);
      store(acc + i, (a0 + a1) + (a2 + a3));
    }
  } else {
    for (int c = 0; c < count; ++c) add_prod<K>(acc, xb * ax[c], Wb + afo[c], blk[c] + fb, kp_rt);
  }
}

// dst = 0
template <int K>
inline void zero(float* dst, int kp_rt) {
  const int kp = K ? K : kp_rt;
  for (int d = 0; d < kp; ++d) dst[d] = 0.f;
}

// dst += x * a
template <int K>
inline void axpy(float* __restrict dst, float x, const float* __restrict a, int kp_rt) {
  using T = Chunk<K>;
  const int kp = K ? K : kp_rt;
  const T xv = splat<T>(x);
  for (int d = 0; d < kp; d += width<T>()) store(dst + d, load<T>(dst + d) + xv * load<T>(a + d));
}

template <int K>
float forward(const Model& M, Row& r) {
  using T = Chunk<K>;
  constexpr int L = width<T>();
  const int kp = K ? K : M.kp;
  prepare<K>(M, r);
  const int ns = r.n_single, na = r.n_aware, nf = r.nf;

  float t = *r.w0;  // w0 + Σ w_j x_j
  for (int p = 0; p < r.n; ++p) t += *r.lw[p] * r.x[p];

  alignas(64) float acc[K ? K : kMaxLanes];  // lane-wise accumulator, summed once at the end
  zero<K>(acc, kp);

  if (ns) {  // FM sum trick: ½(‖S‖² − Σ x²‖v‖²)
    float* S = r.S.data();
    alignas(64) float Q[K ? K : kMaxLanes];
    zero<K>(S, kp);
    zero<K>(Q, kp);
    float* Sa = r.Sa.data();
    if (na)
      for (int i = 0; i < nf * kp; ++i) Sa[i] = 0.f;
    for (int a = 0; a < ns; ++a) {
      const int p = r.single[a];
      const float xi = r.x[p];
      const float* vi = r.vrow[p];
      axpy<K>(S, xi, vi, kp);
      add_prod<K>(Q, xi * xi, vi, vi, kp);
      if (na) axpy<K>(Sa + r.slot[p] * kp, xi, vi, kp);
    }
    for (int d = 0; d < kp; d += L) {
      const T s = load<T>(S + d);
      store(acc + d, load<T>(acc + d) + splat<T>(0.5f) * (s * s - load<T>(Q + d)));
    }
  }
  if (na) {
    if (ns) {  // single×aware: x_j <w_{j,a}, S_a>
      for (int b = 0; b < na; ++b) {
        const int p = r.aware[b];
        for (int s = 0; s < nf; ++s) {
          if (r.slot_aware[s]) continue;
          add_prod<K>(acc, r.x[p], r.wrow[p] + r.slot_field[s] * M.vs, r.Sa.data() + s * kp, kp);
        }
      }
    }
    // aware×aware pairs: x_i x_j <w_{i,f(j)}, w_{j,f(i)}>
    float* const* blk = r.ablk.data();
    const int32_t* afo = r.afo.data();
    const float* ax = r.ax.data();
    for (int b = 0; b < na; ++b)
      (r.same_x ? pair_dots<K, true> : pair_dots<K, false>)(acc, ax[b], blk[b], afo[b], blk + b + 1, afo + b + 1,
                                                            ax + b + 1, na - b - 1, kp);
  }
  float sum = 0.f;
  for (int d = 0; d < kp; d += L) sum += hsum(load<T>(acc + d));
  r.score = t + sum;
  return r.score;
}

// AdaGrad on one vector: g = kappa * dscore + l2 * w;  G += g²;  w -= eta * g / sqrt(G)
template <int K>
inline void adagrad(float* __restrict w, float* __restrict G, const float* __restrict dscore, float kappa, float eta,
                    float l2, int kp_rt) {
  using T = Chunk<K>;
  const int kp = K ? K : kp_rt;
  const T kv = splat<T>(kappa), lv = splat<T>(l2);
  const AdaRate<T> ev(eta);
  for (int d = 0; d < kp; d += width<T>()) {
    const T wv = load<T>(w + d);
    const T g = kv * load<T>(dscore + d) + lv * wv;
    const T Gv = load<T>(G + d) + g * g;
    store(G + d, Gv);
    store(w + d, ada_step(wv, g, Gv, ev));
  }
}

// Both vectors of one pair (libffm's update): g1 = kx w2 + l2 w1, g2 = kx w1 + l2 w2, AdaGrad on each.
template <int K>
inline void pair_step(float* __restrict w1, float* __restrict w2, float* __restrict G1, float* __restrict G2, float kx,
                      const AdaRate<Chunk<K>>& ev, Chunk<K> lv, int kp_rt) {
  using T = Chunk<K>;
  const int kp = K ? K : kp_rt;
  const T kv = splat<T>(kx);
  for (int d = 0; d < kp; d += width<T>()) {
    const T a = load<T>(w1 + d), b = load<T>(w2 + d);
    const T g1 = kv * b + lv * a;
    const T g2 = kv * a + lv * b;
    const T G1v = load<T>(G1 + d) + g1 * g1;
    const T G2v = load<T>(G2 + d) + g2 * g2;
    store(G1 + d, G1v);
    store(G2 + d, G2v);
    store(w1 + d, ada_step(a, g1, G1v, ev));
    store(w2 + d, ada_step(b, g2, G2v, ev));
  }
}

// Every gradient of one row, scaled by kappa and taken from the current (old) weights, summed
// per parameter into `acc`; apply() then makes one AdaGrad step per parameter. The exact step for
// rows whose nodes share parameters (a feature repeated in a row) and for BPR pairs (two rows
// sharing the user and context parameters). Slower than backward's fused loops.
template <int K>
void collect(Model& M, Row& r, float kappa, const Hyper& h, GradAcc& acc) {
  const int kp = K ? K : M.kp;
  const int n = r.n, ns = r.n_single, na = r.n_aware, nf = r.nf;
  float* Ca = r.Ca.data();
  acc.slot(r.w0, r.g0, 1, 0.f)[0] += kappa;
  for (int p = 0; p < n; ++p) acc.slot(r.lw[p], r.lg[p], 1, h.l2_lin)[0] += kappa * r.x[p];
  if (ns && na) {  // C_a = Σ_p x_p w_{p,a}
    for (int i = 0; i < nf * kp; ++i) Ca[i] = 0.f;
    for (int b = 0; b < na; ++b)
      for (int s = 0; s < nf; ++s)
        if (!r.slot_aware[s]) axpy<K>(Ca + s * kp, r.x[r.aware[b]], r.wrow[r.aware[b]] + r.slot_field[s] * M.vs, kp);
  }
  for (int a = 0; a < ns; ++a) {  // d/dv_i = x_i (S − x_i v_i + C_{f(i)})
    const int p = r.single[a];
    float* vi = r.vrow[p];
    float* g = acc.slot(vi, vi + kp, kp, h.l2_fac);
    const float xi = r.x[p];
    for (int d = 0; d < kp; ++d) g[d] += kappa * xi * (r.S[d] - xi * vi[d] + (na ? Ca[r.slot[p] * kp + d] : 0.f));
  }
  for (int b = 0; b < na; ++b) {  // d/dw_{p,f} for every field slot of the row
    const int p = r.aware[b];
    const float kx = kappa * r.x[p];
    for (int s = 0; s < nf; ++s) {
      float* w = r.wrow[p] + r.slot_field[s] * M.vs;
      if (!r.slot_aware[s]) {
        axpy<K>(acc.slot(w, w + kp, kp, h.l2_fac), kx, r.Sa.data() + s * kp, kp);
        continue;
      }
      float* g = nullptr;
      for (int c = r.aw_begin[s]; c < r.aw_begin[s + 1]; ++c) {
        const int q = r.aw_nodes[c];
        if (q == p) continue;
        if (!g) g = acc.slot(w, w + kp, kp, h.l2_fac);  // only vectors that meet a partner are touched
        axpy<K>(g, kx * r.x[q], r.wrow[q] + r.field[p] * M.vs, kp);
      }
    }
  }
}

// One AdaGrad step per accumulated parameter: g = grad + l2 w;  G += g²;  w -= eta g / sqrt(G).
void apply(GradAcc& acc, const Hyper& h) {
  for (int32_t e = 0; e < acc.count; ++e) {
    const GradAcc::Entry& en = acc.entries[e];
    const float* g = acc.grad.data() + static_cast<size_t>(e) * acc.stride;
    for (int32_t d = 0; d < en.len; ++d) {
      const float gd = g[d] + en.l2 * en.w[d];
      en.G[d] += gd * gd;
      en.w[d] -= h.eta * gd / std::sqrt(en.G[d]);
    }
  }
}

#if FMR_WIDE
// K = 4: pair_step on pairs (b, c) and (b, c + 1) in one 256-bit register each for w1, w2 and their
// AdaGrad states. Returns the first c not done (the caller finishes an odd one). Same: every ax[c]
// is ax[b + 1] (Row::same_x), so the pair's kappa·x_b·x_c comes out of the loop.
template <bool Same>
inline int pair_steps4(float* Wb, int32_t fb, float* const* blk, const int32_t* afo, const float* ax, int c, int na,
                       float kxb, float eta, float l2) {
  const AdaRate<f8> ev(eta);
  const __m256 lv = _mm256_set1_ps(l2);
  const __m256 same = _mm256_set1_ps(c < na ? kxb * ax[c] : 0.f);
  for (; c + 1 < na; c += 2) {
    float* w1a = Wb + afo[c];
    float* w1b = Wb + afo[c + 1];
    float* w2a = blk[c] + fb;
    float* w2b = blk[c + 1] + fb;
    const __m256 kx = Same ? same : _mm256_set_m128(_mm_set1_ps(kxb * ax[c + 1]), _mm_set1_ps(kxb * ax[c]));
    const __m256 a = _mm256_loadu2_m128(w1b, w1a), bq = _mm256_loadu2_m128(w2b, w2a);
    const __m256 g1 = _mm256_fmadd_ps(kx, bq, _mm256_mul_ps(lv, a));
    const __m256 g2 = _mm256_fmadd_ps(kx, a, _mm256_mul_ps(lv, bq));
    const __m256 G1 = _mm256_fmadd_ps(g1, g1, _mm256_loadu2_m128(w1b + 4, w1a + 4));
    const __m256 G2 = _mm256_fmadd_ps(g2, g2, _mm256_loadu2_m128(w2b + 4, w2a + 4));
    _mm256_storeu2_m128(w1b + 4, w1a + 4, G1);
    _mm256_storeu2_m128(w2b + 4, w2a + 4, G2);
    _mm256_storeu2_m128(w1b, w1a, ada_step<f8>(a, g1, G1, ev));
    _mm256_storeu2_m128(w2b, w2a, ada_step<f8>(bq, g2, G2, ev));
  }
  return c;
}
#endif

template <int K>
void backward(Model& M, Row& r, float kappa, const Hyper& h) {
  if (r.shared) {
    GradAcc& acc = r.acc;
    acc.reset(K ? K : M.kp);
    collect<K>(M, r, kappa, h, acc);
    apply(acc, h);
    return;
  }
  using T = Chunk<K>;
  const int kp = K ? K : M.kp;
  const int ns = r.n_single, na = r.n_aware, nf = r.nf;
  const float eta = h.eta, l2f = h.l2_fac;
  float* Ca = r.Ca.data();

  // 1) single×aware: C_a = Σ_p x_p w_{p,a} from the old weights, then d/dw_{p,a} = x_p S_a.
  //    (w_{p,a} with a single field a appears in no other term, so it can be updated at once.)
  if (ns && na) {
    for (int i = 0; i < nf * kp; ++i) Ca[i] = 0.f;
    for (int b = 0; b < na; ++b) {
      const int p = r.aware[b];
      for (int s = 0; s < nf; ++s)
        if (!r.slot_aware[s]) axpy<K>(Ca + s * kp, r.x[p], r.wrow[p] + r.slot_field[s] * M.vs, kp);
    }
    alignas(64) float g[K ? K : kMaxLanes];
    for (int b = 0; b < na; ++b) {
      const int p = r.aware[b];
      for (int s = 0; s < nf; ++s) {
        if (r.slot_aware[s]) continue;
        zero<K>(g, kp);
        axpy<K>(g, r.x[p], r.Sa.data() + s * kp, kp);
        float* w = r.wrow[p] + r.slot_field[s] * M.vs;
        adagrad<K>(w, w + kp, g, kappa, eta, l2f, kp);
      }
    }
  }

  // 2) aware×aware: d/dw_{p,f(q)} = Σ_{q≠p, f(q)=that field} x_p x_q w_{q,f(p)}
  if (na > 1 && r.one_per_slot) {
    // One node per field: every vector w_{p,f(q)} belongs to exactly one pair, so the pair loop
    // updates both of its vectors in place (libffm's loop) and is still the exact gradient step.
    float* const* blk = r.ablk.data();
    const int32_t* afo = r.afo.data();
    const float* ax = r.ax.data();
    const AdaRate<T> ev(eta);
    const T lv = splat<T>(l2f);
    for (int b = 0; b < na; ++b) {
      float* Wb = blk[b];
      const int32_t fb = afo[b];
      const float kxb = kappa * ax[b];
      int c = b + 1;
#if FMR_WIDE
      if (K == 4) c = (r.same_x ? pair_steps4<true> : pair_steps4<false>)(Wb, fb, blk, afo, ax, c, na, kxb, eta, l2f);
#endif
      for (; c < na; ++c) {
        float* w1 = Wb + afo[c];
        float* w2 = blk[c] + fb;
        pair_step<K>(w1, w2, w1 + kp, w2 + kp, kxb * ax[c], ev, lv, kp);  // AdaGrad state right after each vector
      }
    }
  } else if (na > 1) {
    // Multi-valued fields: gather every gradient from the old weights first, then apply.
    float* grad = r.grad.data();
    uint8_t* used = r.used.data();
    for (int b = 0; b < na; ++b) {
      const int p = r.aware[b];
      const float xp = r.x[p];
      const int32_t fp = r.field[p];
      for (int s = 0; s < nf; ++s) {
        uint8_t& u = used[b * nf + s];
        u = 0;
        if (!r.slot_aware[s]) continue;
        float* g = grad + (static_cast<size_t>(b) * nf + s) * kp;
        zero<K>(g, kp);
        for (int c = r.aw_begin[s]; c < r.aw_begin[s + 1]; ++c) {
          const int q = r.aw_nodes[c];
          if (q == p) continue;
          axpy<K>(g, xp * r.x[q], r.wrow[q] + fp * M.vs, kp);
          u = 1;
        }
      }
    }
    for (int b = 0; b < na; ++b) {
      float* Wb = r.wrow[r.aware[b]];
      for (int s = 0; s < nf; ++s) {
        if (!used[b * nf + s]) continue;
        float* w = Wb + r.slot_field[s] * M.vs;
        adagrad<K>(w, w + kp, grad + (static_cast<size_t>(b) * nf + s) * kp, kappa, eta, l2f, kp);
      }
    }
  }

  // 3) single vectors: d score / d v_i = x_i (S − x_i v_i + C_{f(i)})
  if (ns) {
    const float* S = r.S.data();
    alignas(64) float dv[K ? K : kMaxLanes];
    for (int a = 0; a < ns; ++a) {
      const int p = r.single[a];
      const T xi = splat<T>(r.x[p]);
      float* vi = r.vrow[p];
      const float* ca = na ? Ca + r.slot[p] * kp : nullptr;
      for (int d = 0; d < kp; d += width<T>()) {
        T inner = load<T>(S + d) - xi * load<T>(vi + d);
        if (ca) inner += load<T>(ca + d);
        store(dv + d, xi * inner);
      }
      adagrad<K>(vi, vi + kp, dv, kappa, eta, l2f, kp);
    }
  }

  // 4) bias and linear weights: d score / d w_j = x_j
  *r.g0 += kappa * kappa;
  *r.w0 -= eta * kappa / std::sqrt(*r.g0);
  for (int p = 0; p < r.n; ++p) {
    const float g = kappa * r.x[p] + h.l2_lin * *r.lw[p];
    *r.lg[p] += g * g;
    *r.lw[p] -= eta * g / std::sqrt(*r.lg[p]);
  }
}

// The kernel's entries (KernelFns): backward and collect read the sums forward leaves in the row,
// so they run only from here, right after forward on the same row.
template <int K>
double step(Model& M, Row& r, Loss loss, float label, const Hyper& h) {
  const LossGrad lg = loss_grad(loss, forward<K>(M, r), label);
  backward<K>(M, r, lg.kappa, h);
  return lg.loss;
}

template <int K>
double bpr_step(Model& M, Row& pos, Row& neg, const Hyper& h, GradAcc& acc) {
  const double d = static_cast<double>(forward<K>(M, pos)) - forward<K>(M, neg);
  const LossGrad lg = bpr_loss_grad(d);
  acc.reset(K ? K : M.kp);
  collect<K>(M, pos, lg.kappa, h, acc);
  collect<K>(M, neg, -lg.kappa, h, acc);
  apply(acc, h);
  return lg.loss;
}

template <int K>
KernelFns entries() {
  return {&forward<K>, &step<K>, &bpr_step<K>, FMR_ARCH_NAME};
}

KernelFns kernels(int32_t kp) {
  switch (kp) {
    case 4: return entries<4>();
    case 8: return entries<8>();
    case 16: return entries<16>();
    case 32: return entries<32>();
    case 64: return entries<64>();
    default: return entries<0>();
  }
}

}  // namespace FMR_ARCH
}  // namespace fmrecall
