#!/usr/bin/env python3
"""Mutation check of the row kernel: plant deliberate one-line bugs, one at a time, in a private
copy of the repository, rebuild it, and check that the kernel tests (tests/test_kernels.py, plus
test_seen_vectors.py, test_split.py and test_gather.py for the gather of rows, test_average.py for the moving
average of the weights, test_hot.py for the threads' private copies of the hot parameters, test_interactions.py
for the rows of events) fail for every one.

    python tools/mutation_check.py                      # every mutation (~40 s each on 2 cores, mostly rebuild)
    python tools/mutation_check.py --only pair_steps4   # the mutations whose name contains a word
    python tools/mutation_check.py --list               # the mutations and whether each still applies
    python tools/mutation_check.py --tests tests        # run the whole suite per mutation instead

It never edits this checkout: the working tree as it is (uncommitted changes included; without
build/, .git/, caches) is copied to --work (default /tmp/fmrecall-mutants), configured with CMake +
Ninja into <work>/build/m, built, and the unmutated copy must pass first. Each mutation replaces one source line (matched by its stripped
text, the n-th match when the text occurs more than once) and the module is rebuilt; the line is
put back afterwards. A mutation the tests do not catch is a SURVIVOR: the script exits 1.
A mutation that no longer matches any line (the kernel changed) is reported as STALE and also
exits 1, so the list is kept in step with the kernel. Not run by the test suite.

Mutations named `*@avx2`, `*@avx512`, `*@generic` break only that compiled variant (they test
FMR_ARCH_NAME, which each cpp/src/kernels_*.cc defines), which proves that the tests run the path in
each variant the CPU supports, not only in the one dispatch picks by default (some also fix K, e.g.
`pair_step@avx512 K=8`). A mutation for an instruction set the CPU lacks is SKIPPED.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KI = "cpp/fmrecall/kernel_impl.h"
LANES = "cpp/fmrecall/lanes.h"
MODEL = "cpp/src/model.cc"
HOT = "cpp/src/hot.cc"


@dataclass
class Mutation:
    name: str
    file: str
    original: str  # stripped text of the line to replace
    mutated: str  # its replacement (indentation of the original is kept)
    nth: int = 0  # which match (1, 2, ...) when the text occurs more than once; 0: must be unique
    cpu: str = ""  # only meaningful on a CPU with this instruction set (avx2 / avx512)


AVX512 = "FMR_ARCH_NAME[3] == '5'"  # "avx512"[3] == '5'; "avx2"[3] == '2'; "generic"[3] == 'e'
AVX2 = "FMR_ARCH_NAME[3] == '2'"
GENERIC = "FMR_ARCH_NAME[0] == 'g'"

MUTATIONS = [
    # ---- forward: the score
    Mutation(
        "forward linear term",
        KI,
        "for (int p = 0; p < r.n; ++p) t += *r.lw[p] * r.x[p];",
        "for (int p = 0; p < r.n; ++p) t += *r.lw[p];",
    ),
    Mutation(
        "forward FM sum trick: x_i^2 of the square terms",
        KI,
        "add_prod<K>(Q, xi * xi, vi, vi, kp);",
        "add_prod<K>(Q, xi, vi, vi, kp);",
    ),
    Mutation(
        "forward per-slot sums Sa",
        KI,
        "if (na) axpy<K>(Sa + r.slot[p] * kp, xi, vi, kp);",
        "if (na) axpy<K>(Sa, xi, vi, kp);",
    ),
    Mutation(
        "forward single x aware dots",
        KI,
        "add_prod<K>(acc, r.x[p], r.wrow[p] + r.slot_field[s] * M.vs, r.Sa.data() + s * kp, kp);",
        "add_prod<K>(acc, 1.f, r.wrow[p] + r.slot_field[s] * M.vs, r.Sa.data() + s * kp, kp);",
    ),
    Mutation(
        "pair_dots K=4 wide: second pair's value",
        KI,
        "const __m256 x = Same ? same : _mm256_set_m128(_mm_set1_ps(xb * ax[c + 1]), _mm_set1_ps(xb * ax[c]));",
        "const __m256 x = Same ? same : _mm256_set_m128(_mm_set1_ps(xb * ax[c]), _mm_set1_ps(xb * ax[c]));",
        cpu="avx2",
    ),
    Mutation(
        "pair_dots K=4 wide: second pair's partner vector",
        KI,
        "const __m256 q = _mm256_loadu2_m128(blk[c + 1] + fb, blk[c] + fb);",
        "const __m256 q = _mm256_loadu2_m128(blk[c] + fb, blk[c] + fb);",
        cpu="avx2",
    ),
    Mutation("pair_dots K=4 wide: odd tail dropped", KI, "if (c < count)", "if (c + 1 < count)", cpu="avx2"),
    Mutation(
        "pair_dots K=4 wide, one value (same_x): pair value without the values",
        KI,
        "const __m256 same = _mm256_set1_ps(count ? xb * ax[0] : 0.f);  // the pair value of every c when Same",
        "const __m256 same = _mm256_set1_ps(count ? xb : 0.f);",
        cpu="avx2",
    ),
    Mutation(
        "pair_dots compile-time K: partner offset",
        KI,
        "auto term = [&](int c) { return splat<T>(xb * ax[c]) * load<T>(p + afo[c]) * load<T>(blk[c] + q); };",
        "auto term = [&](int c) { return splat<T>(xb * ax[c]) * load<T>(p + afo[c]) * load<T>(blk[c] + afo[c] + i); };",
    ),
    Mutation(
        "pair_dots compile-time K: first chunk only",
        KI,
        "for (int i = 0; i < (K ? K : L); i += L) {",
        "for (int i = 0; i < L; i += L) {",
    ),
    Mutation(
        "pair_dots compile-time K: fourth sum dropped",
        KI,
        "store(acc + i, (a0 + a1) + (a2 + a3));",
        "store(acc + i, (a0 + a1) + a2);",
    ),
    Mutation(
        "pair_dots compile-time K: remainder after the groups of four dropped",
        KI,
        "for (; c < count; ++c) a0 += term(c);",
        "for (; c < count && c < 0; ++c) a0 += term(c);",
    ),
    Mutation(
        "pair_dots run-time K: value of the partner",
        KI,
        "for (int c = 0; c < count; ++c) add_prod<K>(acc, xb * ax[c], Wb + afo[c], blk[c] + fb, kp_rt);",
        "for (int c = 0; c < count; ++c) add_prod<K>(acc, xb, Wb + afo[c], blk[c] + fb, kp_rt);",
    ),
    Mutation(
        "hsum: last lane dropped",
        LANES,
        "for (int i = 0; i < width<T>(); ++i) s += v[i];",
        "for (int i = 0; i < width<T>() - 1; ++i) s += v[i];",
    ),
    # ---- backward 2) aware x aware, one node per field: the fused in-place pair loop
    Mutation(
        "pair_steps4, one value (same_x): kappa x_b without the partner's value",
        KI,
        "const __m256 same = _mm256_set1_ps(c < na ? kxb * ax[c] : 0.f);",
        "const __m256 same = _mm256_set1_ps(c < na ? kxb : 0.f);",
        cpu="avx2",
    ),
    Mutation(
        "gather: rows whose values differ marked as one value (same_x)",
        "cpp/src/row.cc",
        "for (int a = 1; a < na; ++a) same_x = same_x && ax[a] == ax[0];",
        ";",
    ),
    Mutation(
        "pair_steps4: second pair's value",
        KI,
        "const __m256 kx = Same ? same : _mm256_set_m128(_mm_set1_ps(kxb * ax[c + 1]), _mm_set1_ps(kxb * ax[c]));",
        "const __m256 kx = Same ? same : _mm256_set_m128(_mm_set1_ps(kxb * ax[c]), _mm_set1_ps(kxb * ax[c]));",
        cpu="avx2",
    ),
    Mutation(
        "pair_steps4: w2's accumulator read from w1's",
        KI,
        "const __m256 G2 = _mm256_fmadd_ps(g2, g2, _mm256_loadu2_m128(w2b + 4, w2a + 4));",
        "const __m256 G2 = _mm256_fmadd_ps(g2, g2, _mm256_loadu2_m128(w1b + 4, w1a + 4));",
        cpu="avx2",
    ),
    Mutation(
        "pair_steps4: w1's accumulator stored from w2's",
        KI,
        "_mm256_storeu2_m128(w1b + 4, w1a + 4, G1);",
        "_mm256_storeu2_m128(w1b + 4, w1a + 4, G2);",
        cpu="avx2",
    ),
    Mutation(
        "pair_steps4: L2 of g2 on the wrong vector",
        KI,
        "const __m256 g2 = _mm256_fmadd_ps(kx, a, _mm256_mul_ps(lv, bq));",
        "const __m256 g2 = _mm256_fmadd_ps(kx, a, _mm256_mul_ps(lv, a));",
        cpu="avx2",
    ),
    Mutation(
        "pair_steps4: second pair's first vector",
        KI,
        "float* w1b = Wb + afo[c + 1];",
        "float* w1b = Wb + afo[c];",
        cpu="avx2",
    ),
    Mutation(
        "pair_steps4: w2 step scaled by w1's accumulator",
        KI,
        "_mm256_storeu2_m128(w2b, w2a, ada_step<f8>(bq, g2, G2, ev));",
        "_mm256_storeu2_m128(w2b, w2a, ada_step<f8>(bq, g2, G1, ev));",
        cpu="avx2",
    ),
    Mutation(
        "pair_steps4@avx512: second pair's value, AVX-512 variant only",
        KI,
        "const __m256 kx = Same ? same : _mm256_set_m128(_mm_set1_ps(kxb * ax[c + 1]), _mm_set1_ps(kxb * ax[c]));",
        f"const __m256 kx = Same ? same : _mm256_set_m128(_mm_set1_ps(kxb * ax[{AVX512} ? c : c + 1]), "
        "_mm_set1_ps(kxb * ax[c]));",
        cpu="avx512",
    ),
    Mutation(
        "pair_steps4@avx2: w2's accumulator, AVX2 variant only",
        KI,
        "const __m256 G2 = _mm256_fmadd_ps(g2, g2, _mm256_loadu2_m128(w2b + 4, w2a + 4));",
        f"const __m256 G2 = _mm256_fmadd_ps(g2, g2, {AVX2} ? _mm256_loadu2_m128(w1b + 4, w1a + 4) : "
        "_mm256_loadu2_m128(w2b + 4, w2a + 4));",
        cpu="avx2",
    ),
    Mutation(
        "pair_step: g2 with L2 of the wrong vector (K>4, generic K=4, odd tail)",
        KI,
        "const T g2 = kv * a + lv * b;",
        "const T g2 = kv * a + lv * a;",
    ),
    Mutation(
        "pair_step: w2 step scaled by w1's accumulator",
        KI,
        "store(w2 + d, ada_step(b, g2, G2v, ev));",
        "store(w2 + d, ada_step(b, g2, G1v, ev));",
    ),
    Mutation(
        "pair_step@generic: w2's accumulator, generic variant only",
        KI,
        "const T G2v = load<T>(G2 + d) + g2 * g2;",
        f"const T G2v = load<T>(({GENERIC} ? G1 : G2) + d) + g2 * g2;",
    ),
    Mutation(
        "pair_step@avx512: g1 value, AVX-512 variant only (K=8 f8 chunks, K=0, odd tail)",
        KI,
        "const T g1 = kv * b + lv * a;",
        f"const T g1 = kv * b * ({AVX512} ? 0.5f : 1.f) + lv * a;",
        cpu="avx512",
    ),
    Mutation(
        "pair_step@avx512 K=8: g1 value, AVX-512 variant with K=8 only (one f8 chunk)",
        KI,
        "const T g1 = kv * b + lv * a;",
        f"const T g1 = kv * b * ({AVX512} && K == 8 ? 0.5f : 1.f) + lv * a;",
        cpu="avx512",
    ),
    Mutation(
        "pair_step@avx2 K=0: g1 value, AVX2 variant with run-time K only",
        KI,
        "const T g1 = kv * b + lv * a;",
        f"const T g1 = kv * b * ({AVX2} && K == 0 ? 0.5f : 1.f) + lv * a;",
        cpu="avx2",
    ),
    Mutation(
        "pair_dots@avx2 K=16: pair value, AVX2 variant with K=16 only (two f8 chunks)",
        KI,
        "auto term = [&](int c) { return splat<T>(xb * ax[c]) * load<T>(p + afo[c]) * load<T>(blk[c] + q); };",
        f"auto term = [&](int c) {{ return splat<T>(xb * ax[c] * ({AVX2} && K == 16 ? 0.5f : 1.f)) * "
        "load<T>(p + afo[c]) * load<T>(blk[c] + q); };",
        cpu="avx2",
    ),
    Mutation(
        "adagrad@avx512 K=16: L2, AVX-512 variant with K=16 only",
        KI,
        "const T g = kv * load<T>(dscore + d) + lv * wv;",
        f"const T g = kv * load<T>(dscore + d) + lv * wv * ({AVX512} && K == 16 ? 0.f : 1.f);",
        cpu="avx512",
    ),
    Mutation(
        "collect@avx2 K=4: aware partner's value, AVX2 variant with K=4 only",
        KI,
        "axpy<K>(g, kx * r.x[q], r.wrow[q] + r.field[p] * M.vs, kp);",
        f"axpy<K>(g, kx * r.x[q] * ({AVX2} && K == 4 ? 0.5f : 1.f), r.wrow[q] + r.field[p] * M.vs, kp);",
        cpu="avx2",
    ),
    Mutation(
        "fused loop: pair value",
        KI,
        "pair_step<K>(w1, w2, w1 + kp, w2 + kp, kxb * ax[c], ev, lv, kp);  // AdaGrad state right after each vector",
        "pair_step<K>(w1, w2, w1 + kp, w2 + kp, kxb * ax[b], ev, lv, kp);",
    ),
    Mutation(
        "fused loop: partner vector's field",
        KI,
        "float* w2 = blk[c] + fb;",
        "float* w2 = blk[c] + afo[c];",
    ),
    # ---- backward 2) multi-valued fields: gradients gathered first
    Mutation(
        "gathered gradients: partner's field",
        KI,
        "axpy<K>(g, xp * r.x[q], r.wrow[q] + fp * M.vs, kp);",
        "axpy<K>(g, xp * r.x[q], r.wrow[q] + r.slot_field[s] * M.vs, kp);",
    ),
    Mutation(
        "gathered gradients: a node is its own partner", KI, "if (q == p) continue;", "if (false) continue;", nth=2
    ),
    Mutation(
        "gathered gradients: a vector without partner stepped",
        KI,
        "if (!used[b * nf + s]) continue;",
        "if (!r.slot_aware[s]) continue;",
    ),
    # ---- backward 1) single x aware and 3) single vectors; the AdaGrad helper
    Mutation(
        "backward Ca: value of the aware node",
        KI,
        "if (!r.slot_aware[s]) axpy<K>(Ca + s * kp, r.x[p], r.wrow[p] + r.slot_field[s] * M.vs, kp);",
        "if (!r.slot_aware[s]) axpy<K>(Ca + s * kp, 1.f, r.wrow[p] + r.slot_field[s] * M.vs, kp);",
    ),
    Mutation(
        "backward single x aware: gradient of w_{p,a}",
        KI,
        "axpy<K>(g, r.x[p], r.Sa.data() + s * kp, kp);",
        "axpy<K>(g, 1.f, r.Sa.data() + s * kp, kp);",
    ),
    Mutation(
        "backward single x aware: L2 dropped",
        KI,
        "adagrad<K>(w, w + kp, g, kappa, eta, l2f, kp);",
        "adagrad<K>(w, w + kp, g, kappa, eta, 0.f, kp);",
    ),
    Mutation(
        "backward single vectors: own term not removed",
        KI,
        "T inner = load<T>(S + d) - xi * load<T>(vi + d);",
        "T inner = load<T>(S + d);",
    ),
    Mutation(
        "backward single vectors: Ca (aware partners) dropped",
        KI,
        "if (ca) inner += load<T>(ca + d);",
        "if (false) inner += load<T>(ca + d);",
    ),
    Mutation(
        "adagrad: L2 dropped",
        KI,
        "const T g = kv * load<T>(dscore + d) + lv * wv;",
        "const T g = kv * load<T>(dscore + d);",
    ),
    Mutation(
        "rsqrt_estimate f4: 1/v instead of 1/sqrt(v)",
        LANES,
        "return reinterpret_cast<f4>(_mm_rsqrt_ps(reinterpret_cast<__m128>(v)));",
        "return reinterpret_cast<f4>(_mm_rcp_ps(reinterpret_cast<__m128>(v)));",
    ),
    Mutation(
        "rsqrt_estimate f8: 1/v instead of 1/sqrt(v)",
        LANES,
        "inline f8 rsqrt_estimate(f8 v) { return reinterpret_cast<f8>(_mm256_rsqrt_ps(reinterpret_cast<__m256>(v))); }",
        "inline f8 rsqrt_estimate(f8 v) { return reinterpret_cast<f8>(_mm256_rcp_ps(reinterpret_cast<__m256>(v))); }",
        cpu="avx2",
    ),
    Mutation(
        "rsqrt_estimate f16: 1/v instead of 1/sqrt(v)",
        LANES,
        "return reinterpret_cast<f16>(_mm512_maskz_rsqrt14_ps(0xFFFF, reinterpret_cast<__m512>(v)));",
        "return reinterpret_cast<f16>(_mm512_maskz_rcp14_ps(0xFFFF, reinterpret_cast<__m512>(v)));",
        cpu="avx512",
    ),
    Mutation(
        "ada_step@avx2 f8: no Newton step (the 12-bit estimate), AVX2 8-float chunks only",
        LANES,
        "return w - (g * y) * (e.e15 - (e.e05 * G * y) * y);",
        f"return w - (g * y) * (e.e15 - ({AVX2} && sizeof(T) == 32 ? e.e05 : (e.e05 * G * y) * y));",
        cpu="avx2",
    ),
    Mutation(
        "pair_dots@avx512 K=32: pair value, AVX-512 variant with K=32 only (two f16 chunks)",
        KI,
        "auto term = [&](int c) { return splat<T>(xb * ax[c]) * load<T>(p + afo[c]) * load<T>(blk[c] + q); };",
        f"auto term = [&](int c) {{ return splat<T>(xb * ax[c] * ({AVX512} && K == 32 ? 0.5f : 1.f)) * "
        "load<T>(p + afo[c]) * load<T>(blk[c] + q); };",
        cpu="avx512",
    ),
    Mutation(
        "ada_step: Newton step's second constant",
        LANES,
        "explicit AdaRate(float eta) : e15(splat<T>(1.5f * eta)), e05(splat<T>(0.5f * eta)) {}",
        "explicit AdaRate(float eta) : e15(splat<T>(1.5f * eta)), e05(splat<T>(0.49f * eta)) {}",
    ),
    # ---- backward 4) bias and linear weights
    Mutation("bias: accumulator", KI, "*r.g0 += kappa * kappa;", "*r.g0 += std::fabs(kappa);"),
    Mutation("bias: step", KI, "*r.w0 -= eta * kappa / std::sqrt(*r.g0);", "*r.w0 -= eta * kappa / *r.g0;"),
    Mutation(
        "linear: L2 dropped",
        KI,
        "const float g = kappa * r.x[p] + h.l2_lin * *r.lw[p];",
        "const float g = kappa + h.l2_lin * *r.lw[p];",
    ),
    Mutation(
        "linear: step",
        KI,
        "*r.lw[p] -= eta * g / std::sqrt(*r.lg[p]);",
        "*r.lw[p] -= eta * g / std::sqrt(*r.lg[p] + 1.f);",
    ),
    # ---- collect + apply: repeated features, BPR pairs
    Mutation(
        "collect: bias gradient",
        KI,
        "acc.slot(r.w0, r.g0, 1, 0.f)[0] += kappa;",
        "acc.slot(r.w0, r.g0, 1, 0.f)[0] += 2 * kappa;",
    ),
    Mutation(
        "collect: linear L2",
        KI,
        "for (int p = 0; p < n; ++p) acc.slot(r.lw[p], r.lg[p], 1, h.l2_lin)[0] += kappa * r.x[p];",
        "for (int p = 0; p < n; ++p) acc.slot(r.lw[p], r.lg[p], 1, 0.f)[0] += kappa * r.x[p];",
    ),
    Mutation(
        "collect: Ca value",
        KI,
        "if (!r.slot_aware[s]) axpy<K>(Ca + s * kp, r.x[r.aware[b]], r.wrow[r.aware[b]] + r.slot_field[s] * M.vs, kp);",
        "if (!r.slot_aware[s]) axpy<K>(Ca + s * kp, 1.f, r.wrow[r.aware[b]] + r.slot_field[s] * M.vs, kp);",
    ),
    Mutation(
        "collect: single vectors' own term",
        KI,
        "for (int d = 0; d < kp; ++d) g[d] += kappa * xi * (r.S[d] - xi * vi[d] + (na ? Ca[r.slot[p] * kp + d] : 0.f));",
        "for (int d = 0; d < kp; ++d) g[d] += kappa * xi * (r.S[d] + (na ? Ca[r.slot[p] * kp + d] : 0.f));",
    ),
    Mutation(
        "collect: single-slot gradient of w_{p,a} without L2",
        KI,
        "axpy<K>(acc.slot(w, w + kp, kp, h.l2_fac), kx, r.Sa.data() + s * kp, kp);",
        "axpy<K>(acc.slot(w, w + kp, kp, 0.f), kx, r.Sa.data() + s * kp, kp);",
    ),
    Mutation(
        "collect: aware partner's value",
        KI,
        "axpy<K>(g, kx * r.x[q], r.wrow[q] + r.field[p] * M.vs, kp);",
        "axpy<K>(g, kx, r.wrow[q] + r.field[p] * M.vs, kp);",
    ),
    Mutation("collect: a node is its own partner", KI, "if (q == p) continue;", "if (false) continue;", nth=1),
    Mutation("apply: L2 dropped", KI, "const float gd = g[d] + en.l2 * en.w[d];", "const float gd = g[d];"),
    Mutation("apply: accumulator", KI, "en.G[d] += gd * gd;", "en.G[d] += std::fabs(gd);"),
    Mutation(
        "bpr_step: negative row with the positive's sign",
        KI,
        "collect<K>(M, neg, -lg.kappa, h, acc);",
        "collect<K>(M, neg, lg.kappa, h, acc);",
    ),
    Mutation(
        "bpr_step: one row per pair (no per-parameter sum)",
        KI,
        "collect<K>(M, pos, lg.kappa, h, acc);",
        "collect<K>(M, pos, lg.kappa, h, acc); apply(acc, h); acc.reset(K ? K : M.kp);",
    ),
    Mutation("step: kappa's sign", KI, "backward<K>(M, r, lg.kappa, h);", "backward<K>(M, r, -lg.kappa, h);"),
    # ---- around the kernel: losses and the gather flags that choose a branch
    Mutation(
        "BPR loss: kappa",
        "cpp/src/loss.cc",
        "return {loss, static_cast<float>(-sigmoid(-d))};",
        "return {loss, static_cast<float>(-sigmoid(d))};",
    ),
    Mutation(
        "logistic loss: labels -1/1",
        "cpp/src/loss.cc",
        "const float y01 = y > 0.f ? 1.f : 0.f;",
        "const float y01 = y;",
    ),
    Mutation(
        "squared loss: kappa",
        "cpp/src/loss.cc",
        "return {static_cast<double>(d) * d, d};",
        "return {static_cast<double>(d) * d, 2 * d};",
    ),
    Mutation(
        "gather: normalize ignored",
        "cpp/src/row.cc",
        "if (M.normalize && norm2 > 0.0) {  // libffm's instance-wise 1/||x|| (breaks the split, DESIGN §6)",
        "if (false) {",
    ),
    Mutation(
        "gather: multi-valued rows sent to the fused loop",
        "cpp/src/row.cc",
        "one_per_slot = aware_slots == na;",
        "one_per_slot = true;",
    ),
    Mutation(
        "gather: repeated features not detected",
        "cpp/src/row.cc",
        "shared = any_repeated_feature();",
        "shared = false;",
        nth=2,
    ),
    # the general pass reads the vector rows the block stage looked up (Run::rows, RowRing::attach)
    Mutation(
        "gather: a node's looked-up vector row taken from the run's first node",
        "cpp/src/row.cc",
        "int32_t known = g.rows ? g.rows[t] : kRowUnknown;",
        "int32_t known = g.rows ? g.rows[0] : kRowUnknown;",
    ),
    Mutation(
        "gather: a swapped (cold-start) node keeps the vector row of its old feature",
        "cpp/src/row.cc",
        "if (swaps[w].field == f) j = swaps[w].feat, known = kRowUnknown;",
        "if (swaps[w].field == f) j = swaps[w].feat;",
    ),
    Mutation(
        "row ring: every run of an event gets the first run's vector rows",
        "cpp/fmrecall/prefetch.h",
        "if (rows) rows += runs[q].len;",
        "if (false) rows += runs[q].len;",
    ),
    Mutation(
        "row ring: rows handed to runs the block stage did not see (negatives drawn late)",
        "cpp/src/interactions.cc",
        "t.ring.attach(i, t.runs, late ? kpos : k);",
        "t.ring.attach(i, t.runs, k);",
    ),
    # an event's draws made ahead by the draw stage (cpp/src/interactions.cc; tests/test_interactions.py)
    Mutation(
        "draw stage: an event's draws made from the previous position's event",
        "cpp/src/interactions.cc",
        "d.draw(events.D, events.event(i), S);",
        "d.draw(events.D, events.event(i > 0 ? i - 1 : i), S);",
    ),
    Mutation(
        "event draws: cold-start swaps never drawn (sampled negatives)",
        "cpp/src/interactions.cc",
        "nsw = D.draw_swaps(rng, sw);",
        "nsw = 0;",
        nth=1,
    ),
    Mutation(
        "event draws: cold-start swaps never drawn (labelled events)",
        "cpp/src/interactions.cc",
        "const int nsw = D.draw_swaps(rng, sw);",
        "const int nsw = 0;",
    ),
    Mutation(
        "sampled negatives: the event's cold-start swaps not applied to its negatives",
        "cpp/src/interactions.cc",
        "th.neg.gather(M, runs, kpos, sf, sj, d.sw, d.nsw);",
        "th.neg.gather(M, runs, kpos, sf, sj, d.sw, 0);",
    ),
    Mutation(
        "sampled negatives: every candidate gets the first draw's item run",
        "cpp/src/interactions.cc",
        "runs[kpos - 1] = n < n_drawn ? th.runs[kpos + n] : D.items.row(d.items[n]);",
        "runs[kpos - 1] = n < n_drawn ? th.runs[kpos] : D.items.row(d.items[n]);",
    ),
    # gather's one-hot pass (one run of unit values; tests/test_gather.py, the unit cases of test_kernels.py)
    Mutation(
        "gather one-hot pass: values array ignored",
        "cpp/src/row.cc",
        "if (nrun == 1 && !runs[0].val && skip_field < 0 && nswap == 0 && !M.normalize && M.F <= 64) {",
        "if (nrun == 1 && skip_field < 0 && nswap == 0 && !M.normalize && M.F <= 64) {",
    ),
    Mutation(
        "gather one-hot pass: instance normalisation ignored",
        "cpp/src/row.cc",
        "if (nrun == 1 && !runs[0].val && skip_field < 0 && nswap == 0 && !M.normalize && M.F <= 64) {",
        "if (nrun == 1 && !runs[0].val && skip_field < 0 && nswap == 0 && M.F <= 64) {",
    ),
    Mutation(
        "gather one-hot pass: a field met twice kept",
        "cpp/src/row.cc",
        "if (seen & bit) {  // a field met twice: the general path starts over (reset_slots clears these slots)",
        "if (false) {",
    ),
    Mutation(
        "gather one-hot pass: slots not handed back when the general pass takes over",
        "cpp/src/row.cc",
        "nf = n;",
        "nf = 0;",
        nth=1,
    ),
    Mutation(
        "gather one-hot pass: value scale ignored",
        "cpp/src/row.cc",
        "x[n] = M.scale;  // value 1 times the model's value scale",
        "x[n] = 1.f;",
    ),
    Mutation(
        "gather one-hot pass: pair value without the scale", "cpp/src/row.cc", "ax[na] = M.scale;", "ax[na] = 1.f;"
    ),
    Mutation(
        "gather one-hot pass: aware nodes not grouped by slot",
        "cpp/src/row.cc",
        "aw_begin[++n] = na;",
        "aw_begin[++n] = 0;",
    ),
    Mutation(
        "gather one-hot pass: a node without a vector takes row 0",
        "cpp/src/row.cc",
        "const int64_t r = g.rows ? g.rows[t] : M.single_row_of(j);",
        "const int64_t r = std::max<int64_t>(g.rows ? g.rows[t] : M.single_row_of(j), 0);",
    ),
    Mutation(
        "row ring: the block stage hands on no W row",
        "cpp/fmrecall/prefetch.h",
        "rows[t] = static_cast<int32_t>(r);",
        "rows[t] = -1;",
        nth=1,
    ),
    Mutation(
        "row ring: the block stage hands on no v row",
        "cpp/fmrecall/prefetch.h",
        "rows[t] = static_cast<int32_t>(r);",
        "rows[t] = -1;",
        nth=2,
    ),
    Mutation(
        "gather one-hot pass: repeated features not detected",
        "cpp/src/row.cc",
        "shared = any_repeated_feature();",
        "shared = false;",
        nth=1,
    ),
    Mutation(
        "gather: value scale ignored",
        "cpp/src/row.cc",
        "} else if (M.scale != 1.f) {  // the model's constant value scale (keeps the split exact, DESIGN §6)",
        "} else if (false) {",
    ),
    Mutation(
        "gather: a node without a vector takes row 0",
        "cpp/src/row.cc",
        "const int64_t r = known_row_[p] != kRowUnknown ? known_row_[p] : M.single_row_of(feat[p]);",
        "const int64_t r = std::max<int64_t>(known_row_[p] != kRowUnknown ? known_row_[p] : M.single_row_of(feat[p]), 0);",
    ),
    # ---- the moving average of the weights (cpp/src/model.cc; tests/test_average.py)
    Mutation(
        "average: the first call blends instead of copying",
        MODEL,
        "const float a = first ? 0.f : beta, b = 1.f - a;  // avg <- a avg + b w (a copy the first time)",
        "const float a = beta, b = 1.f - a;",
    ),
    Mutation(
        "average: vector weights blended the wrong way round",
        MODEL,
        "auto blend = [a, b](float& s, float& c) { c = a * c + b * s; };",
        "auto blend = [a, b](float& s, float& c) { c = b * c + a * s; };",
    ),
    Mutation(
        "average: linear weights not averaged",
        MODEL,
        "for (int64_t j = 0; j < n_lin; ++j) avg_w[j] = a * avg_w[j] + b * w[j];",
        "for (int64_t j = 0; j < n_lin; ++j) avg_w[j] = w[j];",
    ),
    Mutation("average: bias not averaged", MODEL, "avg_w0 = a * avg_w0 + b * w0;", "avg_w0 = w0;"),
    Mutation(
        "swap_average: vectors copied one way",
        MODEL,
        "auto swap = [](float& s, float& c) { std::swap(s, c); };",
        "auto swap = [](float& s, float& c) { s = c; };",
    ),
    # ---- private copies of the hot parameters (cpp/src/hot.cc; tests/test_hot.py, test_kernels.py)
    Mutation(
        "hot copy: AdaGrad state on the weight", HOT, "r.lg[p] = c + set_.lin_[h] + 1;", "r.lg[p] = c + set_.lin_[h];"
    ),
    Mutation(
        "hot copy: single vector copied to the wrong place",
        HOT,
        "segs_.push_back({M_.vec(vr), at, M_.vs});",
        "segs_.push_back({M_.vec(vr), at + 4, M_.vs});",
    ),
    Mutation(
        "hot copy: last field's vector of a W block left out",
        HOT,
        "segs_.push_back({M_.wvec(wr, 0), at, static_cast<int32_t>(block)});",
        "segs_.push_back({M_.wvec(wr, 0), at, static_cast<int32_t>(block) - M_.vs});",
    ),
    Mutation(
        "hot copy: not taken from the model",
        HOT,
        "std::memcpy(copy_.data() + sg.local, sg.master, sg.len * sizeof(float));",
        "std::memset(copy_.data() + sg.local, 0, sg.len * sizeof(float));",
    ),
    Mutation(
        "hot merge: the other threads' changes overwritten (four lanes: vectors)",
        HOT,
        "const f4 v = mv == bv ? cv : mv + (cv - bv);",
        "const f4 v = cv;",
    ),
    Mutation(
        "hot merge: the other threads' changes overwritten (tail: bias, linear weights)",
        HOT,
        "const float v = m[i] == b[i] ? c[i] : m[i] + (c[i] - b[i]);",
        "const float v = c[i];",
    ),
    Mutation("hot merge: base not moved on (four lanes)", HOT, "std::memcpy(b + i, &v, sizeof(f4));", ";"),
    Mutation("hot merge: base not moved on (tail)", HOT, "b[i] = v;", ";"),
    Mutation(
        "hot redirect: single vector left in the model, weights in the copy",
        HOT,
        "if (r.vrow[p] && set_.v_[h] >= 0) r.vrow[p] = c + set_.v_[h];",
        "if (r.vrow[p] && set_.v_[h] >= 0) r.vrow[p] = c + set_.W_[h];",
    ),
    Mutation("hot redirect: bias state on the bias", HOT, "r.g0 = c + 1;", "r.g0 = c;"),
]


def _run(cmd, cwd, env=None, timeout=900):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _find(text: str, m: Mutation):
    """Index of the line to mutate, or None (stale) when the text is missing, occurs fewer than nth
    times, or (nth = 0) is not unique."""
    hits = [i for i, line in enumerate(text.split("\n")) if line.strip() == m.original]
    if m.nth == 0:
        return hits[0] if len(hits) == 1 else None
    return hits[m.nth - 1] if len(hits) >= m.nth else None


def _cpu_has(arch: str, python: str, work: Path) -> bool:
    env = dict(os.environ, PYTHONPATH=str(work / "python"), FMRECALL_ARCH=arch)
    out = _run([python, "-c", "import fmrecall; print(fmrecall.best_arch())"], work, env).stdout.strip()
    return out == arch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/fmrecall-mutants", help="private copy to build and mutate")
    ap.add_argument(
        "--tests",
        default=(
            "tests/test_kernels.py tests/test_seen_vectors.py tests/test_split.py tests/test_gather.py "
            "tests/test_average.py tests/test_hot.py tests/test_interactions.py"
        ),
        help="pytest target(s), space separated",
    )
    ap.add_argument(
        "--only",
        default="",
        help="only the mutations whose name contains one of these (comma-separated, case-insensitive)",
    )
    ap.add_argument("--list", action="store_true", help="list the mutations and whether they apply")
    ap.add_argument("--keep", action="store_true", help="reuse an existing --work copy (no fresh copy)")
    args = ap.parse_args()
    words = [w.strip().lower() for w in args.only.split(",")]
    muts = [m for m in MUTATIONS if any(w in m.name.lower() for w in words)]

    if args.list:
        stale = 0
        for m in muts:
            ok = _find((ROOT / m.file).read_text(), m) is not None
            stale += not ok
            print(f"{'ok   ' if ok else 'STALE'} {m.file}: {m.name}")
        return 1 if stale else 0

    work = Path(args.work)
    python = sys.executable
    if not args.keep or not (work / "build" / "m").is_dir():
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(
            ROOT,
            work,
            ignore=shutil.ignore_patterns(
                "build", ".git", "__pycache__", ".pytest_cache", ".cache", "_core*.so", ".benchmarks"
            ),
        )
        import pybind11

        r = _run(
            [
                "cmake",
                "-S",
                ".",
                "-B",
                "build/m",
                "-G",
                "Ninja",
                f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={work / 'python' / 'fmrecall'}",
            ],
            work,
        )
        if r.returncode:
            print(r.stdout + r.stderr)
            return 2
    env = dict(os.environ, PYTHONPATH=str(work / "python"))
    env.pop("FMRECALL_ARCH", None)
    pytest_cmd = [python, "-m", "pytest", *args.tests.split(), "-q", "-x", "-p", "no:cacheprovider"]

    def build():
        return _run(["ninja", "-C", "build/m"], work)

    r = build()
    if r.returncode:
        print("the unmutated copy does not build:\n" + r.stdout[-3000:] + r.stderr[-3000:])
        return 2
    t0 = time.time()
    r = _run(pytest_cmd, work, env)
    if r.returncode:
        print("the unmutated copy fails its tests:\n" + r.stdout[-3000:])
        return 2
    print(
        f"baseline: {args.tests} passes ({time.time() - t0:.1f} s); "
        f"CPU: {', '.join(a for a in ('generic', 'avx2', 'avx512') if _cpu_has(a, python, work))}"
    )

    results = []
    for m in muts:
        path = work / m.file
        text = path.read_text()
        i = _find(text, m)
        if i is None:
            results.append((m, "STALE", "the original line is not in the file"))
            print(f"STALE     {m.name}")
            continue
        if m.cpu and not _cpu_has(m.cpu, python, work):
            results.append((m, "SKIPPED", f"this CPU has no {m.cpu}"))
            print(f"SKIPPED   {m.name} (no {m.cpu})")
            continue
        lines = text.split("\n")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = indent + m.mutated
        try:
            path.write_text("\n".join(lines))
            b = build()
            if b.returncode:
                results.append((m, "NO-BUILD", (b.stdout + b.stderr)[-400:]))
                print(f"NO-BUILD  {m.name}")
                continue
            t0 = time.time()
            try:
                r = _run(pytest_cmd, work, env, timeout=600)
                rc, out = r.returncode, r.stdout
            except subprocess.TimeoutExpired:
                rc, out = -1, "timeout"
            failed = [ln.split(" ")[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
            if rc == 0:
                results.append((m, "SURVIVED", ""))
                print(f"SURVIVED  {m.name}")
            else:
                how = failed[0] if failed else f"exit status {rc}"
                results.append((m, "caught", how))
                print(f"caught    {m.name}  ({time.time() - t0:.1f} s)  by {how}")
        finally:
            path.write_text(text)
    build()  # leave the copy unmutated

    print("\n| mutation | file | caught by |\n|---|---|---|")
    for m, status, how in results:
        print(f"| {m.name} | {m.file} | {status}: {how} |")
    bad = [m for m, status, _ in results if status in ("SURVIVED", "STALE", "NO-BUILD")]
    print(
        f"\n{len(results) - len(bad)} of {len(results)} mutations caught or skipped; "
        f"{len(bad)} survived / stale / did not build"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
