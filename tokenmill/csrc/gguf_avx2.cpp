// GGUF dot products with AVX2 for F16 / BF16 against float32 activations: R (1..4) activation rows
// against one weight row. (The quantized types run as tiles: gguf_tile32.cpp, gguf_tilek.cpp.)
#include "gguf_avx2.h"
#include "gguf_blocks.h"

namespace tokenmill::gguf {
namespace {

using namespace avx2;

template <bool BF, int R>
TM_AVX2 void dot_f16(const uint8_t* w, int64_t K, const void* act, int64_t stride, float* out) {
  __m256 acc[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const auto* base = static_cast<const uint8_t*>(act);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * k));
    const __m256 wv = BF ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(reinterpret_cast<const float*>(base + r * stride) + k), acc[r]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    out[r] = hsum(acc[r]);
    const float* x = reinterpret_cast<const float*>(base + r * stride);
    for (int64_t j = k; j < K; ++j) out[r] += (BF ? bf16(w + 2 * j) : fp16(w + 2 * j)) * x[j];
  }
}

template <int R>
TM_AVX2 void dot_avx2(int t, const uint8_t* w, int64_t K, const void* act, int64_t stride, float* out) {
  switch (t) {
    case F16: return dot_f16<false, R>(w, K, act, stride, out);
    case BF16: return dot_f16<true, R>(w, K, act, stride, out);
  }
}

}  // namespace

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}

void dot_rows(int t, const uint8_t* w, int64_t K, const void* act, int64_t stride, int R, float* out) {
  if (!has_avx2() || block_elems(t) > 1) return dot_rows_scalar(t, w, K, act, stride, R, out);
  switch (R) {
    case 1: return dot_avx2<1>(t, w, K, act, stride, out);
    case 2: return dot_avx2<2>(t, w, K, act, stride, out);
    case 3: return dot_avx2<3>(t, w, K, act, stride, out);
    default: return dot_avx2<4>(t, w, K, act, stride, out);
  }
}

}  // namespace tokenmill::gguf
