// The 32-element GGUF types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with AVX2, a tile of 8 weight rows at a
// time. The tile's blocks are unpacked once into bytes (codes 0..31 for the 4- and 5-bit types, |q|
// and q for Q8_0), the 8 rows interleaved 4 codes at a time, and its rows' scales into float
// vectors; then every activation row runs against it, 4 activations broadcast to the 8 rows per
// vpmaddubsw, so each row's exact int32 block sum builds up in its own lane without horizontal
// adds. The codes' offset is taken off with the activation block's sum, then one float
// multiply-add for the 8 rows. Decode rows (run_rows) read the file's rows one after another and
// bring their sums together by horizontal adds. Lane by lane those are dot_rows_scalar's float
// steps: the portable path's result bit for bit, whatever M is.
#include <algorithm>
#include <vector>

#include "gguf_avx2.h"
#include "gguf_blocks.h"
#include "gguf_tiles.h"

namespace tokenmill::gguf {
namespace {

using namespace avx2;

constexpr int kRows = kTileRows;
constexpr int64_t kDirectRows = 1;  // up to this many activation rows skip the tile

template <int T>
constexpr int kBytes = T == Q4_0 ? 18 : T == Q4_1 ? 20 : T == Q5_0 ? 22 : T == Q5_1 ? 24 : 34;
template <int T>
constexpr int kOffset = T == Q4_0 ? 8 : T == Q5_0 ? 16 : 0;  // w = d * (code - offset)
template <int T>
constexpr bool kMin = T == Q4_1 || T == Q5_1;  // w = d * code + m

// a block's 32 codes as unsigned bytes (|q| for Q8_0, whose signed q goes to q)
template <int T>
TM_AVX2 inline __m256i codes(const uint8_t* blk, __m256i& q) {
  if constexpr (T == Q8_0) {
    q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    return _mm256_sign_epi8(q, q);
  } else if constexpr (T == Q4_0 || T == Q4_1) {
    return nibbles32(blk + (T == Q4_0 ? 2 : 4));
  } else {  // Q5_0 / Q5_1: the nibbles and the fifth bits
    uint32_t h;
    std::memcpy(&h, blk + (T == Q5_0 ? 2 : 4), 4);
    return _mm256_or_si256(nibbles32(blk + (T == Q5_0 ? 6 : 8)),
                           _mm256_and_si256(bits_to_bytes(h), _mm256_set1_epi8(0x10)));
  }
}

template <int T>
TM_AVX2 void unpack(const uint8_t* w, int64_t row_bytes, int n, int64_t nb, TileBlock* tile) {
  for (int64_t b = 0; b < nb; ++b) {
    TileBlock& o = tile[b];
    __m256i u[kRows], q[kRows];
    for (int i = 0; i < kRows; ++i) {
      if (i >= n) {  // a short tile: rows of zeros
        o.d[i] = o.m[i] = 0.f;
        u[i] = q[i] = _mm256_setzero_si256();
        continue;
      }
      const uint8_t* blk = w + i * row_bytes + b * kBytes<T>;
      o.d[i] = half(blk);
      o.m[i] = kMin<T> ? half(blk + 2) : 0.f;
      u[i] = codes<T>(blk, q[i]);
    }
    transpose8(u, reinterpret_cast<__m256i*>(o.u));
    if (T == Q8_0) transpose8(q, reinterpret_cast<__m256i*>(o.q));
  }
}

// (decode) 8 rows' vpmaddubsw outputs (16 int16 pair sums each) -> one vector of the 8 rows' int32 totals.
// vpmaddwd shares the integer multiply pipe with vpmaddubsw, so it is spared where it can be: with
// codes < 32 (|sum| <= 4 * 2 * 31 * 127 < 32768) two rounds of int16 horizontal adds come first,
// one vpmaddwd then widening 4 rows; Q8_0's pair sums need int32 at once.
template <int T>
TM_AVX2 inline __m256i transpose_pairs(const __m256i* p) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (T == Q8_0) {
    __m256i w[kRows];
    for (int i = 0; i < kRows; ++i) w[i] = _mm256_madd_epi16(p[i], ones);
    return transpose_sum(w);
  } else {
    return join(_mm256_madd_epi16(_mm256_hadd_epi16(_mm256_hadd_epi16(p[0], p[1]), _mm256_hadd_epi16(p[2], p[3])), ones),
                _mm256_madd_epi16(_mm256_hadd_epi16(_mm256_hadd_epi16(p[4], p[5]), _mm256_hadd_epi16(p[6], p[7])), ones));
  }
}

// codes u (unsigned) times activations av (Q8_0: with q's signs) -> 16 int16 pair sums
template <int T>
TM_AVX2 inline __m256i block_dot(__m256i u, __m256i q, __m256i av) {
  return _mm256_maddubs_epi16(u, T == Q8_0 ? _mm256_sign_epi8(av, q) : av);
}

// one block's step for the 8 rows: s their exact sums (lane i = row i), d (m) their scales (mins)
template <int T>
TM_AVX2 inline void block_step(__m256i s, __m256 d, __m256 m, const Act32& a, __m256& acc, __m256& mins) {
  if (kOffset<T>) s = _mm256_sub_epi32(s, _mm256_set1_epi32(kOffset<T> * a.sum));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(a.d)), acc);
  if (kMin<T>) mins = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), mins);
}

// one interleaved block against 4 activations at a time, broadcast: lane i sums row i's products
// (codes < 32: four vpmaddubsw outputs fit in int16, 4 * 2 * 31 * 127 < 32768, so one vpmaddwd
// widens four; Q8_0's must widen each)
template <int T>
TM_AVX2 inline __m256i tile_sums(const TileBlock& o, const int8_t* a) {
  const __m256i ones = _mm256_set1_epi16(1);
  const auto u = [&](int s) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(o.u[s])); };
  if constexpr (T == Q8_0) {
    __m256i sum = _mm256_setzero_si256();
    #pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {
      const __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(o.q[s]));
      sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(u(s), _mm256_sign_epi8(bcast4(a + 4 * s), q)), ones));
    }
    return sum;
  } else {
    __m256i h[2];
    #pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) {
      const int s = 4 * k;
      h[k] = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u(s), bcast4(a + 4 * s)),
                                               _mm256_maddubs_epi16(u(s + 1), bcast4(a + 4 * s + 4))),
                              _mm256_add_epi16(_mm256_maddubs_epi16(u(s + 2), bcast4(a + 4 * s + 8)),
                                               _mm256_maddubs_epi16(u(s + 3), bcast4(a + 4 * s + 12))));
    }
    return _mm256_add_epi32(_mm256_madd_epi16(h[0], ones), _mm256_madd_epi16(h[1], ones));
  }
}

TM_AVX2 inline void store_rows(__m256 acc, __m256 mins, bool with_mins, int n, float* out) {
  if (with_mins) acc = _mm256_add_ps(acc, mins);
  if (n == kRows) {
    _mm256_storeu_ps(out, acc);
  } else {
    alignas(32) float tmp[kRows];
    _mm256_store_ps(tmp, acc);
    std::copy(tmp, tmp + n, out);
  }
}

// one activation row (nb Act32 blocks) against the unpacked tile -> out[0..n)
template <int T>
TM_AVX2 void run(const TileBlock* tile, int64_t nb, const Act32* a, int n, float* out) {
  __m256 acc = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const TileBlock& o = tile[b];
    block_step<T>(tile_sums<T>(o, a[b].q), _mm256_load_ps(o.d), _mm256_load_ps(o.m), a[b], acc, mins);
  }
  store_rows(acc, mins, kMin<T>, n, out);
}

// the same from the file's blocks, for one activation row (decode): each row read through in
// turn, its blocks' partial sums kept, then the 8 rows' sums brought together block by block.
// (Reading the 8 rows side by side, block by block, is faster from cache but not from memory:
// an output layer read that way ran at 12 GB/s, read row after row at 21.)
template <int T>
TM_AVX2 void run_rows(const uint8_t* w, int64_t row_bytes, int n, int64_t nb, const Act32* a, float* out) {
  thread_local std::vector<__m256i> part;  // (nb, 8): block b, row i
  if (static_cast<int64_t>(part.size()) < nb * kRows) part.resize(nb * kRows);
  const uint8_t* rows[kRows];  // a short tile repeats its last row; those lanes are not stored
  for (int i = 0; i < kRows; ++i) rows[i] = w + std::min(i, n - 1) * row_bytes;
  for (int i = 0; i < kRows; ++i)
    for (int64_t b = 0; b < nb; ++b) {
      __m256i q;
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + b * kBytes<T> + kPrefetchBytes), _MM_HINT_T0);
      const __m256i u = codes<T>(rows[i] + b * kBytes<T>, q);
      part[b * kRows + i] = block_dot<T>(u, q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q)));
    }
  __m256 acc = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t at = b * kBytes<T>;
    const __m256 d = halves8(rows, at);
    const __m256 m = kMin<T> ? halves8(rows, at + 2) : d;
    block_step<T>(transpose_pairs<T>(&part[b * kRows]), d, m, a[b], acc, mins);
  }
  store_rows(acc, mins, kMin<T>, n, out);
}

template <int T>
TM_AVX2 void tile32(const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act, int64_t stride,
                    int64_t M, float* out, int64_t ldo) {
  const int64_t nb = K / 32;
  drive_tile<TileBlock, Act32>(
      nb, act, stride, M, out, ldo, kDirectRows + 1,
      [&](const Act32* a, float* o) { run_rows<T>(w, row_bytes, n, nb, a, o); },
      [&](TileBlock* tile) { unpack<T>(w, row_bytes, n, nb, tile); },
      [&](const TileBlock* tile, const Act32* a, float* o) { run<T>(tile, nb, a, n, o); });
}

}  // namespace

void unpack_tile32(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t nb, TileBlock* tile) {
  with_type(t, [&](auto T) {
    if constexpr (block_elems(T) == 32) unpack<T>(w, row_bytes, n, nb, tile);
  });
}

void dot_tile32(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act,
                int64_t stride, int64_t M, float* out, int64_t ldo) {
  with_type(t, [&](auto T) {
    if constexpr (block_elems(T) == 32) tile32<T>(w, row_bytes, n, K, act, stride, M, out, ldo);
  });
}

}  // namespace tokenmill::gguf
