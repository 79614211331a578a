// int8 x int8 linear layer with exact int32 accumulation (CPU).
//
//   y[m, n] = sum over the two int8 parts p of x[m]:
//             float(sum_k qx_p[m, k] * qw[n, k]) * (sx_p[m] * sw[n])   (+ bias[n])
//
// qw: int8 weights, one scale per output channel (sw). qx: each token row quantized on its own
// (sx = max|x| / 127), then its rounding error quantized again (split_rows, quant_rows.h).
// The integer sum is exact, so it is the same number whichever kernel computes it: our
// AVX-512 VNNI loop for a few rows (decode: reading the weights is the cost)
// or at::_int_mm (oneDNN's int8 GEMM) for many rows (prefill, batches). The float epilogue is one
// code path for both. A row's result therefore never depends on the rest of the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "quant_rows.h"

namespace {

using tokenmill::has_vnni;
using tokenmill::split_rows;

// y[:] = float(hi[:]) * (s_hi * sw) + float(lo[:]) * (s_lo * sw) (+ bias), in that order,
// multiplies and adds never fused.
void epilogue(const int32_t* hi, const int32_t* lo, float s_hi, float s_lo, const float* sw,
              const float* b, int64_t N, float* y) {
  for (int64_t n = 0; n < N; ++n) {
    float v = static_cast<float>(hi[n]) * (s_hi * sw[n]);
    v = v + static_cast<float>(lo[n]) * (s_lo * sw[n]);
    y[n] = b ? v + b[n] : v;
  }
}

__attribute__((target("avx512f")))
void epilogue_avx512(const int32_t* hi, const int32_t* lo, float s_hi, float s_lo, const float* sw,
                     const float* b, int64_t N, float* y) {
  const __m512 vhi = _mm512_set1_ps(s_hi), vlo = _mm512_set1_ps(s_lo);
  int64_t n = 0;
  for (; n + 16 <= N; n += 16) {
    const __m512 w = _mm512_loadu_ps(sw + n);
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(hi + n)), _mm512_mul_ps(vhi, w));
    v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(lo + n)),
                                       _mm512_mul_ps(vlo, w)));
    if (b) v = _mm512_add_ps(v, _mm512_loadu_ps(b + n));
    _mm512_storeu_ps(y + n, v);
  }
  epilogue(hi + n, lo + n, s_hi, s_lo, sw + n, b ? b + n : nullptr, N - n, y + n);
}

// AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the activations go in shifted
// by +128 (qu = q ^ 0x80 = q + 128) and the shift comes back out through the weight row sums:
//   sum qx*qw = sum qu*qw - 128 * sum qw.
// Four weight rows and two activation rows at a time (M is even: a token's two int8 parts);
// each weight row is read from memory once and from L1 for the next pair.
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void int_dot_vnni(const int8_t* q, int64_t M, const int8_t* w, const int32_t* wsum, int64_t K,
                  int64_t N, int32_t* acc, int64_t n0, int64_t n1) {
  const int64_t tail = K % 64;
  const __mmask64 tail_mask = tail ? ((~0ULL) >> (64 - tail)) : 0;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  // masked lanes load 0 on the weight side: 0x80 * 0 adds nothing
#define load_a(p) _mm512_xor_si512(_mm512_loadu_si512(p), flip)
#define load_a_tail(p) _mm512_xor_si512(_mm512_maskz_loadu_epi8(tail_mask, p), flip)
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {  // 4 weight rows x 2 activation rows: 8 sums in registers
    const int8_t* b0 = w + n * K;
    for (int64_t m = 0; m < M; m += 2) {
      const int8_t* a0 = q + m * K;
      const int8_t* a1 = a0 + K;
      __m512i s[8];
      for (int i = 0; i < 8; ++i) s[i] = _mm512_setzero_si512();
      int64_t k = 0;
      for (; k + 64 <= K; k += 64) {
        const __m512i x0 = load_a(a0 + k), x1 = load_a(a1 + k);
        for (int r = 0; r < 4; ++r) {
          const __m512i wv = _mm512_loadu_si512(b0 + r * K + k);
          s[r] = _mm512_dpbusd_epi32(s[r], x0, wv);
          s[4 + r] = _mm512_dpbusd_epi32(s[4 + r], x1, wv);
          if (m == 0)  // two groups ahead: the hardware prefetcher alone left ~20% on the table
            _mm_prefetch(reinterpret_cast<const char*>(b0 + (8 + r) * K + k), _MM_HINT_T0);
        }
      }
      if (tail) {
        const __m512i x0 = load_a_tail(a0 + k), x1 = load_a_tail(a1 + k);
        for (int r = 0; r < 4; ++r) {
          const __m512i wv = _mm512_maskz_loadu_epi8(tail_mask, b0 + r * K + k);
          s[r] = _mm512_dpbusd_epi32(s[r], x0, wv);
          s[4 + r] = _mm512_dpbusd_epi32(s[4 + r], x1, wv);
        }
      }
      for (int r = 0; r < 4; ++r) {
        acc[m * N + n + r] = _mm512_reduce_add_epi32(s[r]) - 128 * wsum[n + r];
        acc[(m + 1) * N + n + r] = _mm512_reduce_add_epi32(s[4 + r]) - 128 * wsum[n + r];
      }
    }
  }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* a = q + m * K;
      const int8_t* b = w + n * K;
      __m512i s = _mm512_setzero_si512();
      int64_t k = 0;
      for (; k + 64 <= K; k += 64)
        s = _mm512_dpbusd_epi32(s, load_a(a + k), _mm512_loadu_si512(b + k));
      if (tail)
        s = _mm512_dpbusd_epi32(s, load_a_tail(a + k), _mm512_maskz_loadu_epi8(tail_mask, b + k));
      acc[m * N + n] = _mm512_reduce_add_epi32(s) - 128 * wsum[n];
    }
#undef load_a
#undef load_a_tail
}

}  // namespace

bool int8_linear_has_vnni() { return has_vnni(); }

// x (M, K) float32; w (N, K) int8; wscale (N,) float32; wsum (N,) int32 = w.sum(1);
// bias (N,) float32 or empty.
// Rows < gemm_min_rows take the row loop, more take at::_int_mm; both give the same int32.
at::Tensor int8_linear(at::Tensor x, at::Tensor w, at::Tensor wscale,
                          at::Tensor wsum, at::Tensor bias, int64_t gemm_min_rows) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous(), "w must be contiguous int8");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "x and w disagree on K");
  const int64_t R = 2 * M;  // int8 rows: each token's high part, then its low part
  auto q = at::empty({R, K}, x.options().dtype(at::kChar));
  auto sx = at::empty({R}, x.options());
  // Python takes this path only where int8_linear_has_vnni(); elsewhere fbgemm or PyTorch
  TORCH_CHECK(has_vnni(), "int8_linear needs AVX-512 VNNI");
  split_rows(x.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), sx.data_ptr<float>());

  at::Tensor acc;
  if (M >= gemm_min_rows) {
    acc = at::_int_mm(q, w.t());  // (R, N) int32, exact; oneDNN reads the transposed view as is
  } else {
    acc = at::empty({R, N}, x.options().dtype(at::kInt));
    int32_t* accp = acc.data_ptr<int32_t>();
    const int8_t* wp = w.data_ptr<int8_t>();
    const int64_t groups = (N + 3) / 4;  // four rows per task, as the kernel reads them
    const int8_t* qp = q.data_ptr<int8_t>();
    const int32_t* ws = wsum.data_ptr<int32_t>();
    at::parallel_for(0, groups, 16, [&](int64_t g0, int64_t g1) {
      int_dot_vnni(qp, R, wp, ws, K, N, accp, g0 * 4, std::min(N, g1 * 4));
    });
  }

  auto y = at::empty({M, N}, x.options());
  const int32_t* a = acc.data_ptr<int32_t>();
  const float* sxp = sx.data_ptr<float>();
  const float* swp = wscale.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      epilogue_avx512(a + 2 * m * N, a + (2 * m + 1) * N, sxp[2 * m], sxp[2 * m + 1], swp, bp, N,
                      yp + m * N);
  });
  return y;
}
