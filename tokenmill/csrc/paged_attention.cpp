// Paged attention over the KV cache in place, one query row at a time (CPU, float32 queries; the
// cache float32, float16, or int8 rows of D values and their float32 scale, see attention.py).
//
// Every (query token, kv head, context chunk) is computed on its own, reading its sequence's
// keys and values through the block table; the G query heads that share a kv head share each
// K/V read, and so do up to 8 consecutive rows of a prompt (one task, 8 G heads), each head with
// the same instructions it gets alone.
// A row's result depends only on its own query and its own context, never on the batch, the
// chunking of a prompt, its neighbours in a task or padding: batch invariance by construction.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention_work.h"
#include "fast_exp.h"
#include "quant_rows.h"  // has_vnni
#include "reduce16.h"

namespace {

using tokenmill::fast_exp512;
using tokenmill::kMaxHeadsInt8;  // query heads a task for qk_scores_i8

constexpr int kLanes = 16;  // fixed lane order: the same rounding whatever the build vectorizes

// the cache holds float32, float16 (at::Half) or int8; arithmetic is float32 either way
inline float val(const float* p, int64_t i) { return p[i]; }
inline float val(const at::Half* p, int64_t i) { return static_cast<float>(p[i]); }
inline float val(const int8_t* p, int64_t i) { return static_cast<float>(p[i]); }

using tokenmill::kScaled;
using tokenmill::row_scale;

template <typename C>
inline float dot(const float* a, const C* b, int64_t D) {
  float lanes[kLanes] = {0};
  for (int64_t d = 0; d < D; d += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = __builtin_fmaf(a[d + l], val(b, d + l), lanes[l]);
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n * p(r), |rel err| < 2e-7.
inline float fast_exp(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.4426950408889634f;          // x / ln 2
  const float n = static_cast<float>(static_cast<int32_t>(t - (t < 0)));  // floor
  const float r = (t - n) * 0.6931471805599453f;     // in [0, ln 2)
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f +
            r * (0.008333334f + r * (0.0013888889f + r * 0.0001984127f))))));
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}


__attribute__((target("avx512f")))
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f")))
inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((target("avx512f")))
inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// v weights of int8 rows: p * the row's scale (the softmax sums were taken before); n <= kChunk.
// The scales gathered once, then each head's row of weights in one (vectorized) pass.
template <typename C>
void scale_weights(const C* v, const int64_t* off, int64_t D, int64_t G, int64_t n, float* scores,
                   int64_t ld_scores) {
  if constexpr (kScaled<C>) {
    float vs[tokenmill::kChunk];
    for (int64_t j = 0; j < n; ++j) vs[j] = row_scale(v + off[j], D);
    for (int64_t g = 0; g < G; ++g) {
      float* s = scores + g * ld_scores;
      for (int64_t j = 0; j < n; ++j) s[j] *= vs[j];
    }
  }
}

// Scores of GN query heads (qs: (GN, D)) against 8 keys (rows), summed by reduce16 (two heads a
// call): each key row is loaded and converted once for the GN heads, 8 GN independent FMA chains.
template <typename C, int GN>
__attribute__((target("avx512f")))
void qk_tile(const float* qs, int64_t D, const C* const* rows, __m512* out) {
  __m512 acc[2 * ((GN + 1) / 2)][8];
  for (int g = 0; g < 2 * ((GN + 1) / 2); ++g)
    for (int i = 0; i < 8; ++i) acc[g][i] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    __m512 qv[GN];
    for (int g = 0; g < GN; ++g) qv[g] = _mm512_loadu_ps(qs + g * D + d);
    for (int i = 0; i < 8; ++i) {
      const __m512 kv = load16(rows[i] + d);
      for (int g = 0; g < GN; ++g) acc[g][i] = _mm512_fmadd_ps(qv[g], kv, acc[g][i]);
    }
  }
  for (int g = 0; g < GN; g += 2) out[g / 2] = tokenmill::reduce16(acc[g], tokenmill::AddPs());  // acc[g], acc[g + 1]: 16 vectors
}

// Scores of G query heads (qs: (G, D)) against n keys (rows at k + off[j]), 8 keys and up to 3
// heads at a time.
// Cache rows sit in 16-key blocks scattered over the cache, where the hardware prefetcher starts
// over: the rows of keys [j, j + 8) are asked for ahead (each row's first and last byte).
template <typename C>
inline void prefetch_rows(const C* base, const int64_t* off, int64_t j, int64_t n, int64_t bytes) {
  for (int64_t i = j; i < std::min(j + 8, n); ++i) {
    const char* row = reinterpret_cast<const char*>(base + off[i]);
    _mm_prefetch(row, _MM_HINT_T0);
    _mm_prefetch(row + bytes - 1, _MM_HINT_T0);
  }
}

constexpr int64_t kAhead = 32;  // keys

template <typename C>
__attribute__((target("avx512f")))
void qk_scores(const float* qs, int64_t G, int64_t D, const C* k, const C* v, const int64_t* off,
               int64_t n, float* scores, int64_t ld_scores) {
  const int64_t row_bytes = (D + (kScaled<C> ? 4 : 0)) * static_cast<int64_t>(sizeof(C));
  for (int64_t j = 0; j < kAhead; j += 8) prefetch_rows(k, off, j, n, row_bytes);
  for (int64_t j = 0; j < n; j += 8) {
    const int64_t m = std::min<int64_t>(8, n - j);
    prefetch_rows(k, off, j + kAhead, n, row_bytes);  // keys a few tiles on
    prefetch_rows(v, off, j, n, row_bytes);           // these keys' values, for P.V after
    const __mmask16 valid = static_cast<__mmask16>((1u << m) - 1);
    const C* rows[8];  // past the last key: the first key again (computed, not stored)
    for (int i = 0; i < 8; ++i) rows[i] = k + off[j + (i < m ? i : 0)];
    __m512 ks = _mm512_set1_ps(1.f);  // lanes i and 8 + i: key i's scale
    if constexpr (kScaled<C>) {
      float s[16];
      for (int i = 0; i < 8; ++i) s[i] = s[8 + i] = row_scale(rows[i], D);
      ks = _mm512_loadu_ps(s);
    }
    for (int64_t g0 = 0; g0 < G; g0 += 3) {
      const int gn = static_cast<int>(std::min<int64_t>(3, G - g0));
      __m512 out[2];
      switch (gn) {
        case 1: qk_tile<C, 1>(qs + g0 * D, D, rows, out); break;
        case 2: qk_tile<C, 2>(qs + g0 * D, D, rows, out); break;
        default: qk_tile<C, 3>(qs + g0 * D, D, rows, out);
      }
      for (int p = 0; p < (gn + 1) / 2; ++p) {  // lanes 0..7: head g0 + 2p, 8..15: the next
        __m512 sc = out[p];
        if constexpr (kScaled<C>) sc = _mm512_mul_ps(sc, ks);
        float* dst = scores + (g0 + 2 * p) * ld_scores + j;
        _mm512_mask_storeu_ps(dst, valid, sc);
        if (2 * p + 1 < gn)
          _mm512_mask_storeu_ps(dst + ld_scores - 8, static_cast<__mmask16>(valid << 8), sc);
      }
    }
  }
}

bool has_avx512_bw() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return yes;
}

// 16 rows of 16 int32 -> t[c] lane i = r[i] lane c (4 rounds of 16 shuffles)
__attribute__((target("avx512f")))
inline void transpose16(__m512i* r) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      a[8 * i + j] = _mm512_shuffle_i32x4(b[8 * i + j], b[8 * i + 4 + j], 0x88);
      a[8 * i + 4 + j] = _mm512_shuffle_i32x4(b[8 * i + j], b[8 * i + 4 + j], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(a[j], a[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(a[j], a[8 + j], 0xDD);
  }
}

// int8 keys against int8 queries (vpdpbusd), D a multiple of 64: each head's scaled query row is
// quantized like a cache row (qi = round(q * 127 / max|q|), scale max|q| / 127), so a score is
// float(qi . ki) * q scale * k scale with the integer dot product exact. (The query's rounding
// moved perplexity by +0.05% on the bundled text; llama.cpp rounds its queries to 8 bits for a
// q8_0 cache too.)
// 16 keys' 64-byte pieces are transposed in registers so that t[c] holds dims 4c..4c+3 of the 16
// keys: one vpdpbusd per 4 dims then adds 4 products into each key's own lane, no horizontal sums,
// and the transpose serves every head. vpdpbusd multiplies unsigned by signed bytes: the keys go
// in as k + 128 and 128 * sum(qi), once per head, comes off.
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void qk_scores_i8(const int8_t* qi, const float* qscale, int64_t G, int64_t D, const int8_t* k,
                  const int8_t* v, const int64_t* off, int64_t n, float* scores, int64_t ld_scores) {
  const int64_t row_bytes = D + 4;
  const __m512i k128 = _mm512_set1_epi8(static_cast<char>(0x80));
  int32_t corr[kMaxHeadsInt8];
  for (int64_t g = 0; g < G; ++g) {
    int32_t sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += qi[g * D + d];
    corr[g] = 128 * sum;
  }
  for (int64_t j = 0; j < kAhead; j += 8) prefetch_rows(k, off, j, n, row_bytes);
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t m = std::min<int64_t>(16, n - j);
    for (int64_t i = 0; i < 16; i += 8) {
      prefetch_rows(k, off, j + i + kAhead, n, row_bytes);  // keys a tile on
      prefetch_rows(v, off, j + i, n, row_bytes);           // these keys' values, for P.V after
    }
    const int8_t* rows[16];  // past the last key: the first key again (computed, not stored)
    float s[16];
    for (int i = 0; i < 16; ++i) {
      rows[i] = k + off[j + (i < m ? i : 0)];
      s[i] = row_scale(rows[i], D);
    }
    __m512i acc[kMaxHeadsInt8];
    for (int64_t g = 0; g < G; ++g) acc[g] = _mm512_setzero_si512();
    for (int64_t d = 0; d < D; d += 64) {
      __m512i t[16];
      for (int i = 0; i < 16; ++i) t[i] = _mm512_xor_si512(_mm512_loadu_si512(rows[i] + d), k128);
      transpose16(t);
      for (int64_t g = 0; g < G; ++g) {
        const int8_t* qg = qi + g * D + d;
        for (int c = 0; c < 16; ++c) {
          int32_t four;
          std::memcpy(&four, qg + 4 * c, 4);
          acc[g] = _mm512_dpbusd_epi32(acc[g], t[c], _mm512_set1_epi32(four));
        }
      }
    }
    const __m512 ks = _mm512_loadu_ps(s);
    const __mmask16 valid = static_cast<__mmask16>((1u << m) - 1);
    for (int64_t g = 0; g < G; ++g) {
      const __m512i dots = _mm512_sub_epi32(acc[g], _mm512_set1_epi32(corr[g]));
      const __m512 sc = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dots), _mm512_set1_ps(qscale[g])), ks);
      _mm512_mask_storeu_ps(scores + g * ld_scores + j, valid, sc);
    }
  }
}

// G query rows (G, D) -> qi (G, D) int8 and qscale (G,): see qk_scores_i8. The rounding of
// quantize_kv (attention.py) and of the cache rows: q * (127 / max|q|) to nearest even.
void quantize_queries(const float* qs, int64_t G, int64_t D, int8_t* qi, float* qscale) {
  for (int64_t g = 0; g < G; ++g) {
    if (has_avx512_bw()) {
      tokenmill::quantize_row_avx512(qs + g * D, D, qi + g * D, qscale + g);
      continue;
    }
    const float* q = qs + g * D;
    float amax = 0.f;
    for (int64_t d = 0; d < D; ++d) amax = std::max(amax, std::fabs(q[d]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    qscale[g] = amax / 127.f;
    for (int64_t d = 0; d < D; ++d)
      qi[g * D + d] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(q[d] * inv))));
  }
}

// out[g][d0 .. d0 + 16 DN) = sum_j p[g][j] v[j][...] for GN heads: GN x DN independent
// accumulators, so the FMA chains overlap (one chain per head stalled on FMA latency). Each lane
// still sums over j in order, as one chunk at a time would.
template <typename C, int GN, int DN>
__attribute__((target("avx512f")))
void pv_tile(const float* p, int64_t ld_p, const C* v, const int64_t* off, int64_t n, int64_t d0,
             float* out, int64_t ld_out, int64_t D) {
  __m512 acc[GN][DN];
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < DN; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const C* vrow = v + off[j] + d0;
    __m512 vv[DN];
    for (int c = 0; c < DN; ++c) vv[c] = load16(vrow + 16 * c);
    for (int g = 0; g < GN; ++g) {
      const __m512 w = _mm512_set1_ps(p[g * ld_p + j]);  // int8 rows: p * the row's scale already
      for (int c = 0; c < DN; ++c) acc[g][c] = _mm512_fmadd_ps(w, vv[c], acc[g][c]);
    }
  }
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < DN; ++c) _mm512_storeu_ps(out + g * ld_out + d0 + 16 * c, acc[g][c]);
}

template <typename C, int GN>
__attribute__((target("avx512f")))
void pv_heads(const float* p, int64_t ld_p, const C* v, const int64_t* off, int64_t n, int64_t D,
              float* out, int64_t ld_out) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) pv_tile<C, GN, 4>(p, ld_p, v, off, n, d0, out, ld_out, D);
  for (; d0 < D; d0 += 16) pv_tile<C, GN, 1>(p, ld_p, v, off, n, d0, out, ld_out, D);
}

// One (rows, kv head, chunk) task with AVX-512, D a multiple of 16: GR = R x G query heads, head
// g of row g / G, which sees keys j < n_row[g / G] (n_row ascending). qs: (GR, D) scaled queries
// (for an int8 cache, with VNNI and D a multiple of 64: qi and qscale, their int8 form, instead);
// k, v: this head's cache; key j's row at k + off[j]. The rows share each key's load, transpose
// and conversion; each head's numbers are those it gets alone (a key past its row's n weighs
// exactly 0 in P.V). Writes pr: GR x [unnormalized output (D), max, sum].
template <typename C>
__attribute__((target("avx512f")))
void chunk_avx512(const float* qs, const int8_t* qi, const float* qscale, int64_t GR, int64_t G,
                  int64_t D, const C* k, const C* v, const int64_t* off, const int64_t* n_row,
                  int64_t R, float* scores, int64_t ld_scores, float* pr) {
  const int64_t n_all = n_row[R - 1];
  if constexpr (kScaled<C>)
    qk_scores_i8(qi, qscale, GR, D, k, v, off, n_all, scores, ld_scores);
  else
    qk_scores(qs, GR, D, k, v, off, n_all, scores, ld_scores);
  for (int64_t g = 0; g < GR; ++g) {
    float* s = scores + g * ld_scores;
    const int64_t n = n_row[g / G];
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
    if (j < n) vmax = _mm512_mask_max_ps(vmax, (1u << (n - j)) - 1, vmax, _mm512_maskz_loadu_ps((1u << (n - j)) - 1, s + j));
    const float m = _mm512_reduce_max_ps(vmax);
    const __m512 vm = _mm512_set1_ps(m);
    __m512 vsum = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
      const __m512 e = fast_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
      _mm512_storeu_ps(s + j, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    if (j < n) {
      const __mmask16 mask = (1u << (n - j)) - 1;
      const __m512 e = fast_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + j), vm));
      _mm512_mask_storeu_ps(s + j, mask, e);
      vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(mask, e));
    }
    std::fill(s + n, s + n_all, 0.f);  // keys past this row's context: weight 0 in P.V
    float* out = pr + g * (D + 2);
    out[D] = m;
    out[D + 1] = _mm512_reduce_add_ps(vsum);
  }
  scale_weights(v, off, D, GR, n_all, scores, ld_scores);  // int8: once, before every head's P.V
  for (int64_t g0 = 0; g0 < GR; g0 += 4) {
    const float* p = scores + g0 * ld_scores;
    float* out = pr + g0 * (D + 2);
    switch (std::min<int64_t>(4, GR - g0)) {
      case 1: pv_heads<C, 1>(p, ld_scores, v, off, n_all, D, out, D + 2); break;
      case 2: pv_heads<C, 2>(p, ld_scores, v, off, n_all, D, out, D + 2); break;
      case 3: pv_heads<C, 3>(p, ld_scores, v, off, n_all, D, out, D + 2); break;
      default: pv_heads<C, 4>(p, ld_scores, v, off, n_all, D, out, D + 2);
    }
  }
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

std::atomic<bool> portable_only{false};  // tests: the portable loop on any machine

}  // namespace

namespace tokenmill {

// Rows a task may hold: up to kGroupRows, and kMaxHeads query heads (G a row) in all; with int8
// caches half as many rows, and kMaxHeadsInt8 heads (qk_scores_i8 keeps every head's sums in
// registers).
template <typename C>
inline int64_t group_rows(int64_t G) {
  const int64_t rows = kScaled<C> ? kGroupRows / 2 : kGroupRows, heads = kScaled<C> ? kMaxHeadsInt8 : kMaxHeads;
  return std::max<int64_t>(1, std::min<int64_t>(rows, heads / G));
}

template <typename C>
void AttentionWork<C>::plan() {
  first_task.assign(T + 1, 0);
  first_chunk.assign(T, 0);
  for (int64_t t = 0; t < T; ++t) {
    first_chunk[t] = first_key(t) / kChunk;
    first_task[t + 1] = first_task[t] + (row_ctx[t] + kChunk - 1) / kChunk - first_chunk[t];
  }
  const int64_t chunks = first_task[T], G = Hq / Hkv;
  // Rows in groups: consecutive rows of one sequence (a prompt's, or a draft's), one key more each,
  // as many chunks each, up to group_rows(G).
  const int64_t most = group_rows<C>(G);
  unit_row.clear();
  unit_rows.clear();
  unit_chunk.clear();
  for (int64_t t = 0; t < T;) {
    int64_t r = 1;
    const int64_t nc = first_task[t + 1] - first_task[t];
    while (r < most && t + r < T && row_seq[t + r] == row_seq[t] && row_ctx[t + r] == row_ctx[t + r - 1] + 1 &&
           first_task[t + r + 1] - first_task[t + r] == nc && first_chunk[t + r] == first_chunk[t])
      ++r;
    for (int64_t c = 0; c < nc; ++c) {
      unit_row.push_back(t);
      unit_rows.push_back(r);
      unit_chunk.push_back(c);
    }
    t += r;
  }
  part.resize(chunks * Hkv * G * (D + 2));
}

template <typename C>
AttentionScratch AttentionWork<C>::new_scratch() const {
  const int64_t GR = Hq / Hkv * group_rows<C>(Hq / Hkv);
  return {std::vector<float>(GR * kChunk), std::vector<float>(GR * D), std::vector<int64_t>(kChunk),
          std::vector<float>(GR * (D + 2)), std::vector<int8_t>(GR * D), std::vector<float>(GR)};
}

// Tasks in zigzag order (0, n-1, 1, n-2, ...): a static split hands each thread one contiguous
// range, and a prompt's later rows see more keys, so in order the last thread got most of the
// work (3x the first's for a 512-token prompt on 2 threads).
template <typename C>
void AttentionWork<C>::run_task(int64_t z, AttentionScratch& scratch) const {
  const int64_t G = Hq / Hkv, stride = G * (D + 2), n_tasks = tasks();
  float* scores = scratch.scores.data();
  float* qs = scratch.qs.data();
  int64_t* off = scratch.off.data();
  const int64_t i = z % 2 == 0 ? z / 2 : n_tasks - 1 - z / 2;
  const int64_t u = i / Hkv, h = i % Hkv, t0 = unit_row[u], R = unit_rows[u], c = unit_chunk[u];
  const int64_t j0 = (first_chunk[t0] + c) * kChunk;
  int64_t n_row[kGroupRows], s_row[kGroupRows];  // keys [s_row, n_row) of the chunk: the row's
  for (int64_t r = 0; r < R; ++r) {
    n_row[r] = std::min(row_ctx[t0 + r], j0 + kChunk) - j0;
    s_row[r] = std::max<int64_t>(0, first_key(t0 + r) - j0);
  }
  const int64_t j1 = j0 + n_row[R - 1];
  const int64_t* table = block_tables + row_seq[t0] * MB;
  for (int64_t j = j0; j < j1; j += BS) {  // j0 and kChunk are multiples of BS
    const int64_t base = table[j / BS] * BS * RS;
    for (int64_t o = 0; o < std::min(BS, j1 - j); ++o) off[j - j0 + o] = base + o * RS;
  }
  for (int64_t r = 0; r < R; ++r) {
    const float* qrow = q + (t0 + r) * ldq + h * G * D;
    for (int64_t x = 0; x < G * D; ++x) qs[r * G * D + x] = qrow[x] * scale;
  }
  const C* kh = k + h * NB * BS * RS;
  const C* vh = v + h * NB * BS * RS;
  int8_t* qi = scratch.qi.data();
  float* qscale = scratch.qscale.data();
  if constexpr (kScaled<C>) quantize_queries(qs, R * G, D, qi, qscale);  // see qk_scores_i8
  auto part_of = [&](int64_t r) { return part.data() + ((first_task[t0 + r] + c) * Hkv + h) * stride; };
  // The path is chosen by the machine and the layer, never by the rows: a windowed layer's
  // chunks may be masked, and scores may be soft-capped, which only the AVX2 path and the
  // portable loop take.
  const bool avx512 = window == 0 && softcap == 0.f && has_avx512() && !portable_only &&
                      (!kScaled<C> || (tokenmill::has_vnni() && D % 64 == 0 && R * G <= kMaxHeadsInt8));
  if (!portable_only && (avx512 || tokenmill::has_avx2())) {
    float* pr = scratch.acc.data();  // (R G) x [D, max, sum], then each row's to its place
    if (avx512)
      chunk_avx512(qs, qi, qscale, R * G, G, D, kh, vh, off, n_row, R, scores, kChunk, pr);
    else
      tokenmill::chunk_avx2(qs, qi, qscale, R * G, G, D, kh, vh, off, s_row, n_row, R, softcap, scores,
                            kChunk, pr);
    for (int64_t r = 0; r < R; ++r) std::copy(pr + r * stride, pr + (r + 1) * stride, part_of(r));
    return;
  }
  for (int64_t r = 0; r < R; ++r) {  // the portable loop, a row at a time (keys [s, n) of the chunk)
    const int64_t n = n_row[r], s0 = s_row[r];
    float* pr = part_of(r);
    const float* qr = qs + r * G * D;
    const int8_t* qir = qi + r * G * D;
    for (int64_t j = 0; j < n; ++j) {
      const C* krow = kh + off[j];
      for (int64_t g = 0; g < G; ++g) {
        float sc;
        if constexpr (kScaled<C>) {  // the integer dot product, as qk_scores_i8
          int32_t dot_i = 0;
          for (int64_t d = 0; d < D; ++d) dot_i += static_cast<int32_t>(qir[g * D + d]) * krow[d];
          sc = static_cast<float>(dot_i) * qscale[r * G + g] * row_scale(krow, D);
        } else {
          sc = dot(qr + g * D, krow, D);
        }
        scores[g * kChunk + j] = softcap > 0.f ? softcap * std::tanh(sc / softcap) : sc;
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      float* s = scores + g * kChunk;
      float m = s[s0];
      for (int64_t j = s0 + 1; j < n; ++j) m = std::max(m, s[j]);
      float sum = 0.f;
      for (int64_t j = s0; j < n; ++j) {
        s[j] = fast_exp(s[j] - m);
        sum += s[j];
      }
      pr[g * (D + 2) + D] = m;
      pr[g * (D + 2) + D + 1] = sum;
      std::fill(pr + g * (D + 2), pr + g * (D + 2) + D, 0.f);
    }
    scale_weights(vh, off + s0, D, G, n - s0, scores + s0, kChunk);
    for (int64_t j = s0; j < n; ++j) {
      const C* vrow = vh + off[j];
      for (int64_t g = 0; g < G; ++g) {
        const float p = scores[g * kChunk + j];
        float* a = pr + g * (D + 2);
        for (int64_t d = 0; d < D; ++d) a[d] = __builtin_fmaf(p, val(vrow, d), a[d]);
      }
    }
  }
}

// merge a row's chunks in order: weights exp(m_c - max m), the same whatever the batch
template <typename C>
void AttentionWork<C>::merge(int64_t i, AttentionScratch& scratch) const {
  const int64_t G = Hq / Hkv, stride = G * (D + 2);
  const int64_t t = i / Hkv, h = i % Hkv;
  float* acc = scratch.acc.data();
  for (int64_t g = 0; g < G; ++g) {
    auto at_chunk = [&](int64_t c) { return part.data() + (c * Hkv + h) * stride + g * (D + 2); };
    float m = at_chunk(first_task[t])[D];
    for (int64_t c = first_task[t] + 1; c < first_task[t + 1]; ++c) m = std::max(m, at_chunk(c)[D]);
    std::fill(acc, acc + D, 0.f);
    float total = 0.f;
    for (int64_t c = first_task[t]; c < first_task[t + 1]; ++c) {
      const float* pc = at_chunk(c);
      const float w = fast_exp(pc[D] - m);
      total += w * pc[D + 1];
      for (int64_t d = 0; d < D; ++d) acc[d] = __builtin_fmaf(w, pc[d], acc[d]);
    }
    float* orow = out + t * ldo + (h * G + g) * D;
    for (int64_t d = 0; d < D; ++d) orow[d] = acc[d] / total;
  }
}

template <typename C>
void AttentionWork<C>::describe(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& rseq, const at::Tensor& rctx,
                                const at::Tensor& tables, int64_t rows, int64_t q_heads,
                                int64_t head_dim, double softmax_scale) {
  Hkv = k_cache.size(0), RS = k_cache.size(3), T = rows, Hq = q_heads, D = head_dim;
  TORCH_CHECK(D % kLanes == 0, "head_dim must be a multiple of 16");
  TORCH_CHECK(RS == D + (kScaled<C> ? 4 : 0), "cache rows do not match head_dim");
  TORCH_CHECK(kChunk % k_cache.size(2) == 0, "block_size must divide 256");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(Hq % Hkv == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(rseq.numel() == T && rctx.numel() == T, "one row_seq and row_ctx entry per row");
  k = k_cache.data_ptr<C>();
  v = v_cache.data_ptr<C>();
  NB = k_cache.size(1), BS = k_cache.size(2), MB = tables.size(1);
  row_seq = rseq.data_ptr<int64_t>();
  row_ctx = rctx.data_ptr<int64_t>();
  block_tables = tables.data_ptr<int64_t>();
  scale = static_cast<float>(softmax_scale);
}

template struct AttentionWork<float>;
template struct AttentionWork<at::Half>;
template struct AttentionWork<int8_t>;

}  // namespace tokenmill

// q: (T, Hq, D); k_cache, v_cache: (Hkv, num_blocks, block_size, RS); row_seq: (T,) row of
// block_tables for each query; row_ctx: (T,) keys it may see (its position + 1);
// block_tables: (S, max_blocks). Returns (T, Hq, D).
template <typename C>
at::Tensor attention_rows(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                             at::Tensor row_seq, at::Tensor row_ctx,
                             at::Tensor block_tables, double scale, int64_t window, double softcap) {
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  if (q.stride(2) != 1 || q.stride(1) != D) q = q.contiguous();  // rows may be apart (a qkv's q)
  auto out = at::empty({T, Hq, D}, q.options());
  tokenmill::AttentionWork<C> work;
  work.describe(k_cache, v_cache, row_seq, row_ctx, block_tables, T, Hq, D, scale);
  work.window = window;
  work.softcap = static_cast<float>(softcap);
  work.q = q.data_ptr<float>(), work.ldq = q.stride(0);
  work.out = out.data_ptr<float>(), work.ldo = Hq * D;
  work.plan();
  at::parallel_for(0, work.tasks(), 1, [&](int64_t begin, int64_t end) {
    tokenmill::AttentionScratch scratch = work.new_scratch();
    for (int64_t z = begin; z < end; ++z) work.run_task(z, scratch);
  });
  at::parallel_for(0, work.merges(), 4, [&](int64_t begin, int64_t end) {
    tokenmill::AttentionScratch scratch = work.new_scratch();
    for (int64_t i = begin; i < end; ++i) work.merge(i, scratch);
  });
  return out;
}

// q: (T, Hq, D) float32; k_cache, v_cache: (Hkv, num_blocks, block_size, D) float32 or float16,
// or (Hkv, num_blocks, block_size, D + 4) int8 rows with their scales. window > 0: each row sees
// only its last `window` keys (a sliding-window layer); softcap > 0: each score s becomes
// softcap * tanh(s / softcap) (gemma2).
at::Tensor paged_attention_rows(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                   at::Tensor row_seq, at::Tensor row_ctx,
                                   at::Tensor block_tables, double scale, int64_t window,
                                   double softcap) {
  TORCH_CHECK(q.dtype() == at::kFloat, "q must be float32");
  TORCH_CHECK(k_cache.dtype() == v_cache.dtype(), "k and v caches differ in dtype");
  TORCH_CHECK(window >= 0, "window must be 0 (none) or positive");
  TORCH_CHECK(softcap >= 0, "softcap must be 0 (none) or positive");
  if (k_cache.dtype() == at::kHalf)
    return attention_rows<at::Half>(q, k_cache, v_cache, row_seq, row_ctx, block_tables, scale, window, softcap);
  if (k_cache.dtype() == at::kChar)
    return attention_rows<int8_t>(q, k_cache, v_cache, row_seq, row_ctx, block_tables, scale, window, softcap);
  TORCH_CHECK(k_cache.dtype() == at::kFloat, "the cache must be float32, float16 or int8");
  return attention_rows<float>(q, k_cache, v_cache, row_seq, row_ctx, block_tables, scale, window, softcap);
}

// Tests: true runs every task in the portable loop (the machine's vector paths are not taken);
// returns the previous setting.
bool attention_portable_only(bool on) { return portable_only.exchange(on); }
