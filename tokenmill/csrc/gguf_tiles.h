// The 8-row tiles the AVX2 prompt kernels unpack a GGUF weight into (gguf_tile32.cpp,
// gguf_tilek.cpp), shared with the AVX-512 VNNI kernels (gguf_vnni.cpp), which lay two of them
// side by side as one 16-row tile.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "gguf_blocks.h"

namespace tokenmill::gguf {

constexpr int kTileRows = 8;

// one 32-block of a tile's 8 rows, interleaved: u[s] holds codes 4s .. 4s + 3 of row i at bytes
// 4i .. 4i + 3 (see avx2::transpose8)
struct alignas(32) TileBlock {
  float d[kTileRows], m[kTileRows];
  uint8_t u[8][32];  // codes, unsigned (|q| for Q8_0)
  int8_t q[8][32];   // Q8_0's signed codes: their signs go onto the activations
};

// one 256-block of a tile's 8 rows
struct alignas(32) TileK {
  uint8_t u[8][8][32];  // [32-sub-block j][step s]: codes 32j + 4s .. + 3 of row i at bytes 4i ..
                        // 4i + 3; codes 0..31 (Q4_K / Q5_K) or 0..63 (Q6_K)
  // lane i: row i's scale as an int16 pair (sc_i, sc_i); Q4_K / Q5_K: per 32-sub-block (8),
  // Q6_K: per 16-sub-block (16)
  int16_t sc[16][16];
  // Q4_K / Q5_K: mins as int16 pairs (m_2k, m_2k+1) per row, k = 0..3; Q6_K: scales as pairs
  // (sc_2k, sc_2k+1) per row, k = 0..7 (for the -32 offset)
  int16_t pairs[8][kTileRows][2];
  float d[kTileRows], dmin[kTileRows];
};

// f(std::integral_constant<int, T>{}) for the quantized type t, T its compile-time value (the
// kernels are templates on the type); F16, BF16 and unknown types: nothing
template <typename F>
inline void with_type(int t, F f) {
  switch (t) {
    case Q4_0: return f(std::integral_constant<int, Q4_0>{});
    case Q4_1: return f(std::integral_constant<int, Q4_1>{});
    case Q5_0: return f(std::integral_constant<int, Q5_0>{});
    case Q5_1: return f(std::integral_constant<int, Q5_1>{});
    case Q8_0: return f(std::integral_constant<int, Q8_0>{});
    case Q4_K: return f(std::integral_constant<int, Q4_K>{});
    case Q5_K: return f(std::integral_constant<int, Q5_K>{});
    case Q6_K: return f(std::integral_constant<int, Q6_K>{});
  }
}

// n (0..8) weight rows of type t, row_bytes apart, nb blocks each -> nb tile blocks (rows past n
// are zeros). AVX2.
void unpack_tile32(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t nb, TileBlock* tile);
void unpack_tile_k(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t nb, TileK* tile);

// One weight row of type t (Q4_K, Q5_K, Q6_K), nb blocks, against one activation row with AVX-512
// (gguf_rows_vnni.cpp, where has_vnni512()): per block b, int32 lanes whose total is the block's exact
// sum of scale x codes x activations (Q6_K: with its -32 offset) at sums[b * kTileRows], and for
// Q4_K / Q5_K those of its mins x activation sums at mins[b * kTileRows]: the AVX2 rows' totals.
void row_parts_vnni(int t, const uint8_t* w, int64_t nb, const ActK* act, __m256i* sums, __m256i* mins);

}  // namespace tokenmill::gguf
