// The FM / FFM / hybrid row kernel. Included once per instruction set by cpp/src/kernels_*.cc
// inside `namespace fmrecall::FMR_ARCH` under a target pragma, so every variant has its own
// symbols (no ODR clash between the SSE2 and AVX2 copies).
//
// score(x) = w0 + Σ_j w_j x_j
//          + ½ Σ_d [(Σ_{single i} x_i v_id)² − Σ_{single i} x_i² v_id²]          single×single (§2)
//          + Σ_{aware j} x_j Σ_{single slot a} <w_{j,a}, S_a>,  S_a = Σ_{i∈a} x_i v_i   single×aware (§4)
//          + Σ_{aware i<j} x_i x_j <w_{i,f(j)}, w_{j,f(i)}>                        aware×aware (§3)
// The lane loops `for (d < kp)` have a compile-time trip count K (0 = run-time kp), so they
// unroll and vectorise to the target's width; no allocation, strings or virtual calls inside.
#ifndef FMR_ARCH
#error "define FMR_ARCH before including kernel_impl.h"
#endif

namespace fmrecall {
namespace FMR_ARCH {

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
  grow(r.grad, static_cast<size_t>(r.n_aware) * r.nf * kp);
  if (r.used.size() < static_cast<size_t>(r.n_aware) * r.nf) r.used.resize(static_cast<size_t>(r.n_aware) * r.nf);
}

template <int K>
float forward(const Model& M, Row& r) {
  const int kp = K ? K : M.kp;
  prepare<K>(M, r);
  const int ns = r.n_single, na = r.n_aware, nf = r.nf;

  float t = M.w0;  // w0 + Σ w_j x_j
  for (int p = 0; p < r.n; ++p) t += M.w[r.feat[p]] * r.x[p];

  float acc[K ? K : kMaxLanes];  // lane-wise accumulator, summed once at the end
  for (int d = 0; d < kp; ++d) acc[d] = 0.f;

  if (ns) {  // FM sum trick: ½(‖S‖² − Σ x²‖v‖²)
    float* S = r.S.data();
    float Q[K ? K : kMaxLanes];
    for (int d = 0; d < kp; ++d) S[d] = Q[d] = 0.f;
    float* Sa = r.Sa.data();
    if (na)
      for (int i = 0; i < nf * kp; ++i) Sa[i] = 0.f;
    for (int a = 0; a < ns; ++a) {
      const int p = r.single[a];
      const float xi = r.x[p];
      const float* vi = M.vec(r.feat[p]);
      for (int d = 0; d < kp; ++d) {
        S[d] += xi * vi[d];
        Q[d] += xi * xi * vi[d] * vi[d];
      }
      if (na) {
        float* sa = Sa + r.slot[p] * kp;
        for (int d = 0; d < kp; ++d) sa[d] += xi * vi[d];
      }
    }
    for (int d = 0; d < kp; ++d) acc[d] += 0.5f * (S[d] * S[d] - Q[d]);
  }
  if (na) {
    if (ns) {  // single×aware: x_j <w_{j,a}, S_a>
      for (int b = 0; b < na; ++b) {
        const int p = r.aware[b];
        const float xp = r.x[p];
        for (int s = 0; s < nf; ++s) {
          if (r.slot_aware[s]) continue;
          const float* wj = M.wvec(r.wrow[p], r.slot_field[s]);
          const float* sa = r.Sa.data() + s * kp;
          for (int d = 0; d < kp; ++d) acc[d] += xp * wj[d] * sa[d];
        }
      }
    }
    for (int b = 0; b < na; ++b) {  // aware×aware pairs: x_i x_j <w_{i,f(j)}, w_{j,f(i)}>
      const int p = r.aware[b];
      const int32_t fp = r.field[p];
      const int64_t rp = r.wrow[p];
      const float xp = r.x[p];
      for (int c = b + 1; c < na; ++c) {
        const int q = r.aware[c];
        const float xx = xp * r.x[q];
        const float* wi = M.wvec(rp, r.field[q]);
        const float* wj = M.wvec(r.wrow[q], fp);
        for (int d = 0; d < kp; ++d) acc[d] += xx * wi[d] * wj[d];
      }
    }
  }
  float sum = 0.f;
  for (int d = 0; d < kp; ++d) sum += acc[d];
  r.score = t + sum;
  return r.score;
}

// AdaGrad on one vector: g = kappa * dscore + l2 * w;  G += g²;  w -= eta * g / sqrt(G)
template <int K>
inline void adagrad(float* w, float* G, const float* dscore, float kappa, float eta, float l2, int kp_rt) {
  const int kp = K ? K : kp_rt;
  for (int d = 0; d < kp; ++d) {
    const float g = kappa * dscore[d] + l2 * w[d];
    G[d] += g * g;
    w[d] -= eta * g / std::sqrt(G[d]);
  }
}

template <int K>
void backward(Model& M, Row& r, float kappa, const Hyper& h) {
  const int kp = K ? K : M.kp;
  const int ns = r.n_single, na = r.n_aware, nf = r.nf;
  const float eta = h.eta, l2f = h.l2_fac;

  // 1) d score / d w_{p,a} for every field-aware vector the row touches, from the old weights.
  float* grad = r.grad.data();
  uint8_t* used = r.used.data();
  float* Ca = r.Ca.data();
  if (na) {
    if (ns)
      for (int i = 0; i < nf * kp; ++i) Ca[i] = 0.f;
    for (int b = 0; b < na; ++b) {
      const int p = r.aware[b];
      const float xp = r.x[p];
      const int32_t fp = r.field[p];
      for (int s = 0; s < nf; ++s) {
        float* g = grad + (static_cast<size_t>(b) * nf + s) * kp;
        uint8_t& u = used[b * nf + s];
        if (!r.slot_aware[s]) {  // single slot a: d/dw_{p,a} = x_p S_a;  C_a += x_p w_{p,a}
          const float* sa = r.Sa.data() + s * kp;
          const float* wpa = M.wvec(r.wrow[p], r.slot_field[s]);
          float* ca = Ca + s * kp;
          for (int d = 0; d < kp; ++d) {
            g[d] = xp * sa[d];
            ca[d] += xp * wpa[d];
          }
          u = 1;
        } else {  // aware slot b: d/dw_{p,f(q)} = Σ_{q in slot, q≠p} x_p x_q w_{q,f(p)}
          for (int d = 0; d < kp; ++d) g[d] = 0.f;
          u = 0;
          for (int c = r.aw_begin[s]; c < r.aw_begin[s + 1]; ++c) {
            const int q = r.aw_nodes[c];
            if (q == p) continue;
            const float xx = xp * r.x[q];
            const float* wq = M.wvec(r.wrow[q], fp);
            for (int d = 0; d < kp; ++d) g[d] += xx * wq[d];
            u = 1;
          }
        }
      }
    }
  }

  // 2) bias and linear weights: d score / d w_j = x_j
  {
    const float g = kappa;
    M.g0 += g * g;
    M.w0 -= eta * g / std::sqrt(M.g0);
  }
  for (int p = 0; p < r.n; ++p) {
    const int64_t j = r.feat[p];
    const float g = kappa * r.x[p] + h.l2_lin * M.w[j];
    M.gw[j] += g * g;
    M.w[j] -= eta * g / std::sqrt(M.gw[j]);
  }

  // 3) single vectors: d score / d v_i = x_i (S − x_i v_i + C_{f(i)})
  if (ns) {
    const float* S = r.S.data();
    float dv[K ? K : kMaxLanes];
    for (int a = 0; a < ns; ++a) {
      const int p = r.single[a];
      const float xi = r.x[p];
      const int64_t j = r.feat[p];
      float* vi = M.vec(j);
      if (na) {
        const float* ca = Ca + r.slot[p] * kp;
        for (int d = 0; d < kp; ++d) dv[d] = xi * (S[d] - xi * vi[d] + ca[d]);
      } else {
        for (int d = 0; d < kp; ++d) dv[d] = xi * (S[d] - xi * vi[d]);
      }
      adagrad<K>(vi, M.gv.data() + j * kp, dv, kappa, eta, l2f, kp);
    }
  }

  // 4) field-aware vectors
  for (int b = 0; b < na; ++b) {
    const int p = r.aware[b];
    const int64_t rp = r.wrow[p];
    for (int s = 0; s < nf; ++s) {
      if (!used[b * nf + s]) continue;
      const size_t off = (static_cast<size_t>(rp) * M.F + r.slot_field[s]) * kp;
      adagrad<K>(M.W.data() + off, M.gW.data() + off, grad + (static_cast<size_t>(b) * nf + s) * kp,
                 kappa, eta, l2f, kp);
    }
  }
}

KernelFns kernels(int32_t kp) {
  const char* name = FMR_ARCH_NAME;
  switch (kp) {
    case 4: return {&forward<4>, &backward<4>, name};
    case 8: return {&forward<8>, &backward<8>, name};
    case 16: return {&forward<16>, &backward<16>, name};
    case 32: return {&forward<32>, &backward<32>, name};
    case 64: return {&forward<64>, &backward<64>, name};
    default: return {&forward<0>, &backward<0>, name};
  }
}

}  // namespace FMR_ARCH
}  // namespace fmrecall
