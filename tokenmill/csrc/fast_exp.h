// exp for vectors of float32, shared by the attention softmax, silu and gelu.
#pragma once
#include <immintrin.h>

namespace tokenmill {

// exp(x) with AVX-512: 2^n * p(r), n = floor(x / ln 2) applied by vscalefps, |rel err| < 2e-7;
// x below -87 gives exp(-87), above ~88 infinity.
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

// exp(x) with AVX2, any sign: x clamped to [-87, 88], then as fast_exp512 with 2^n put into the
// exponent bits (|rel err| < 2e-7)
__attribute__((target("avx2,fma")))
inline __m256 fast_exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  const __m256 n = _mm256_floor_ps(t);
  const __m256 r = _mm256_mul_ps(_mm256_sub_ps(t, n), _mm256_set1_ps(0.6931471805599453f));
  __m256 p = _mm256_set1_ps(0.0001984127f);
  for (float c : {0.0013888889f, 0.008333334f, 0.041666668f, 0.16666667f, 0.5f, 1.0f, 1.0f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  // p is in [1, 2): adding n to its exponent is exact while the result stays a normal float
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

}  // namespace tokenmill
