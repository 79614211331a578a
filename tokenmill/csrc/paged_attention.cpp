// Paged attention over the KV cache in place, one query row at a time (CPU, float32).
//
// Every (query token, kv head, context chunk) is computed on its own, reading its sequence's
// keys and values through the block table; the G query heads that share a kv head share each
// K/V read.
// A row's result depends only on its own query and its own context, never on the batch, the
// chunking of a prompt or padding: batch invariance by construction.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;  // fixed lane order: the same rounding whatever the build vectorizes

// the cache holds float32 or float16 (at::Half); arithmetic is float32 either way
inline float val(const float* p, int64_t i) { return p[i]; }
inline float val(const at::Half* p, int64_t i) { return static_cast<float>(p[i]); }

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


// The same exp with AVX-512: 2^n by vscalefps, n = floor(t).
__attribute__((target("avx512f")))
inline __m512 fast_exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(0.0001984127f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.0013888889f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.008333334f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.041666668f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.16666667f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

__attribute__((target("avx512f")))
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f")))
inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// One (row, kv head, chunk) task with AVX-512, D a multiple of 16. qs: (G, D) scaled queries;
// k, v: this head's cache rows (num_blocks * BS, D); keys j0..j1 through table.
// Writes pr: G x [unnormalized output (D), max, sum].
template <typename C>
__attribute__((target("avx512f")))
void chunk_avx512(const float* qs, int64_t G, int64_t D, const C* k, const C* v,
                  const int64_t* table, int64_t BS, int64_t j0, int64_t j1, float* scores,
                  int64_t ld_scores, float* pr) {
  const int64_t n = j1 - j0;
  for (int64_t j = j0; j < j1; ++j) {
    const C* krow = k + (table[j / BS] * BS + j % BS) * D;
    for (int64_t g = 0; g < G; ++g) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(qs + g * D + d), load16(krow + d), acc);
      scores[g * ld_scores + j - j0] = _mm512_reduce_add_ps(acc);
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores + g * ld_scores;
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
    float* out = pr + g * (D + 2);
    out[D] = m;
    out[D + 1] = _mm512_reduce_add_ps(vsum);
    for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  }
  for (int64_t d = 0; d < D; d += 16) {  // per 16 output lanes, all keys, G heads at a time
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
      const int64_t gn = std::min<int64_t>(4, G - g0);
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t j = j0; j < j1; ++j) {
        const __m512 vv = load16(v + (table[j / BS] * BS + j % BS) * D + d);
        for (int64_t g = 0; g < gn; ++g)
          acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(scores[(g0 + g) * ld_scores + j - j0]), vv, acc[g]);
      }
      for (int64_t g = 0; g < gn; ++g) _mm512_storeu_ps(pr + (g0 + g) * (D + 2) + d, acc[g]);
    }
  }
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

}  // namespace

// Split-K ("flash decoding"): a row's context is cut into chunks of kChunk keys at fixed
// positions (0, kChunk, 2 kChunk, ...), each chunk one task (so one long row keeps every thread
// busy), then the chunks are merged in order. Chunk edges depend only on the row's own length.
constexpr int64_t kChunk = 256;

// q: (T, Hq, D); k_cache, v_cache: (Hkv, num_blocks, block_size, D); row_seq: (T,) row of
// block_tables for each query; row_ctx: (T,) keys it may see (its position + 1);
// block_tables: (S, max_blocks). Returns (T, Hq, D).
template <typename C>
at::Tensor attention_rows(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                             at::Tensor row_seq, at::Tensor row_ctx,
                             at::Tensor block_tables, double scale) {
  q = q.contiguous();
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hkv = k_cache.size(0), NB = k_cache.size(1), BS = k_cache.size(2);
  const int64_t G = Hq / Hkv, MB = block_tables.size(1);
  TORCH_CHECK(D % kLanes == 0, "head_dim must be a multiple of 16");
  auto out = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const C* kp = k_cache.data_ptr<C>();
  const C* vp = v_cache.data_ptr<C>();
  const int64_t* rs = row_seq.data_ptr<int64_t>();
  const int64_t* rc = row_ctx.data_ptr<int64_t>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);

  // task list: (row, chunk) for every chunk of every row, times Hkv heads
  std::vector<int64_t> first_task(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) first_task[t + 1] = first_task[t] + (rc[t] + kChunk - 1) / kChunk;
  const int64_t chunks = first_task[T];
  const int64_t stride = G * (D + 2);  // per (chunk, head): G x [acc (D), max, sum]
  std::vector<float> part(chunks * Hkv * stride);
  std::vector<int64_t> task_row(chunks);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = first_task[t]; c < first_task[t + 1]; ++c) task_row[c] = t;

  const bool fast = has_avx512();
  at::parallel_for(0, chunks * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(G * kChunk), qs(G * D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = i / Hkv, h = i % Hkv, t = task_row[c];
      const int64_t j0 = (c - first_task[t]) * kChunk, j1 = std::min(rc[t], j0 + kChunk), n = j1 - j0;
      const int64_t* table = bt + rs[t] * MB;
      const float* qrow = qp + (t * Hq + h * G) * D;
      for (int64_t x = 0; x < G * D; ++x) qs[x] = qrow[x] * sc;
      float* pr = part.data() + i * stride;
      if (fast) {
        chunk_avx512(qs.data(), G, D, kp + h * NB * BS * D, vp + h * NB * BS * D, table, BS, j0, j1,
                     scores.data(), kChunk, pr);
        continue;
      }
      for (int64_t j = j0; j < j1; ++j) {
        const C* krow = kp + ((h * NB + table[j / BS]) * BS + j % BS) * D;
        for (int64_t g = 0; g < G; ++g) scores[g * kChunk + j - j0] = dot(qs.data() + g * D, krow, D);
      }
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * kChunk;
        float m = s[0];
        for (int64_t j = 1; j < n; ++j) m = std::max(m, s[j]);
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          s[j] = fast_exp(s[j] - m);
          sum += s[j];
        }
        pr[g * (D + 2) + D] = m;
        pr[g * (D + 2) + D + 1] = sum;
        std::fill(pr + g * (D + 2), pr + g * (D + 2) + D, 0.f);
      }
      for (int64_t j = j0; j < j1; ++j) {
        const C* vrow = vp + ((h * NB + table[j / BS]) * BS + j % BS) * D;
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[g * kChunk + j - j0];
          float* a = pr + g * (D + 2);
          for (int64_t d = 0; d < D; ++d) a[d] = __builtin_fmaf(p, val(vrow, d), a[d]);
        }
      }
    }
  });

  // merge each row's chunks in order: weights exp(m_c - max m), the same whatever the batch
  at::parallel_for(0, T * Hkv, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i / Hkv, h = i % Hkv;
      for (int64_t g = 0; g < G; ++g) {
        auto at_chunk = [&](int64_t c) { return part.data() + (c * Hkv + h) * stride + g * (D + 2); };
        float m = at_chunk(first_task[t])[D];
        for (int64_t c = first_task[t] + 1; c < first_task[t + 1]; ++c) m = std::max(m, at_chunk(c)[D]);
        std::fill(acc.begin(), acc.end(), 0.f);
        float total = 0.f;
        for (int64_t c = first_task[t]; c < first_task[t + 1]; ++c) {
          const float* pc = at_chunk(c);
          const float w = fast_exp(pc[D] - m);
          total += w * pc[D + 1];
          for (int64_t d = 0; d < D; ++d) acc[d] = __builtin_fmaf(w, pc[d], acc[d]);
        }
        float* orow = op + (t * Hq + h * G + g) * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = acc[d] / total;
      }
    }
  });
  return out;
}

// q: (T, Hq, D) float32; k_cache, v_cache: (Hkv, num_blocks, block_size, D), float32 or float16.
at::Tensor paged_attention_rows(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                   at::Tensor row_seq, at::Tensor row_ctx,
                                   at::Tensor block_tables, double scale) {
  TORCH_CHECK(q.dtype() == at::kFloat, "q must be float32");
  TORCH_CHECK(k_cache.dtype() == v_cache.dtype(), "k and v caches differ in dtype");
  if (k_cache.dtype() == at::kHalf)
    return attention_rows<at::Half>(q, k_cache, v_cache, row_seq, row_ctx, block_tables, scale);
  TORCH_CHECK(k_cache.dtype() == at::kFloat, "the cache must be float32 or float16");
  return attention_rows<float>(q, k_cache, v_cache, row_seq, row_ctx, block_tables, scale);
}
