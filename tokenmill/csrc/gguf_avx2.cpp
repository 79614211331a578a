// GGUF dot products with AVX2 for the K-quants and F16 / BF16 (the 32-element types run as tiles:
// gguf_tile32.cpp): R (1..4) activation rows against one weight row, each weight block unpacked to
// bytes once and used for all R rows (prompt steps), the way gguf_scalar.cpp defines them. Codes times int8 activations by vpmaddubsw (unsigned x signed byte pairs -> int16, no
// overflow for codes < 64), then vpmaddwd by the sub-block scale (or 1) -> int32, exact; one float
// multiply-add per block and row. A row's operations do not depend on R: batch invariant.
#include "gguf_avx2.h"
#include "gguf_blocks.h"

namespace tokenmill::gguf {
namespace {

using namespace avx2;

// a weight block's bytes kPrefetchBytes ahead (see gguf_avx2.h)
inline void prefetch_ahead(const uint8_t* blk, int bytes) {
  for (int off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchBytes + off), _MM_HINT_T0);
}

template <typename A>
inline const A& act_block(const void* act, int64_t stride, int r, int64_t b) {
  return reinterpret_cast<const A*>(static_cast<const uint8_t*>(act) + r * stride)[b];
}

// control for _mm256_shuffle_epi8 broadcasting int16 element lo (low 128 bits) and hi (high)
TM_AVX2 inline __m256i pick16(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(0x0100 + 0x0202 * hi)),
                          _mm_set1_epi16(static_cast<short>(0x0100 + 0x0202 * lo)));
}

// Q4_K / Q5_K 12 scale bytes (and 4 more, ignored) -> 8 scales (bytes 0..7) and 8 mins (8..15),
// k_scales' numbers, in a few shuffles: scale / min j < 4 is byte j / j + 4 & 63; j >= 4 takes
// its low 4 bits from byte j + 4 (low / high nibble) and its top 2 from the top of byte j - 4 / j
TM_AVX2 inline __m128i k_scales_vec(const uint8_t* q) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m128i low = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i top = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i six = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
  const __m128i high_nib = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
  return _mm_or_si128(_mm_or_si128(_mm_and_si128(low, six), _mm_and_si128(_mm_srli_epi16(low, 4), high_nib)),
                      _mm_and_si128(_mm_srli_epi16(top, 2), _mm_set1_epi8(0x30)));
}

// Q4_K and Q5_K (fifth bits when Q5)
template <int R, bool Q5>
TM_AVX2 void dot_k45(const uint8_t* w, int64_t K, const void* act, int64_t stride, float* out) {
  const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  __m256i pick[8];  // scale j in every lane: chunk c's low nibbles take 2c, its high ones 2c + 1
  #pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) pick[j] = pick16(j, j);
  __m256 acc[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < K / 256; ++b) {
    const uint8_t* blk = w + b * (Q5 ? 176 : 144);
    prefetch_ahead(blk, Q5 ? 176 : 144);
    const float d = half(blk), dmin = half(blk + 2);
    const __m128i sm8 = k_scales_vec(blk + 4);
    const __m256i sm = _mm256_cvtepu8_epi16(sm8);
    const __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);  // 8 scales in both lanes
    // mins, each twice: element 2j, 2j + 1 = min j, against the 16 sums of 16 activations
    const __m256i mins = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(sm8, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    const __m256i qh = Q5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)) : m4;
    __m256i sums[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) sums[r] = _mm256_setzero_si256();
    // chunk by chunk, each unpacked once for the R rows: few registers live (no spills)
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      if (Q5) {  // bit 2c of qh byte l -> element 64c + l, bit 2c + 1 -> 64c + 32 + l
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      const __m256i s_lo = _mm256_shuffle_epi8(scales, pick[2 * c]);
      const __m256i s_hi = _mm256_shuffle_epi8(scales, pick[2 * c + 1]);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const ActK& a = act_block<ActK>(act, stride, r, b);
        const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 64 * c));
        const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 64 * c + 32));
        const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s_lo);
        const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s_hi);
        sums[r] = _mm256_add_epi32(sums[r], _mm256_add_epi32(p0, p1));
        TM_KEEP(sums[r]);
      }
    }
    const __m256 vd = _mm256_set1_ps(d), vdmin = _mm256_set1_ps(dmin);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {  // acc += da * (d * sum - dmin * sum_j min_j * (sums of 32 a))
      const ActK& a = act_block<ActK>(act, stride, r, b);
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum));
      const __m256 t = _mm256_fnmadd_ps(vdmin, _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins)),
                                        _mm256_mul_ps(vd, _mm256_cvtepi32_ps(sums[r])));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a.d), t, acc[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

template <int R>
TM_AVX2 void dot_q6k(const uint8_t* w, int64_t K, const void* act, int64_t stride, float* out) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
  __m256i pick[4];  // group g of a half: scale 2g (elements 0..15), 2g + 1 (16..31)
  #pragma GCC unroll 8
  for (int g = 0; g < 4; ++g) pick[g] = pick16(2 * g, 2 * g + 1);
  __m256 acc[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < K / 256; ++b) {
    const uint8_t* blk = w + b * 210;
    prefetch_ahead(blk, 210);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
    const float d = half(blk + 208);
    __m256i sums[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {  // the codes' offset first: -32 * sum_s sc_s * (sum of 16 activations)
      const ActK& a = act_block<ActK>(act, stride, r, b);
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum));
      sums[r] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));
    }
    #pragma GCC unroll 8
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
      __m256i q[4];  // codes 0..63 of elements 128h + 32g + (0..31)
      q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
      // this half's 8 scales in both lanes
      const __m256i sh = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
      #pragma GCC unroll 8
      for (int g = 0; g < 4; ++g) {
        const __m256i s = _mm256_shuffle_epi8(sh, pick[g]);
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const ActK& a = act_block<ActK>(act, stride, r, b);
          const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 128 * h + 32 * g));
          sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], av), s));
          TM_KEEP(sums[r]);
        }
      }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const ActK& a = act_block<ActK>(act, stride, r, b);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sums[r]), acc[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

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
    case Q4_K: return dot_k45<R, false>(w, K, act, stride, out);
    case Q5_K: return dot_k45<R, true>(w, K, act, stride, out);
    case Q6_K: return dot_q6k<R>(w, K, act, stride, out);
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
  if (!has_avx2() || block_elems(t) == 32) return dot_rows_scalar(t, w, K, act, stride, R, out);
  switch (R) {
    case 1: return dot_avx2<1>(t, w, K, act, stride, out);
    case 2: return dot_avx2<2>(t, w, K, act, stride, out);
    case 3: return dot_avx2<3>(t, w, K, act, stride, out);
    default: return dot_avx2<4>(t, w, K, act, stride, out);
  }
}

}  // namespace tokenmill::gguf
