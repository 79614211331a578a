// One paged-attention task with AVX2 and FMA: the path of machines without AVX-512 (AMD Zen2/3,
// older Intel), and of sliding-window layers everywhere (it masks the keys before a row's window;
// the AVX-512 path runs unmasked chunks only, and choosing by layer keeps a row's numbers the same
// whatever rows share its task).
//
// As the AVX-512 path: the G x R query heads of a task share each key's load and conversion, and
// each head's numbers are those it gets alone: a key's score is one 8-lane dot product reduced by
// the same shuffles wherever the key sits, a row's softmax runs over its own keys only, and a
// masked key weighs exactly 0 in P.V, whose lanes sum over the keys in order.
#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "attention_work.h"
#include "fast_exp.h"

namespace tokenmill {
namespace {

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
AVX2 inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
AVX2 inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// 4 vectors -> lane i = the sum of a[i]'s 8 lanes, each by the same tree of adds
AVX2 inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}
AVX2 inline __m128i sum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

// exp(x) for x <= 0 (fast_exp.h)
AVX2 inline __m256 exp8(__m256 x) { return fast_exp256(x); }

// cap * tanh(x / cap), by tanh|y| = (1 - e) / (1 + e) with e = exp(-2|y|) <= 1, then y's sign
AVX2 inline __m256 softcap8(__m256 x, float cap) {
  const __m256 y = _mm256_mul_ps(x, _mm256_set1_ps(1.f / cap));
  const __m256 sign = _mm256_and_ps(y, _mm256_set1_ps(-0.f));
  const __m256 e = exp8(_mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), y), _mm256_set1_ps(-2.f)));
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), e), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  return _mm256_mul_ps(_mm256_or_ps(t, sign), _mm256_set1_ps(cap));
}

AVX2 inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return std::max(_mm_cvtss_f32(m), _mm_cvtss_f32(_mm_shuffle_ps(m, m, 1)));
}

AVX2 inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// lanes j .. j + 7 that are keys in [s, n)
AVX2 inline __m256 in_range(int64_t j, int64_t s, int64_t n) {
  const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j)),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(s)), idx);
  const __m256i hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
  return _mm256_castsi256_ps(_mm256_andnot_si256(lo, hi));
}

// Scores of heads g0, g0 + 1 (GN of them) against keys j .. j + 3 (rows), float caches.
template <typename C, int GN>
AVX2 void qk_tile(const float* qs, int64_t D, const C* const* rows, int64_t g0, float* scores,
                  int64_t ld, int64_t j, int64_t m) {
  __m256 acc[GN][4];
  for (int g = 0; g < GN; ++g)
    for (int i = 0; i < 4; ++i) acc[g][i] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) {
    __m256 q[GN];
    for (int g = 0; g < GN; ++g) q[g] = _mm256_loadu_ps(qs + (g0 + g) * D + d);
    for (int i = 0; i < 4; ++i) {
      const __m256 kv = load8(rows[i] + d);
      for (int g = 0; g < GN; ++g) acc[g][i] = _mm256_fmadd_ps(q[g], kv, acc[g][i]);
    }
  }
  for (int g = 0; g < GN; ++g) {
    float out[4];
    _mm_storeu_ps(out, sum4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]));
    std::copy(out, out + m, scores + (g0 + g) * ld + j);
  }
}

// int8 keys against the int8 queries: exact integer dot products (as the portable loop's), then
// float(dot) * q scale * k scale
template <int GN>
AVX2 void qk_tile_i8(const int8_t* qi, const float* qscale, int64_t D, const int8_t* const* rows,
                     int64_t g0, float* scores, int64_t ld, int64_t j, int64_t m) {
  __m256i acc[GN][4];
  for (int g = 0; g < GN; ++g)
    for (int i = 0; i < 4; ++i) acc[g][i] = _mm256_setzero_si256();
  for (int64_t d = 0; d < D; d += 16) {
    __m256i q[GN];
    for (int g = 0; g < GN; ++g)
      q[g] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qi + (g0 + g) * D + d)));
    for (int i = 0; i < 4; ++i) {
      const __m256i kv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + d)));
      for (int g = 0; g < GN; ++g) acc[g][i] = _mm256_add_epi32(acc[g][i], _mm256_madd_epi16(q[g], kv));
    }
  }
  for (int g = 0; g < GN; ++g) {
    int32_t dots[4];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dots), sum4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]));
    for (int i = 0; i < m; ++i)
      scores[(g0 + g) * ld + j + i] = static_cast<float>(dots[i]) * qscale[g0 + g] * row_scale(rows[i], D);
  }
}

// out[g][d0 .. d0 + 8 DN) = sum_j p[g][j] v[j][...] for heads g0 .. g0 + GN - 1
template <typename C, int GN, int DN>
AVX2 void pv_tile(const float* p, int64_t ld_p, const C* v, const int64_t* off, int64_t n, int64_t d0,
                  float* out, int64_t ld_out) {
  __m256 acc[GN][DN];
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < DN; ++c) acc[g][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const C* vrow = v + off[j] + d0;
    __m256 vv[DN];
    for (int c = 0; c < DN; ++c) vv[c] = load8(vrow + 8 * c);
    for (int g = 0; g < GN; ++g) {
      const __m256 w = _mm256_set1_ps(p[g * ld_p + j]);
      for (int c = 0; c < DN; ++c) acc[g][c] = _mm256_fmadd_ps(w, vv[c], acc[g][c]);
    }
  }
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < DN; ++c) _mm256_storeu_ps(out + g * ld_out + d0 + 8 * c, acc[g][c]);
}

template <typename C, int GN>
AVX2 void pv_heads(const float* p, int64_t ld_p, const C* v, const int64_t* off, int64_t n, int64_t D,
                   float* out, int64_t ld_out) {
  int64_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32) pv_tile<C, GN, 4>(p, ld_p, v, off, n, d0, out, ld_out);
  for (; d0 < D; d0 += 8) pv_tile<C, GN, 1>(p, ld_p, v, off, n, d0, out, ld_out);
}

// Scores (GR, n) of int8 keys, 2 heads x 4 keys a tile
AVX2 void qk_all(const float*, const int8_t* qi, const float* qscale, int64_t GR, int64_t D,
                 const int8_t* k, const int64_t* off, int64_t n, float* scores, int64_t ld) {
  for (int64_t j = 0; j < n; j += 4) {
    const int64_t m = std::min<int64_t>(4, n - j);
    const int8_t* rows[4];  // past the last key: the first key again (computed, not stored)
    for (int i = 0; i < 4; ++i) rows[i] = k + off[j + (i < m ? i : 0)];
    for (int64_t g0 = 0; g0 < GR; g0 += 2) {
      if (g0 + 1 < GR) qk_tile_i8<2>(qi, qscale, D, rows, g0, scores, ld, j, m);
      else qk_tile_i8<1>(qi, qscale, D, rows, g0, scores, ld, j, m);
    }
  }
}

// The same for float32 keys, 3 heads x 4 keys a tile (12 accumulators: the FMA pipes stay busy
// on 7 loads)
AVX2 void qk_all(const float* qs, const int8_t*, const float*, int64_t GR, int64_t D, const float* k,
                 const int64_t* off, int64_t n, float* scores, int64_t ld) {
  for (int64_t j = 0; j < n; j += 4) {
    const int64_t m = std::min<int64_t>(4, n - j);
    const float* rows[4];
    for (int i = 0; i < 4; ++i) rows[i] = k + off[j + (i < m ? i : 0)];
    int64_t g0 = 0;
    for (; g0 + 3 <= GR; g0 += 3) qk_tile<float, 3>(qs, D, rows, g0, scores, ld, j, m);
    if (g0 + 2 <= GR) qk_tile<float, 2>(qs, D, rows, g0, scores, ld, j, m), g0 += 2;
    if (g0 < GR) qk_tile<float, 1>(qs, D, rows, g0, scores, ld, j, m);
  }
}

// P.V of int8 values, 2 heads a tile
AVX2 void pv_all(const float* p, int64_t ld_p, int64_t GR, const int8_t* v, const int64_t* off, int64_t n,
                 int64_t D, float* out, int64_t ld_out) {
  for (int64_t g0 = 0; g0 < GR; g0 += 2) {
    if (g0 + 1 < GR) pv_heads<int8_t, 2>(p + g0 * ld_p, ld_p, v, off, n, D, out + g0 * ld_out, ld_out);
    else pv_heads<int8_t, 1>(p + g0 * ld_p, ld_p, v, off, n, D, out + g0 * ld_out, ld_out);
  }
}

// float32 values: 6 heads x 16 values a tile (12 accumulators, 2 loads and 6 broadcasts a key)
AVX2 void pv_all(const float* p, int64_t ld_p, int64_t GR, const float* v, const int64_t* off, int64_t n,
                 int64_t D, float* out, int64_t ld_out) {
  int64_t g0 = 0;
  for (; g0 + 6 <= GR; g0 += 6) {
    int64_t d0 = 0;
    for (; d0 + 16 <= D; d0 += 16) pv_tile<float, 6, 2>(p + g0 * ld_p, ld_p, v, off, n, d0, out + g0 * ld_out, ld_out);
    for (; d0 < D; d0 += 8) pv_tile<float, 6, 1>(p + g0 * ld_p, ld_p, v, off, n, d0, out + g0 * ld_out, ld_out);
  }
  for (; g0 + 2 <= GR; g0 += 2) pv_heads<float, 2>(p + g0 * ld_p, ld_p, v, off, n, D, out + g0 * ld_out, ld_out);
  if (g0 < GR) pv_heads<float, 1>(p + g0 * ld_p, ld_p, v, off, n, D, out + g0 * ld_out, ld_out);
}

// n rows of D float16 at src + off[j] -> float32 dst (n, D), the rows' offsets to dense_off
AVX2 void widen(const at::Half* src, const int64_t* off, int64_t n, int64_t D, float* dst, int64_t* dense_off) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(dst + j * D + d, load8(src + off[j] + d));
    dense_off[j] = j * D;
  }
}

}  // namespace

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}

template <typename C>
AVX2 void chunk_avx2(const float* qs, const int8_t* qi, const float* qscale, int64_t GR, int64_t G,
                     int64_t D, const C* k, const C* v, const int64_t* off, const int64_t* s_row,
                     const int64_t* n_row, int64_t R, float softcap, float* scores, int64_t ld_scores,
                     float* pr) {
  const int64_t n_all = n_row[R - 1];
  // float16 caches: the chunk's keys (later its values) widened to float32 once, not once per tile
  constexpr bool kWiden = std::is_same_v<C, at::Half>;
  thread_local std::vector<float> wide;
  thread_local std::vector<int64_t> dense;
  if constexpr (kWiden) {
    wide.resize(kChunk * D);
    dense.resize(kChunk);
    widen(k, off, n_all, D, wide.data(), dense.data());
    qk_all(qs, qi, qscale, GR, D, wide.data(), dense.data(), n_all, scores, ld_scores);
  } else {
    qk_all(qs, qi, qscale, GR, D, k, off, n_all, scores, ld_scores);
  }
  if (softcap > 0.f) {
    for (int64_t g = 0; g < GR; ++g)
      for (int64_t j = 0; j < n_all; j += 8) {
        const __m256i in_chunk = _mm256_castps_si256(in_range(j, 0, n_all));
        float* s = scores + g * ld_scores + j;
        _mm256_maskstore_ps(s, in_chunk, softcap8(_mm256_maskload_ps(s, in_chunk), softcap));
      }
  }
  for (int64_t g = 0; g < GR; ++g) {  // each head's softmax over its row's keys [s, n)
    float* s = scores + g * ld_scores;
    const int64_t s0 = s_row[g / G], n = n_row[g / G];
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 8) {
      const __m256 valid = in_range(j, s0, n);
      const __m256 x = _mm256_maskload_ps(s + j, _mm256_castps_si256(valid));
      vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, valid));
    }
    const float mx = hmax8(vmax);
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n_all; j += 8) {  // masked keys and those past n: weight 0
      const __m256 valid = in_range(j, s0, n);
      const __m256i in_chunk = _mm256_castps_si256(in_range(j, 0, n_all));
      const __m256 x = _mm256_maskload_ps(s + j, _mm256_castps_si256(valid));
      const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(x, vm)), valid);
      _mm256_maskstore_ps(s + j, in_chunk, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    float* out = pr + g * (D + 2);
    out[D] = mx;
    out[D + 1] = hsum8(vsum);
  }
  if constexpr (kScaled<C>) {  // int8 values: each weight times its row's scale, once
    for (int64_t j = 0; j < n_all; ++j) {
      const float vs = row_scale(v + off[j], D);
      for (int64_t g = 0; g < GR; ++g) scores[g * ld_scores + j] *= vs;
    }
  }
  if constexpr (kWiden) {
    widen(v, off, n_all, D, wide.data(), dense.data());
    pv_all(scores, ld_scores, GR, wide.data(), dense.data(), n_all, D, pr, D + 2);
  } else {
    pv_all(scores, ld_scores, GR, v, off, n_all, D, pr, D + 2);
  }
}

template void chunk_avx2<float>(const float*, const int8_t*, const float*, int64_t, int64_t, int64_t,
                                const float*, const float*, const int64_t*, const int64_t*,
                                const int64_t*, int64_t, float, float*, int64_t, float*);
template void chunk_avx2<at::Half>(const float*, const int8_t*, const float*, int64_t, int64_t, int64_t,
                                   const at::Half*, const at::Half*, const int64_t*, const int64_t*,
                                   const int64_t*, int64_t, float, float*, int64_t, float*);
template void chunk_avx2<int8_t>(const float*, const int8_t*, const float*, int64_t, int64_t, int64_t,
                                 const int8_t*, const int8_t*, const int64_t*, const int64_t*,
                                 const int64_t*, int64_t, float, float*, int64_t, float*);

}  // namespace tokenmill
