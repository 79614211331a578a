// AVX2 helpers shared by the GGUF kernels (gguf_avx2.cpp: K-quants and F16; gguf_tile32.cpp: the
// 32-element types). Every function carries its own target attribute: the files are built for
// any x86-64, and the AVX2 code runs only where has_avx2() says so.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define TM_AVX2 __attribute__((target("avx2,fma,f16c")))
// A register barrier for a running sum: without it GCC reassociates a block's integer sums into a
// balanced tree of every product (all live at once: spilled to the stack, twice the instructions)
#define TM_KEEP(v) asm("" : "+x"(v))

namespace tokenmill::gguf::avx2 {

// How far ahead a weight row being read through asks for its bytes. A decode step reads the
// weights from memory; the hardware prefetcher alone kept a 2-core Q8_0 step at 21 GB/s, this at
// 23-25 (bench/gguf_kernels.py).
constexpr int kPrefetchBytes = 1024;

TM_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 bits -> 32 bytes, byte j 0xFF where bit j is set
TM_AVX2 inline __m256i bits_to_bytes(uint32_t x) {
  const __m256i which = _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                           0x0303030303030303LL);  // byte j <- source byte j / 8
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));  // 1 << (j % 8)
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(x)), which), bit);
  return _mm256_cmpeq_epi8(v, bit);
}

// a 32-block's 16 bytes of nibbles -> 32 codes 0..15 in element order
TM_AVX2 inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m4 = _mm_set1_epi8(0xF);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
}

TM_AVX2 inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

}  // namespace tokenmill::gguf::avx2
