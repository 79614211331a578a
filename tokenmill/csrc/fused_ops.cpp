// Small fused row ops for the CPU float32 path (one call instead of 5-20 PyTorch ops each, which
// at decode batch sizes cost more in dispatch than in arithmetic). All are per row, so a row's
// result never depends on the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fast_exp.h"
#include "quant_rows.h"
#include "row_ops.h"

namespace {

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kFloat && t.stride(1) == 1,
              name, " must be (T, H) float32 with contiguous rows");
}

}  // namespace

namespace tokenmill {

namespace {

// sum of x^2 in float64: 16 values a step in two accumulators (one long chain of scalar adds was
// ~2.5% of a 512-token prompt), then the tail
__attribute__((target("avx512f")))
double sum_squares_avx512(const float* x, int64_t H) {
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= H; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    a0 = _mm512_fmadd_pd(lo, lo, a0);
    a1 = _mm512_fmadd_pd(hi, hi, a1);
  }
  double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  for (; i < H; ++i) ss += double(x[i]) * double(x[i]);
  return ss;
}

// the same with AVX2: 16 values a step in four accumulators of 4 (the scalar chain took 5% of a
// Gemma 3 prompt, whose layers have four norms)
__attribute__((target("avx2,fma")))
double sum_squares_avx2(const float* x, int64_t H) {
  __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t i = 0;
  for (; i + 16 <= H; i += 16)
    for (int k = 0; k < 4; ++k) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * k));
      a[k] = _mm256_fmadd_pd(v, v, a[k]);
    }
  const __m256d s = _mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3]));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  double ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  for (; i < H; ++i) ss += double(x[i]) * double(x[i]);
  return ss;
}

}  // namespace

// out = x * rsqrt(mean(x^2) + eps) * w, summed in float64 (so the mean is exact to float).
void rms_norm_row(const float* x, const float* w, int64_t H, float eps, float* out) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  double ss = 0.0;
  if (avx512) {
    ss = sum_squares_avx512(x, H);
  } else if (avx2) {
    ss = sum_squares_avx2(x, H);
  } else {
    for (int64_t i = 0; i < H; ++i) ss += double(x[i]) * double(x[i]);
  }
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / H) + eps);
  for (int64_t i = 0; i < H; ++i) out[i] = w[i] * (x[i] * inv);
}

void add_rms_norm_row(const float* x, float* r, const float* w, int64_t H, float eps, float* out) {
  for (int64_t i = 0; i < H; ++i) r[i] = r[i] + x[i];
  rms_norm_row(r, w, H, eps, out);
}

}  // namespace tokenmill

// x: (T, H) -> RMSNorm(x) * w, a new (T, H) tensor.
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps) {
  check_rows(x, "x");
  const int64_t T = x.size(0), H = x.size(1);
  auto out = at::empty({T, H}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t ld = x.stride(0);
  at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) tokenmill::rms_norm_row(xp + t * ld, wp, H, float(eps), op + t * H);
  });
  return out;
}

// qkv: (T, (Hq + 2 Hkv) D) with contiguous rows; each query head's D values normed in place with
// wq (D,), each key head's with wk (qwen3 / gemma3 q and k norms): rms_norm's numbers for those
// (T * heads, D) rows, without copying q and k out and back.
void rms_norm_heads_(at::Tensor qkv, at::Tensor wq, at::Tensor wk, int64_t Hq, int64_t Hkv, double eps) {
  check_rows(qkv, "qkv");
  const int64_t T = qkv.size(0), D = wq.numel();
  TORCH_CHECK(wk.numel() == D && qkv.size(1) == (Hq + 2 * Hkv) * D && wq.scalar_type() == at::kFloat &&
              wk.scalar_type() == at::kFloat && wq.is_contiguous() && wk.is_contiguous(),
              "rms_norm_heads_: qkv (T, (Hq + 2 Hkv) D), wq and wk (D,) float32");
  float* p = qkv.data_ptr<float>();
  const float *q_w = wq.data_ptr<float>(), *k_w = wk.data_ptr<float>();
  const int64_t ld = qkv.stride(0);
  at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < Hq + Hkv; ++h) {
        float* head = p + t * ld + h * D;
        tokenmill::rms_norm_row(head, h < Hq ? q_w : k_w, D, float(eps), head);  // in place: reads first
      }
  });
}

// residual += x (in place, both (T, H)); returns RMSNorm(residual) * w.
at::Tensor add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor w, double eps) {
  check_rows(x, "x");
  check_rows(residual, "residual");
  const int64_t T = x.size(0), H = x.size(1);
  auto out = at::empty({T, H}, x.options());
  const float* xp = x.data_ptr<float>();
  float* rp = residual.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t ldx = x.stride(0), ldr = residual.stride(0);
  at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      tokenmill::add_rms_norm_row(xp + t * ldx, rp + t * ldr, wp, H, float(eps), op + t * H);
  });
  return out;
}

namespace {

inline void silu_mul_scalar(const float* g, const float* u, int64_t I, float* o) {
  for (int64_t i = 0; i < I; ++i) o[i] = (g[i] / (1.0f + std::exp(-g[i]))) * u[i];
}

// 16 at a time with fast_exp512 (libm's expf one by one was ~8% of a prompt's time)
__attribute__((target("avx512f")))
void silu_mul_row_avx512(const float* g, const float* u, int64_t I, float* o) {
  int64_t i = 0;
  for (; i + 16 <= I; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512 e = tokenmill::fast_exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    const __m512 s = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_storeu_ps(o + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
  }
  silu_mul_scalar(g + i, u + i, I - i, o + i);
}

}  // namespace

void tokenmill::silu_mul_row(const float* gate_up, int64_t I, float* out) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512)
    silu_mul_row_avx512(gate_up, gate_up + I, I, out);
  else
    silu_mul_scalar(gate_up, gate_up + I, I, out);
}

namespace {

// gelu with tanh (GeGLU): 0.5 x (1 + tanh(y)), y = sqrt(2 / pi) (x + 0.044715 x^3), which is
// x / (1 + exp(-2 y)): 8 at a time with fast_exp256, the row's last few (and CPUs without AVX2)
// with libm's exp. (at::gelu took 5% of a Gemma 3 prompt, and a pass more for the product.)
constexpr float kGeluC0 = -2.0f * 0.7978845608028654f, kGeluC1 = kGeluC0 * 0.044715f;

inline float gelu_tanh(float x) { return x / (1.0f + std::exp(x * (kGeluC0 + kGeluC1 * (x * x)))); }

__attribute__((target("avx2,fma")))
void gelu_mul_row_avx2(const float* g, const float* u, int64_t I, float* o) {
  int64_t i = 0;
  for (; i + 8 <= I; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 z = _mm256_mul_ps(x, _mm256_add_ps(_mm256_set1_ps(kGeluC0),
                                                    _mm256_mul_ps(_mm256_set1_ps(kGeluC1), _mm256_mul_ps(x, x))));
    const __m256 y = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), tokenmill::fast_exp256(z)));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(y, _mm256_loadu_ps(u + i)));
  }
  for (; i < I; ++i) o[i] = gelu_tanh(g[i]) * u[i];
}

// gate_up: (T, 2I) = [gate | up] -> act(gate) * up, (T, I), act(gate, up, I, out) a row's op
template <typename Act>
at::Tensor gated(at::Tensor gate_up, Act act) {
  check_rows(gate_up, "gate_up");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  auto out = at::empty({T, I}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t ld = gate_up.stride(0);
  at::parallel_for(0, T, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) act(gp + t * ld, gp + t * ld + I, I, op + t * I);
  });
  return out;
}

}  // namespace

// gate_up: (T, 2I) = [gate | up] -> silu(gate) * up, (T, I).
at::Tensor silu_mul(at::Tensor gate_up) {
  return gated(gate_up, [](const float* g, const float*, int64_t I, float* o) { tokenmill::silu_mul_row(g, I, o); });
}

// gate_up: (T, 2I) = [gate | up] -> gelu_tanh(gate) * up, (T, I) (GeGLU).
at::Tensor gelu_mul(at::Tensor gate_up) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return gated(gate_up, [](const float* g, const float* u, int64_t I, float* o) {
    if (avx2) {
      gelu_mul_row_avx2(g, u, I, o);
    } else {
      for (int64_t i = 0; i < I; ++i) o[i] = gelu_tanh(g[i]) * u[i];
    }
  });
}

template <typename C>
void store_row(const float* src, int64_t D, C* dst) {
  for (int64_t i = 0; i < D; ++i) dst[i] = static_cast<C>(src[i]);  // float16: round to nearest
}

// int8 cache row: D values, then their float32 scale (attention.py quantize_kv, same rounding)
template <>
void store_row<int8_t>(const float* src, int64_t D, int8_t* dst) {
  float scale;
  if (__builtin_cpu_supports("avx512bw")) {
    tokenmill::quantize_row_avx512(src, D, dst, &scale);
  } else {
    float amax = 0.f;
    for (int64_t i = 0; i < D; ++i) amax = std::max(amax, std::fabs(src[i]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    scale = amax / 127.f;
    for (int64_t i = 0; i < D; ++i)
      dst[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(src[i] * inv))));
  }
  std::memcpy(dst + D, &scale, sizeof scale);
}

template <typename C>
void tokenmill::rope_and_cache_row(float* row, int64_t pos, const float* cos, const float* sin,
                                   int64_t Hq, int64_t Hkv, int64_t D, C* kc, C* vc, int64_t slots,
                                   int64_t slot, float* tmp) {
  const int64_t half = D / 2, RS = std::is_same_v<C, int8_t> ? D + 4 : D;
  const float* c = cos + pos * D;
  const float* s = sin + pos * D;
  for (int64_t h = 0; h < Hq + Hkv; ++h) {  // q heads, then k heads
    float* x = row + h * D;
    for (int64_t i = 0; i < half; ++i) {
      tmp[i] = x[i] * c[i] + (-x[i + half]) * s[i];
      tmp[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
    std::copy(tmp, tmp + D, x);
  }
  for (int64_t h = 0; h < Hkv; ++h) {
    store_row(row + (Hq + h) * D, D, kc + (h * slots + slot) * RS);
    store_row(row + (Hq + Hkv + h) * D, D, vc + (h * slots + slot) * RS);
  }
}

template void tokenmill::rope_and_cache_row<float>(float*, int64_t, const float*, const float*, int64_t,
                                                   int64_t, int64_t, float*, float*, int64_t, int64_t, float*);
template void tokenmill::rope_and_cache_row<at::Half>(float*, int64_t, const float*, const float*, int64_t,
                                                      int64_t, int64_t, at::Half*, at::Half*, int64_t, int64_t,
                                                      float*);
template void tokenmill::rope_and_cache_row<int8_t>(float*, int64_t, const float*, const float*, int64_t,
                                                    int64_t, int64_t, int8_t*, int8_t*, int64_t, int64_t, float*);

// qkv: (T, (Hq + 2 Hkv) * D), rows [q heads | k heads | v heads]. Rotates q and k in place
// ("rotate half" layout: x * cos + rotate_half(x) * sin, the same two products and one add
// per element as the PyTorch path, so bitwise equal) and writes k, v into the caches
// (Hkv, num_blocks * block_size, D), float32 or float16 (or int8 rows of D + 4 bytes), at
// slot_mapping (T,).
// cos, sin: (max_position, D).
template <typename C>
void rope_and_cache_impl(at::Tensor qkv, at::Tensor positions, at::Tensor cos,
                    at::Tensor sin, at::Tensor k_cache, at::Tensor v_cache,
                    at::Tensor slot_mapping, int64_t Hq, int64_t Hkv) {
  check_rows(qkv, "qkv");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  const int64_t RS = k_cache.size(-1), D = std::is_same_v<C, int8_t> ? RS - 4 : RS;
  const int64_t T = qkv.size(0);
  TORCH_CHECK(qkv.size(1) == (Hq + 2 * Hkv) * D, "qkv width does not match the heads");
  const int64_t slots = k_cache.numel() / (Hkv * RS);
  float* base = qkv.data_ptr<float>();
  const int64_t ld = qkv.stride(0);
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  C* kc = k_cache.data_ptr<C>();
  C* vc = v_cache.data_ptr<C>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sm[t] >= 0 && sm[t] < slots, "slot out of range");
  at::parallel_for(0, T, 4, [&](int64_t t0, int64_t t1) {
    std::vector<float> tmp(D);
    for (int64_t t = t0; t < t1; ++t)
      tokenmill::rope_and_cache_row(base + t * ld, pos[t], cp, sp, Hq, Hkv, D, kc, vc, slots, sm[t],
                                    tmp.data());
  });
}

void rope_and_cache(at::Tensor qkv, at::Tensor positions, at::Tensor cos,
                    at::Tensor sin, at::Tensor k_cache, at::Tensor v_cache,
                    at::Tensor slot_mapping, int64_t Hq, int64_t Hkv) {
  TORCH_CHECK(k_cache.dtype() == v_cache.dtype(), "k and v caches differ in dtype");
  if (k_cache.scalar_type() == at::kHalf)
    return rope_and_cache_impl<at::Half>(qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, Hq, Hkv);
  if (k_cache.scalar_type() == at::kChar)
    return rope_and_cache_impl<int8_t>(qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, Hq, Hkv);
  TORCH_CHECK(k_cache.scalar_type() == at::kFloat, "the cache must be float32, float16 or int8");
  rope_and_cache_impl<float>(qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, Hq, Hkv);
}
