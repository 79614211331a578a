// 16 vectors -> one, lane i = v[i]'s 16 lanes combined by op (add, max, integer add...): a tree
// of shuffles (45 ops for 16 vectors, where a horizontal reduction each costs ~8 and one long
// dependency chain). Every vector's lanes are combined in the same order (lanes i + 8, then + 4,
// then pairs), whatever its place, so a float sum does not depend on which vector it was.
#pragma once
#include <immintrin.h>

namespace tokenmill {

template <typename Op>
__attribute__((target("avx512f")))
inline __m512 reduce16(const __m512* v, Op op) {
  __m512 w[8], x[4], y[2];
  for (int p = 0; p < 8; ++p)  // 128-bit lanes: [a0+a2, a1+a3, b0+b2, b1+b3]
    w[p] = op(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
              _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int p = 0; p < 4; ++p)  // 128-bit lane k: 4 partials of vector 4p + k
    x[p] = op(_mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int p = 0; p < 2; ++p)  // lane k: [8p + k: 2 partials, 8p + 4 + k: 2 partials]
    y[p] = op(_mm512_shuffle_ps(x[2 * p], x[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_shuffle_ps(x[2 * p], x[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  // lane 4k + m holds vector 4m + k
  const __m512 z = op(_mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, z);
}

struct AddPs {
  __attribute__((target("avx512f"))) __m512 operator()(__m512 a, __m512 b) const { return _mm512_add_ps(a, b); }
};
struct MaxPs {
  __attribute__((target("avx512f"))) __m512 operator()(__m512 a, __m512 b) const { return _mm512_max_ps(a, b); }
};
struct AddEpi32 {  // int32 lanes carried in float registers
  __attribute__((target("avx512f"))) __m512 operator()(__m512 a, __m512 b) const {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
};

}  // namespace tokenmill
