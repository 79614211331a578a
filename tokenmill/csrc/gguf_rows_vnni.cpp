// Decode rows of the K-quants with AVX-512 (BW, VNNI): one weight row read from the file against
// one activation row, 64 codes a vector. A decode step reads every weight once, and on the AVX2
// row kernels (gguf_tilek.cpp) the unpacking and multiplies, not memory, set the pace on a fast
// machine: here a 64-element chunk is one broadcast load, one variable shift and one mask (its
// low nibbles in the low half, its high in the high: the chunk's elements in order), one
// vpmaddubsw against 64 activations loaded as they are, and one vpdpwssd that scales the int16
// pair sums by their sub-block's scale into int32. Per block the lanes' sum is the block's exact
// integer sum, as the AVX2 rows give it, so the float steps that follow are theirs.
#include <immintrin.h>

#include "gguf_avx2.h"
#include "gguf_blocks.h"
#include "gguf_tiles.h"

#define TM_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace tokenmill::gguf {
namespace {

using avx2::prefetch_ahead;

// How far ahead the rows ask for their bytes: these rows go through a block faster than the AVX2
// ones, and on the Zen 5 they were written on a 4,096 x 14,336 Q6_K matrix read at 30 GB/s with
// avx2::kPrefetchBytes (1 KiB) ahead, 37 with 2 KiB (bench/gguf_kernels.py-style timing, 4 KiB: 25)
constexpr int kAhead = 2048;

// the 16 int32 lanes folded to 8 with the same total
TM_512 inline __m256i fold(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// 32 bytes in both halves of a vector
TM_512 inline __m512i both_halves(const uint8_t* p) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

TM_512 inline __m512i load64(const void* p) { return _mm512_loadu_si512(p); }

// shift counts for vpsrlvw: lo in the low half, hi in the high
TM_512 inline __m512i shifts(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(lo)), _mm256_set1_epi16(static_cast<short>(hi)), 1);
}

// Q4_K / Q5_K: per block, sums[b * kTileRows] <- lanes of sum_j sc_j (codes . a) and mins[b * kTileRows]
// <- lanes of sum_j min_j (sums of 32 a)
template <bool Q5>
TM_512 void parts_k45(const uint8_t* w, int64_t nb, const ActK* act, __m256i* sums, __m256i* mins) {
  constexpr int bytes = Q5 ? 176 : 144;
  const __m512i m4 = _mm512_set1_epi8(0xF), one = _mm512_set1_epi8(1);
  __m512i split[4], pick[4];
  for (int c = 0; c < 4; ++c) {
    split[c] = shifts(2 * c, 2 * c + 1);  // chunk c's fifth bits: 2c for the low half, 2c + 1 the high
    // int16 pairs 0..15 (elements 64c .. 64c + 31) take scale 2c, pairs 16..31 scale 2c + 1
    pick[c] = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(2 * c)), _mm256_set1_epi16(static_cast<short>(2 * c + 1)), 1);
  }
  const __m512i nib = shifts(0, 4);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * bytes;
    prefetch_ahead(blk, bytes, kAhead);
    const ActK& a = act[b];
    const __m128i sm8 = avx2::k_scales_vec(blk + 4);
    const __m512i sc = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(sm8));  // scales 0..7 (and mins 8..15)
    const __m256i mn = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(sm8, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    mins[b * kTileRows] = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum)), mn);
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    const __m512i qh = Q5 ? both_halves(blk + 16) : m4;
    __m512i sum = _mm512_setzero_si512();
    #pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      __m512i q = _mm512_and_si512(_mm512_srlv_epi16(both_halves(qs + 32 * c), nib), m4);
      if (Q5) q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, split[c]), one), 4));
      const __m512i p = _mm512_maddubs_epi16(q, load64(a.q + 64 * c));
      sum = _mm512_dpwssd_epi32(sum, p, _mm512_permutexvar_epi16(pick[c], sc));
    }
    sums[b * kTileRows] = fold(sum);
  }
}

// Q6_K: per block, sums[b * kTileRows] <- lanes of sum_s sc_s (codes - 32) . a
TM_512 void parts_q6k(const uint8_t* w, int64_t nb, const ActK* act, __m256i* sums) {
  const __m512i m4 = _mm512_set1_epi8(0xF), m2 = _mm512_set1_epi8(3);
  const __m512i top01 = shifts(0, 2), top23 = shifts(4, 6);
  __m512i pick[4];  // vector g (elements 64g .. 64g + 63): int16 pair i takes scale 4g + i / 8
  for (int g = 0; g < 4; ++g) {
    alignas(64) int16_t idx[32];
    for (int i = 0; i < 32; ++i) idx[i] = static_cast<int16_t>(4 * g + i / 8);
    pick[g] = _mm512_load_si512(idx);
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * 210;
    prefetch_ahead(blk, 210, kAhead);
    const ActK& a = act[b];
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
    const __m512i sc = _mm512_castsi256_si512(sc16);
    // the codes' offset first: -32 * sum_s sc_s * (sum of 16 activations), as the AVX2 rows
    const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum))), 5);
    __m512i sum = _mm512_setzero_si512();
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i l = load64(blk + 64 * h);  // low nibbles of elements 128h + 0..63 and (>> 4) 64..127
      const __m512i qh = both_halves(blk + 128 + 32 * h);
      const __m512i q01 = _mm512_or_si512(_mm512_and_si512(l, m4),
                                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, top01), m2), 4));
      const __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, top23), m2), 4));
      sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q01, load64(a.q + 128 * h)),
                                _mm512_permutexvar_epi16(pick[2 * h], sc));
      sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(q23, load64(a.q + 128 * h + 64)),
                                _mm512_permutexvar_epi16(pick[2 * h + 1], sc));
    }
    sums[b * kTileRows] = _mm256_sub_epi32(fold(sum), off);
  }
}

}  // namespace

void row_parts_vnni(int t, const uint8_t* w, int64_t nb, const ActK* act, __m256i* sums, __m256i* mins) {
  if (t == Q6_K) return parts_q6k(w, nb, act, sums);
  if (t == Q5_K) return parts_k45<true>(w, nb, act, sums, mins);
  return parts_k45<false>(w, nb, act, sums, mins);
}

}  // namespace tokenmill::gguf
