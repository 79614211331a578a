// AVX2 helpers shared by the GGUF kernels (gguf_avx2.cpp: K-quants and F16; gguf_tile32.cpp: the
// 32-element types). Every function carries its own target attribute: the files are built for
// any x86-64, and the AVX2 code runs only where has_avx2() says so.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

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

// the 8 int32 lanes' sum (exact)
TM_AVX2 inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

TM_AVX2 inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// rows 0..3 in g0, 4..7 in g1 (each row's low-half total in the low half, its high-half total in
// the high) -> one vector of the 8 rows' totals
TM_AVX2 inline __m256i join(__m256i g0, __m256i g1) {
  return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}

// 8 int32 vectors (one per weight row) -> one vector of the 8 rows' totals
TM_AVX2 inline __m256i transpose_sum(const __m256i* p) {
  return join(_mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3])),
              _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7])));
}

// 8 vectors of 8 int32 -> their transpose: out[j] lane i = in[i] lane j. The tiles keep their
// rows interleaved this way (4 codes of each row in a vector), so that one vpmaddubsw against 4
// activations broadcast works on the 8 rows at once and each row's sum stays in its own lane.
TM_AVX2 inline void transpose8(const __m256i* in, __m256i* out) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {  // t[2i]: in[2i], in[2i+1] lanes 0 1 | 4 5; t[2i+1]: 2 3 | 6 7
    t[2 * i] = _mm256_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // u[4h + j]: rows 4h .. 4h + 3, lanes j | j + 4
    u[4 * h] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
    u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
    u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    out[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
    out[j + 4] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
  }
}

// 4 activations (bytes at p) in every int32 lane
TM_AVX2 inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// 8 rows' fp16 at byte `at` of each -> 8 floats (gathered in a register: a store forwarded to a
// wider load would stall)
TM_AVX2 inline __m256 halves8(const uint8_t* const* rows, int64_t at) {
  const auto h = [&](int i) {
    uint16_t v;
    std::memcpy(&v, rows[i] + at, 2);
    return static_cast<short>(v);
  };
  return _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)));
}

// a weight block's bytes `ahead` bytes ahead
inline void prefetch_ahead(const uint8_t* blk, int bytes, int ahead = kPrefetchBytes) {
  for (int off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + ahead + off), _MM_HINT_T0);
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

// A tile kernel's driver over M activation rows (Act blocks, stride bytes apart) -> out[m * ldo]:
// fewer than tile_from rows run against the file's rows as they are (rows(a, out)); more unpack
// the 8 weight rows once into a per-thread tile of nb blocks (unpack(tile)) and run every
// activation row against it (run(tile, a, out)).
template <typename Tile, typename Act, typename Rows, typename Unpack, typename Run>
inline void drive_tile(int64_t nb, const void* act, int64_t stride, int64_t M, float* out, int64_t ldo,
                       int64_t tile_from, Rows rows, Unpack unpack, Run run) {
  const auto row = [&](int64_t m) {
    return reinterpret_cast<const Act*>(static_cast<const uint8_t*>(act) + m * stride);
  };
  if (M < tile_from) {
    for (int64_t m = 0; m < M; ++m) rows(row(m), out + m * ldo);
    return;
  }
  thread_local std::vector<Tile> tile;
  if (static_cast<int64_t>(tile.size()) < nb) tile.resize(nb);
  unpack(tile.data());
  for (int64_t m = 0; m < M; ++m) run(tile.data(), row(m), out + m * ldo);
}

}  // namespace tokenmill::gguf::avx2
