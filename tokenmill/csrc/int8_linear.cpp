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
#include <utility>
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

// Portable: the same exact int32 sums, plainly (machines without VNNI; the tests run it there).
void int_dot_portable(const int8_t* q, int64_t M, const int8_t* w, int64_t K, int64_t N, int32_t* acc,
                      int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* a = q + m * K;
      const int8_t* b = w + n * K;
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += static_cast<int32_t>(a[k]) * b[k];
      acc[m * N + n] = sum;
    }
}

// Portable, packed layout: every activation row against one block of 16 output rows.
void packed_block_portable(const int8_t* q, int64_t R, int64_t K, const int8_t* w, int32_t* acc,
                           int64_t N) {
  for (int64_t m = 0; m < R; ++m)
    for (int r = 0; r < 16; ++r) {
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += static_cast<int32_t>(q[m * K + k]) * w[(k / 4) * 64 + r * 4 + k % 4];
      acc[m * N + r] = sum;
    }
}

// ---- packed weights: no horizontal sums ------------------------------------------------------
// Layout (N/16, K/4, 16, 4): for each block of 16 output rows, the 4 bytes of k..k+3 of each row
// side by side. One vpdpbusd of a broadcast 4-byte activation group against one 64-byte load then
// adds into 16 output sums at once, each in its own lane: no reduction at the end (the row loop
// above spends about a quarter of a decode step in _mm512_reduce_add_epi32), and every weight
// byte read serves MR activation rows, so a few more tokens (a speculative draft, a small batch)
// cost compute, not another pass over the weights.
// One pair of activation rows (a token's two int8 parts) against 4 blocks (64 outputs from n0):
// 8 accumulators, named (an array of them was kept on the stack by GCC). Further pairs read the
// same 4 blocks again, from L1/L2: one pass over memory for any number of rows.
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void packed_pair4(const uint8_t* q0, const uint8_t* q1, int64_t K, const int8_t* w,
                  const int32_t* wsum, int32_t* acc0, int32_t* acc1) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;  // row q0, blocks 0..3
  __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;                      // row q1
  const int8_t *w0 = w, *w1 = w + 16 * K, *w2 = w + 32 * K, *w3 = w + 48 * K;
  for (int64_t k = 0; k < K; k += 4) {
    const int64_t o = 16 * k;  // byte offset of group k / 4 in a block
    const __m512i v0 = _mm512_loadu_si512(w0 + o), v1 = _mm512_loadu_si512(w1 + o);
    const __m512i v2 = _mm512_loadu_si512(w2 + o), v3 = _mm512_loadu_si512(w3 + o);
    _mm_prefetch(reinterpret_cast<const char*>(w0 + o + 1024), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w1 + o + 1024), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w2 + o + 1024), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w3 + o + 1024), _MM_HINT_T0);
    const __m512i x0 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q0 + k));
    const __m512i x1 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q1 + k));
    a0 = _mm512_dpbusd_epi32(a0, x0, v0); a1 = _mm512_dpbusd_epi32(a1, x0, v1);
    a2 = _mm512_dpbusd_epi32(a2, x0, v2); a3 = _mm512_dpbusd_epi32(a3, x0, v3);
    b0 = _mm512_dpbusd_epi32(b0, x1, v0); b1 = _mm512_dpbusd_epi32(b1, x1, v1);
    b2 = _mm512_dpbusd_epi32(b2, x1, v2); b3 = _mm512_dpbusd_epi32(b3, x1, v3);
  }
  const __m512i c0 = _mm512_slli_epi32(_mm512_loadu_si512(wsum), 7);  // 128 * sum w
  const __m512i c1 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 16), 7);
  const __m512i c2 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 32), 7);
  const __m512i c3 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 48), 7);
  _mm512_storeu_si512(acc0, _mm512_sub_epi32(a0, c0));
  _mm512_storeu_si512(acc0 + 16, _mm512_sub_epi32(a1, c1));
  _mm512_storeu_si512(acc0 + 32, _mm512_sub_epi32(a2, c2));
  _mm512_storeu_si512(acc0 + 48, _mm512_sub_epi32(a3, c3));
  _mm512_storeu_si512(acc1, _mm512_sub_epi32(b0, c0));
  _mm512_storeu_si512(acc1 + 16, _mm512_sub_epi32(b1, c1));
  _mm512_storeu_si512(acc1 + 32, _mm512_sub_epi32(b2, c2));
  _mm512_storeu_si512(acc1 + 48, _mm512_sub_epi32(b3, c3));
}

// Two pairs (4 activation rows) against 4 blocks: 16 accumulators, each weight load feeding 4
// vpdpbusd; for batches and prompt chunks, where the multiplies, not the weight reads, are the cost.
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void packed_quad4(const uint8_t* q, int64_t K, const int8_t* w, const int32_t* wsum, int32_t* acc,
                  int64_t N) {
#define TM_ROW(r) __m512i r##0 = _mm512_setzero_si512(), r##1 = r##0, r##2 = r##0, r##3 = r##0;
  TM_ROW(a) TM_ROW(b) TM_ROW(e) TM_ROW(d)
#undef TM_ROW
  const int8_t *w0 = w, *w1 = w + 16 * K, *w2 = w + 32 * K, *w3 = w + 48 * K;
  for (int64_t k = 0; k < K; k += 4) {
    const int64_t o = 16 * k;
    const __m512i v0 = _mm512_loadu_si512(w0 + o), v1 = _mm512_loadu_si512(w1 + o);
    const __m512i v2 = _mm512_loadu_si512(w2 + o), v3 = _mm512_loadu_si512(w3 + o);
#define TM_DOT(r, i)                                                                       \
    {                                                                                      \
      const __m512i x = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q + i * K + k)); \
      r##0 = _mm512_dpbusd_epi32(r##0, x, v0); r##1 = _mm512_dpbusd_epi32(r##1, x, v1);   \
      r##2 = _mm512_dpbusd_epi32(r##2, x, v2); r##3 = _mm512_dpbusd_epi32(r##3, x, v3);   \
    }
    TM_DOT(a, 0) TM_DOT(b, 1) TM_DOT(e, 2) TM_DOT(d, 3)
#undef TM_DOT
  }
  const __m512i c0 = _mm512_slli_epi32(_mm512_loadu_si512(wsum), 7);  // 128 * sum w
  const __m512i c1 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 16), 7);
  const __m512i c2 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 32), 7);
  const __m512i c3 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 48), 7);
#define TM_STORE(r, i)                                                  \
  _mm512_storeu_si512(acc + i * N, _mm512_sub_epi32(r##0, c0));         \
  _mm512_storeu_si512(acc + i * N + 16, _mm512_sub_epi32(r##1, c1));    \
  _mm512_storeu_si512(acc + i * N + 32, _mm512_sub_epi32(r##2, c2));    \
  _mm512_storeu_si512(acc + i * N + 48, _mm512_sub_epi32(r##3, c3));
  TM_STORE(a, 0) TM_STORE(b, 1) TM_STORE(e, 2) TM_STORE(d, 3)
#undef TM_STORE
}

// The same for a single block (16 outputs): the tail of a layer whose N is not a multiple of 64.
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void packed_pair1(const uint8_t* q0, const uint8_t* q1, int64_t K, const int8_t* w,
                  const int32_t* wsum, int32_t* acc0, int32_t* acc1) {
  __m512i a = _mm512_setzero_si512(), b = a;
  for (int64_t k = 0; k < K; k += 4) {
    const __m512i v = _mm512_loadu_si512(w + 16 * k);
    a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q0 + k)), v);
    b = _mm512_dpbusd_epi32(b, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q1 + k)), v);
  }
  const __m512i c = _mm512_slli_epi32(_mm512_loadu_si512(wsum), 7);
  _mm512_storeu_si512(acc0, _mm512_sub_epi32(a, c));
  _mm512_storeu_si512(acc1, _mm512_sub_epi32(b, c));
}

// acc (2M, N) int32 sums of each token's two parts -> y (M, N) float32, one code path for all
at::Tensor scale_rows(const at::Tensor& acc, const at::Tensor& sx, const at::Tensor& wscale,
                      const at::Tensor& bias, int64_t M, int64_t N) {
  auto y = at::empty({M, N}, sx.options());
  const int32_t* a = acc.data_ptr<int32_t>();
  const float* sxp = sx.data_ptr<float>();
  const float* swp = wscale.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const bool avx512 = tokenmill::has_avx512bw();  // the same operations in the same order
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      (avx512 ? epilogue_avx512 : epilogue)(a + 2 * m * N, a + (2 * m + 1) * N, sxp[2 * m], sxp[2 * m + 1],
                                            swp, bp, N, yp + m * N);
  });
  return y;
}

}  // namespace

bool int8_linear_has_vnni() { return has_vnni(); }

// w (N, K) int8 with N % 16 == 0 and K % 4 == 0 -> the packed layout above, flat (N * K,)
at::Tensor int8_pack(at::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar, "w must be (N, K) int8");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(N % 16 == 0 && K % 4 == 0, "packing needs N % 16 == 0 and K % 4 == 0");
  return w.contiguous().view({N / 16, 16, K / 4, 4}).permute({0, 2, 1, 3}).contiguous().view({-1});
}

// x (M, K) float32; wp from int8_pack; the rest as int8_linear. Every M takes the packed tiles.
at::Tensor int8_linear_packed(at::Tensor x, at::Tensor wp, at::Tensor wscale, at::Tensor wsum,
                              at::Tensor bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(wp.numel() == N * K && N % 16 == 0 && K % 4 == 0, "packed weight does not match");
  const int64_t R = 2 * M;
  auto q = at::empty({R, K}, x.options().dtype(at::kChar));
  auto sx = at::empty({R}, x.options());
  split_rows(x.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), sx.data_ptr<float>());
  auto acc = at::empty({R, N}, x.options().dtype(at::kInt));
  if (!has_vnni()) {
    const int8_t* qp = q.data_ptr<int8_t>();
    const int8_t* wpp = wp.data_ptr<int8_t>();
    int32_t* accp = acc.data_ptr<int32_t>();
    at::parallel_for(0, N / 16, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) packed_block_portable(qp, R, K, wpp + b * 16 * K, accp + b * 16, N);
    });
    return scale_rows(acc, sx, wscale, bias, M, N);
  }
  auto qu = at::bitwise_xor(q.view(at::kByte), 0x80);  // unsigned side of vpdpbusd: q + 128
  const uint8_t* qup = qu.data_ptr<uint8_t>();
  const int8_t* wpp = wp.data_ptr<int8_t>();
  const int32_t* ws = wsum.data_ptr<int32_t>();
  int32_t* accp = acc.data_ptr<int32_t>();
  // units of 4 blocks (64 outputs); a last partial unit block by block
  const int64_t blocks = N / 16, units = (blocks + 3) / 4;
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b0 = u * 4;
      for (int64_t m = 0; m < R; m += 2) {  // R is even: a token's two parts
        const uint8_t* q0 = qup + m * K;
        int32_t* a0 = accp + m * N;
        if (b0 + 4 <= blocks && m + 4 <= R) {
          packed_quad4(q0, K, wpp + b0 * 16 * K, ws + b0 * 16, a0 + b0 * 16, N);
          m += 2;
        } else if (b0 + 4 <= blocks) {
          packed_pair4(q0, q0 + K, K, wpp + b0 * 16 * K, ws + b0 * 16, a0 + b0 * 16, a0 + N + b0 * 16);
        } else {
          for (int64_t b = b0; b < blocks; ++b)
            packed_pair1(q0, q0 + K, K, wpp + b * 16 * K, ws + b * 16, a0 + b * 16, a0 + N + b * 16);
        }
      }
    }
  });
  return scale_rows(acc, sx, wscale, bias, M, N);
}

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
  // Python takes this path where int8_linear_has_vnni() (elsewhere fbgemm, or the portable
  // loop below where TOKENMILL_PORTABLE_KERNELS=1: the tests)
  split_rows(x.data_ptr<float>(), M, K, q.data_ptr<int8_t>(), sx.data_ptr<float>());

  at::Tensor acc;
  if (!has_vnni()) {
    acc = at::empty({R, N}, x.options().dtype(at::kInt));
    const int8_t* qp = q.data_ptr<int8_t>();
    const int8_t* wp = w.data_ptr<int8_t>();
    int32_t* accp = acc.data_ptr<int32_t>();
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) { int_dot_portable(qp, R, wp, K, N, accp, n0, n1); });
  } else if (M >= gemm_min_rows) {
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

  return scale_rows(acc, sx, wscale, bias, M, N);
}
