// 4-bit linear layer on GGUF Q4_1 blocks as they are in the file (CPU).
//
// Weights: per output row n and block b of 32 inputs, w = d[n,b] * q + m[n,b], q in 0..15
// (16 bytes per block: byte j holds q_j in its low nibble and q_{j+16} in its high one),
// d and m float16. For the bundled model these are the file's own numbers: no weight error.
// Activations: each row in two int8 parts (quant_rows.h), plus the float sum of each block.
//
//   y[m, n] = sum_b d[n,b] * (s_hi * I_hi[b] + s_lo * I_lo[b]) + sum_b m[n,b] * xsum[m, b]
//
// where I[b] = sum_{k in b} q_k * a_k is exact (vpdpbusd: unsigned q times signed a). Every
// (m, n) output runs the same instruction sequence whatever M is: batch invariant.
// One code path for all M: it reads 5 bits per weight (decode is memory-bound), but prefill
// costs more than the int8 path's oneDNN matmul.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_rows.h"

namespace {

using tokenmill::has_vnni;

// Lane order of one 64-input chunk (two blocks) after the nibbles are unpacked: low nibbles of
// both blocks, then high nibbles: [b0 0..15 | b1 0..15 | b0 16..31 | b1 16..31] = inputs
// [0..15, 32..47, 16..31, 48..63]. Activation rows are stored in this order. (It swaps the
// middle quarters, so it is its own inverse.)
inline int64_t lane_source(int64_t i) {
  const int64_t quarter = i / 16, r = i % 16;
  static const int64_t start[4] = {0, 32, 16, 48};
  return start[quarter] + r;
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))
void rows_vnni(const int8_t* q, const float* s, const float* xsum, int64_t M, const uint8_t* qs,
               const at::Half* d, const at::Half* mn, int64_t K, int64_t N, float* y,
               int64_t n0, int64_t n1) {
  const int64_t B = K / 32;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  // lane l of a dpbusd result covers inputs 4l..4l+3 of the lane order: block 0, 1, 0, 1
  const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wrow = qs + n * K / 2;
    const at::Half* drow = d + n * B;
    const at::Half* mrow = mn + n * B;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {  // up to 4 rows share each unpacked chunk
      const int64_t rows = std::min<int64_t>(4, M - m0);
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t c = 0; c < K / 64; ++c) {
        const __m256i nib = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + c * 32));
        if (m0 == 0)  // rows ahead, as in int8_linear.cpp: the hardware prefetcher lags
          _mm_prefetch(reinterpret_cast<const char*>(wrow + 4 * K / 2 + c * 32), _MM_HINT_T0);
        const __m256i qlo = _mm256_and_si256(nib, low4);
        const __m256i qhi = _mm256_and_si256(_mm256_srli_epi16(nib, 4), low4);
        const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(qlo), qhi, 1);
        uint32_t two;  // d of blocks 2c and 2c+1, float16
        std::memcpy(&two, drow + 2 * c, 4);
        const __m512 dd = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(
                                                          _mm_cvtph_ps(_mm_cvtsi32_si128(two))));
        for (int64_t r = 0; r < rows; ++r) {  // the same operations for a row in any group
          const int8_t* hi = q + 2 * (m0 + r) * K;
          const __m512i ih = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(hi + c * 64));
          const __m512i il = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(hi + K + c * 64));
          const __m512 f = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ih), _mm512_set1_ps(s[2 * (m0 + r)])),
                                         _mm512_mul_ps(_mm512_cvtepi32_ps(il), _mm512_set1_ps(s[2 * (m0 + r) + 1])));
          acc[r] = _mm512_fmadd_ps(f, dd, acc[r]);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t m = m0 + r;
        // sum_b m[b] * xsum[b], 16 blocks at a time
        __m512 macc = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 16 <= B; b += 16)
          macc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mrow + b))),
                                 _mm512_loadu_ps(xsum + m * B + b), macc);
        if (b < B) {
          const __mmask16 mask = (1u << (B - b)) - 1;
          macc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mrow + b)),
                                 _mm512_maskz_loadu_ps(mask, xsum + m * B + b), macc);
        }
        y[m * N + n] = _mm512_reduce_add_ps(acc[r]) + _mm512_reduce_add_ps(macc);
      }
    }
  }
}

}  // namespace

// x (M, K) float32; qs (N, K/2) uint8; d, m (N, K/32) float16; bias (N,) float32 or empty.
// K must be a multiple of 64 (two blocks per step).
at::Tensor q4_linear(at::Tensor x, at::Tensor qs, at::Tensor d, at::Tensor m,
                        at::Tensor bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  TORCH_CHECK(qs.scalar_type() == at::kByte && qs.is_contiguous(), "qs must be contiguous uint8");
  TORCH_CHECK(d.scalar_type() == at::kHalf && m.scalar_type() == at::kHalf && d.is_contiguous() &&
              m.is_contiguous(), "d and m must be contiguous float16");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = qs.size(0), B = K / 32;
  TORCH_CHECK(K % 64 == 0 && qs.size(1) == K / 2 && d.size(1) == B, "shapes disagree (K % 64 == 0)");
  // Python takes this path only where the CPU has VNNI; elsewhere the PyTorch reference
  TORCH_CHECK(has_vnni(), "q4_linear needs AVX-512 VNNI");
  // two int8 parts per row, then each 64-chunk reordered to the kernel's lane order
  std::vector<int8_t> parts(2 * M * K), q(2 * M * K);
  std::vector<float> s(2 * M), xsum(M * B);
  tokenmill::split_rows(x.data_ptr<float>(), M, K, parts.data(), s.data());
  for (int64_t r = 0; r < 2 * M; ++r)
    for (int64_t c = 0; c < K; c += 64)
      for (int64_t i = 0; i < 64; ++i) q[r * K + c + i] = parts[r * K + c + lane_source(i)];
  const float* xp = x.data_ptr<float>();
  for (int64_t r = 0; r < M; ++r)
    for (int64_t b = 0; b < B; ++b) {
      float t = 0.f;
      for (int64_t j = 0; j < 32; ++j) t += xp[r * K + b * 32 + j];
      xsum[r * B + b] = t;
    }
  auto y = at::empty({M, N}, x.options());
  float* yp = y.data_ptr<float>();
  const uint8_t* qsp = qs.data_ptr<uint8_t>();
  const at::Half* dp = d.data_ptr<at::Half>();
  const at::Half* mp = m.data_ptr<at::Half>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    rows_vnni(q.data(), s.data(), xsum.data(), M, qsp, dp, mp, K, N, yp, n0, n1);
  });
  if (bias.numel()) y.add_(bias);
  return y;
}
