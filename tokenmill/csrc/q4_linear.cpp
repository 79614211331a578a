// 4-bit linear layer on GGUF Q4_1 blocks (CPU, AVX-512 VNNI), one kernel for every batch size.
//
// Weights: per output row n and block b of 32 inputs, w = d[n,b] * q + m[n,b], q in 0..15, d and
// m float16: the file's own numbers, so no weight error. Activations: each row's block of 32
// quantized on its own (llama.cpp's Q8_1 idea): a = round(x / dx[b]), dx[b] = max|x_b| / 127,
// and xs[b] = dx[b] * sum(a) over the block. Then
//
//   y[m, n] = sum_b d[n,b] * dx[m,b] * I[m,n,b] + m[n,b] * xs[m,b]      (+ bias[n])
//
// with I = sum_{k in b} q_k * a_k exact in int32 (vpdpbusd: unsigned q times signed a): the
// weights times the quantized activations, exactly. (The exact float sum of x in the m term
// leaves the error sum (w - m) * e instead of sum w * e, larger since w - m >= 0: perplexity
// +1.4% instead of +0.2% on a 2,048-token text.) Blocks
// of 32 keep the activation error small (perplexity +0.16% on the bundled text, against +4.4%
// for one scale per row), and one int8 part (the int8 path needs two) halves the multiplies.
//
// Packed layout (q4_pack): per group of 16 output rows and block b, one 320-byte record:
//   bytes 0..255: 4 chunks of 64 bytes; in chunk c, 32-bit lane r is row r, and its byte j holds
//                 q[r, 8c + j] (low nibble) and q[r, 8c + 4 + j] (high nibble);
//   bytes 256..287: d of the 16 rows (float16), 288..319: m.
// One 64-byte load, a mask and a shift give two registers of 16 rows x 4 inputs, each multiplied
// by a broadcast 4-byte activation group: 16 output sums in their own lanes, no horizontal sums.
// Every (m, n) output takes the same instruction sequence whatever the tile: batch invariant.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "q4_linear.h"
#include "quant_rows.h"
#include "reduce16.h"

namespace {

using tokenmill::has_vnni;

constexpr int64_t kRecord = 320;  // bytes per 16 rows x 32 inputs

// One activation row: x (K,) -> a (K,) int8, dx and xs (K/32,) float32. Up to 16 blocks at a
// time, so that their maxima and integer sums come out of one reduce16 tree each instead of two
// horizontal reductions a block; per block the numbers of quantize_row_avx512 (max|x| / 127,
// x * (127 / max|x|) rounded to nearest even), bit for bit.
__attribute__((target("avx512f,avx512bw")))
void quantize_blocks(const float* x, int64_t K, int8_t* a, float* dx, float* xs) {
  const int64_t B = K / 32;
  for (int64_t b0 = 0; b0 < B; b0 += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, B - b0));
    __m512 v[16];
    for (int i = 0; i < 16; ++i) {  // blocks past the row: 0, max 0, sum 0 (not stored)
      const float* xb = x + (b0 + std::min(i, n - 1)) * 32;
      v[i] = i < n ? _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), _mm512_abs_ps(_mm512_loadu_ps(xb + 16)))
                   : _mm512_setzero_ps();
    }
    const __m512 amax = tokenmill::reduce16(v, tokenmill::MaxPs());
    const __mmask16 nz = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ);
    alignas(64) float inv[16];
    _mm512_store_ps(inv, _mm512_maskz_div_ps(nz, _mm512_set1_ps(127.f), amax));
    const __m512 scale = _mm512_div_ps(amax, _mm512_set1_ps(127.f));
    __m512 sums[16];
    for (int i = 0; i < 16; ++i) {
      if (i >= n) {
        sums[i] = _mm512_setzero_ps();
        continue;
      }
      const float* xb = x + (b0 + i) * 32;
      const __m512 vi = _mm512_set1_ps(inv[i]);
      const __m512i r0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb), vi));
      const __m512i r1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16), vi));
      int8_t* ab = a + (b0 + i) * 32;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(ab), _mm512_cvtsepi32_epi8(r0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(ab + 16), _mm512_cvtsepi32_epi8(r1));
      sums[i] = _mm512_castsi512_ps(_mm512_add_epi32(r0, r1));  // |r| <= 127: the int8 values
    }
    const __m512 sum = _mm512_cvtepi32_ps(_mm512_castps_si512(tokenmill::reduce16(sums, tokenmill::AddEpi32())));
    const __mmask16 valid = static_cast<__mmask16>((1u << n) - 1);
    _mm512_mask_storeu_ps(dx + b0, valid, scale);
    _mm512_mask_storeu_ps(xs + b0, valid, _mm512_mul_ps(scale, sum));
  }
}

// GN groups (16 GN outputs) x MR activation rows, over all K. w: the first group's records;
// groups are B records apart. y: row stride N.
template <int GN, int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni,f16c")))
void tile(const uint8_t* w, int64_t B, const int8_t* a, const float* dx, const float* xs, int64_t K,
          const float* bias, float* y, int64_t N) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MR][GN];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < GN; ++g) acc[r][g] = _mm512_setzero_ps();
  for (int64_t b = 0; b < B; ++b) {
    __m512i isum[MR][GN];
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int g = 0; g < GN; ++g) isum[r][g] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      __m512i lo[GN], hi[GN];
#pragma GCC unroll 4
      for (int g = 0; g < GN; ++g) {
        const uint8_t* rec = w + (g * B + b) * kRecord;
        const __m512i v = _mm512_loadu_si512(rec + 64 * c);
        lo[g] = _mm512_and_si512(v, low4);
        hi[g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const int8_t* ar = a + r * K + b * 32 + 8 * c;
        int32_t g0, g1;
        std::memcpy(&g0, ar, 4);
        std::memcpy(&g1, ar + 4, 4);
        const __m512i x0 = _mm512_set1_epi32(g0), x1 = _mm512_set1_epi32(g1);
#pragma GCC unroll 4
        for (int g = 0; g < GN; ++g) {
          isum[r][g] = _mm512_dpbusd_epi32(isum[r][g], lo[g], x0);
          isum[r][g] = _mm512_dpbusd_epi32(isum[r][g], hi[g], x1);
        }
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < GN; ++g) {
      const uint8_t* rec = w + (g * B + b) * kRecord;
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 256)));
      const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 288)));
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const __m512 s = _mm512_mul_ps(d, _mm512_set1_ps(dx[r * B + b]));
        acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][g]), s, acc[r][g]);
        acc[r][g] = _mm512_fmadd_ps(mn, _mm512_set1_ps(xs[r * B + b]), acc[r][g]);
      }
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < GN; ++g) {
    const __m512 bv = bias ? _mm512_loadu_ps(bias + 16 * g) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) _mm512_storeu_ps(y + r * N + 16 * g, _mm512_add_ps(acc[r][g], bv));
  }
}

// ---- portable: the same numbers without AVX-512 (the tests run it on every machine) ----------
void quantize_blocks_portable(const float* x, int64_t K, int8_t* a, float* dx, float* xs) {
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.f;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(xb[k]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f, scale = amax / 127.f;
    int32_t sum = 0;
    for (int k = 0; k < 32; ++k) {
      const float r = std::min(127.f, std::max(-128.f, std::nearbyint(xb[k] * inv)));
      a[b * 32 + k] = static_cast<int8_t>(r);
      sum += static_cast<int32_t>(r);
    }
    dx[b] = scale;
    xs[b] = scale * static_cast<float>(sum);
  }
}

float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// One group (16 outputs) x `rows` activation rows: the tile's integer sums and its two fused
// multiply-adds per block, lane by lane.
void tile_portable(const uint8_t* w, int64_t B, const int8_t* a, const float* dx, const float* xs, int64_t K,
                   const float* bias, float* y, int64_t N, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float acc[16] = {};
    for (int64_t b = 0; b < B; ++b) {
      const uint8_t* rec = w + b * kRecord;
      const int8_t* ab = a + r * K + b * 32;
      for (int lane = 0; lane < 16; ++lane) {
        int32_t isum = 0;
        for (int c = 0; c < 4; ++c)
          for (int j = 0; j < 4; ++j) {
            const uint8_t v = rec[64 * c + 4 * lane + j];
            isum += (v & 15) * ab[8 * c + j] + (v >> 4) * ab[8 * c + 4 + j];
          }
        const float s = half_at(rec + 256 + 2 * lane) * dx[r * B + b];
        acc[lane] = std::fma(static_cast<float>(isum), s, acc[lane]);
        acc[lane] = std::fma(half_at(rec + 288 + 2 * lane), xs[r * B + b], acc[lane]);
      }
    }
    for (int lane = 0; lane < 16; ++lane) y[r * N + lane] = acc[lane] + (bias ? bias[lane] : 0.f);
  }
}

using TileFn = void (*)(const uint8_t*, int64_t, const int8_t*, const float*, const float*, int64_t,
                        const float*, float*, int64_t);

template <int GN>
TileFn pick(int64_t rows) {
  switch (rows) {
    case 1: return tile<GN, 1>;
    case 2: return tile<GN, 2>;
    case 3: return tile<GN, 3>;
    default: return tile<GN, 4>;
  }
}

}  // namespace

void tokenmill::q4_quantize_row(const float* x, int64_t K, int8_t* a, float* dx, float* xs) {
  if (tokenmill::has_avx512bw())
    quantize_blocks(x, K, a, dx, xs);
  else
    quantize_blocks_portable(x, K, a, dx, xs);
}

// A few rows (decode): 4 groups a tile, one pass over the weights; more rows: 2 groups x 4 rows.
void tokenmill::q4_groups(const uint8_t* w, int64_t B, const int8_t* a, const float* dx,
                          const float* xs, int64_t M, const float* bias, float* y, int64_t Np,
                          int64_t g, int64_t gn) {
  const int64_t K = 32 * B, GN = M < 4 ? 4 : 2;
  if (!has_vnni()) {
    for (int64_t e = g + gn; g < e; ++g)
      for (int64_t m = 0; m < M; m += 4)
        tile_portable(w + g * B * kRecord, B, a + m * K, dx + m * B, xs + m * B, K, bias ? bias + 16 * g : nullptr,
                      y + m * Np + 16 * g, Np, std::min<int64_t>(4, M - m));
    return;
  }
  for (const int64_t end = g + gn; g < end;) {
    int64_t n = std::min<int64_t>(GN, end - g);
    if (n == 3) n = 2;
    for (int64_t m = 0; m < M; m += 4) {
      const int64_t rows = std::min<int64_t>(4, M - m);
      const TileFn fn = n == 4 ? pick<4>(rows) : n == 2 ? pick<2>(rows) : pick<1>(rows);
      fn(w + g * B * kRecord, B, a + m * K, dx + m * B, xs + m * B, K, bias ? bias + 16 * g : nullptr,
         y + m * Np + 16 * g, Np);
    }
    g += n;
  }
}

// codes (N, K) uint8 in 0..15, d and m (N, K/32) float16 -> packed records (ceil(N/16), K/32, 320)
// uint8. Rows past N (to a multiple of 16) are zero.
at::Tensor q4_pack(at::Tensor codes, at::Tensor d, at::Tensor m) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte, "codes must be (N, K) uint8");
  TORCH_CHECK(d.scalar_type() == at::kHalf && m.scalar_type() == at::kHalf, "d and m must be float16");
  const int64_t N = codes.size(0), K = codes.size(1), B = K / 32, G = (N + 15) / 16;
  TORCH_CHECK(K % 32 == 0 && d.size(0) == N && d.size(1) == B && m.sizes() == d.sizes(),
              "shapes disagree (K % 32 == 0)");
  codes = codes.contiguous();
  d = d.contiguous();
  m = m.contiguous();
  auto out = at::zeros({G, B, kRecord}, codes.options());
  const uint8_t* q = codes.data_ptr<uint8_t>();
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  const uint16_t* mp = reinterpret_cast<const uint16_t*>(m.data_ptr<at::Half>());
  uint8_t* o = out.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t g = n / 16, r = n % 16;
    for (int64_t b = 0; b < B; ++b) {
      uint8_t* rec = o + (g * B + b) * kRecord;
      const uint8_t* src = q + n * K + b * 32;
      for (int c = 0; c < 4; ++c)
        for (int j = 0; j < 4; ++j)
          rec[64 * c + 4 * r + j] = (src[8 * c + j] & 15) | ((src[8 * c + 4 + j] & 15) << 4);
      std::memcpy(rec + 256 + 2 * r, dp + n * B + b, 2);
      std::memcpy(rec + 288 + 2 * r, mp + n * B + b, 2);
    }
  }
  return out;
}

// x (M, K) float32; packed from q4_pack; bias float32, padded with zeros to 16 * groups (Q4Linear
// does it once), or empty; N the layer's outputs.
at::Tensor q4_linear(at::Tensor x, at::Tensor packed, at::Tensor bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
              packed.size(2) == kRecord, "packed must come from q4_pack");
  // Python takes this path where the CPU has VNNI (elsewhere the PyTorch reference, or the
  // portable tiles where TOKENMILL_PORTABLE_KERNELS=1: the tests)
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), G = packed.size(0), B = packed.size(1), Np = 16 * G;
  TORCH_CHECK(K == 32 * B && N <= Np && N > Np - 16, "x and the packed weight disagree");
  TORCH_CHECK(bias.numel() == 0 || (bias.numel() == Np && bias.scalar_type() == at::kFloat &&
                                     bias.is_contiguous()), "bias must be float32, padded to 16 * groups");
  auto a = at::empty({M, K}, x.options().dtype(at::kChar));
  auto dx = at::empty({M, B}, x.options()), xs = at::empty({M, B}, x.options());
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      tokenmill::q4_quantize_row(x.data_ptr<float>() + m * K, K, a.data_ptr<int8_t>() + m * K,
                                 dx.data_ptr<float>() + m * B, xs.data_ptr<float>() + m * B);
  });
  auto y = at::empty({M, Np}, x.options());
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const int8_t* ap = a.data_ptr<int8_t>();
  const float* dxp = dx.data_ptr<float>();
  const float* xsp = xs.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; g += 4)
      tokenmill::q4_groups(w, B, ap, dxp, xsp, M, bp, yp, Np, g, std::min<int64_t>(4, g1 - g));
  });
  return Np == N ? y : y.narrow(1, 0, N).contiguous();
}
