// GGUF weight blocks as the file stores them, and the int8 activation blocks they meet.
//
// Weight types (codes as in GGML): per row of K inputs, K / block_size blocks of type_size bytes.
//   Q4_0 (2)   18 B / 32:  fp16 d, 16 B nibbles            w = d * (q - 8)
//   Q4_1 (3)   20 B / 32:  fp16 d, fp16 m, 16 B nibbles    w = d * q + m
//   Q5_0 (6)   22 B / 32:  fp16 d, 4 B high bits, nibbles  w = d * (q - 16)
//   Q5_1 (7)   24 B / 32:  fp16 d, m, high bits, nibbles   w = d * q + m
//   Q8_0 (8)   34 B / 32:  fp16 d, 32 int8                 w = d * q
//   Q4_K (12) 144 B / 256: fp16 d, dmin, 12 B of 6-bit (scale, min) x 8, 128 B nibbles
//                          w = d * sc_j * q - dmin * m_j in sub-block j of 32
//   Q5_K (13) 176 B / 256: as Q4_K plus 32 B of fifth bits
//   Q6_K (14) 210 B / 256: 128 B low nibbles, 64 B high 2 bits, 16 int8 scales, fp16 d
//                          w = d * sc_s * (q - 32) in sub-block s of 16
//   F16 (1), BF16 (30): one 2-byte float per weight, run against float32 activations.
// Nibble order of the 32-blocks: byte j holds element j (low) and j + 16 (high). In the K-quants'
// 64-element chunks c: byte 32c + l holds element 64c + l (low) and 64c + 32 + l (high).
//
// Activations, quantized once per call and row (llama.cpp's q8_K and q8_1 ideas):
//   ActK  per 256: float d, 256 int8, 16 int16 sums of 16 (for the K-quants' min and -32 terms)
//   Act32 per 32:  float d, float s = d * sum(q), int sum(q), 32 int8 (for the 32-element types)
// q = round(x / d), d = max|x| / 127: exact int32 sums of weight codes times q, then float.
#pragma once
#include <cstdint>
#include <cstring>

namespace tokenmill::gguf {

enum Type : int {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
};

struct ActK {
  float d;
  int8_t q[256];
  int16_t bsum[16];
};

struct Act32 {
  float d, s;
  int32_t sum;  // for the codes' offset: sum (q - 8) a = sum q a - 8 sum a (Q4_0; 16 for Q5_0)
  int8_t q[32];
};

// block size in elements and bytes; 0 for a type we do not run
constexpr int block_elems(int t) {
  switch (t) {
    case Q4_K: case Q5_K: case Q6_K: return 256;
    case Q4_0: case Q4_1: case Q5_0: case Q5_1: case Q8_0: return 32;
    case F16: case BF16: return 1;
    default: return 0;
  }
}

inline int block_bytes(int t) {
  switch (t) {
    case Q4_0: return 18;
    case Q4_1: return 20;
    case Q5_0: return 22;
    case Q5_1: return 24;
    case Q8_0: return 34;
    case Q4_K: return 144;
    case Q5_K: return 176;
    case Q6_K: return 210;
    case F16: case BF16: return 2;
    default: return 0;
  }
}

// which activation form a type's dot product reads
enum class ActKind { K256, B32, Float };

inline ActKind act_kind(int t) {
  if (t == Q4_K || t == Q5_K || t == Q6_K) return ActKind::K256;
  if (t == F16 || t == BF16) return ActKind::Float;
  return ActKind::B32;
}

inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      uint32_t m = man;
      do { ++e; m <<= 1; } while (!(m & 0x400));
      bits = sign | ((127 - 15 - e) << 23) | ((m & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Q4_K / Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (sub-blocks of 32)
inline void k_scales(const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = q[j] & 63;
    mn[j] = q[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// x (K,) -> K / 256 ActK blocks; x (K,) -> K / 32 Act32 blocks
void quantize_act_k(const float* x, int64_t K, ActK* out);
void quantize_act_32(const float* x, int64_t K, Act32* out);

// R (1..4) activation rows against one weight row of type t: out[r] = sum_k w[k] * x_r[k].
// act: the rows' ActK / Act32 blocks (or float32 for F16 / BF16), row r at act + r * stride bytes.
void dot_rows(int t, const uint8_t* w, int64_t K, const void* act, int64_t stride, int R, float* out);
// The same in plain C++ (the portable path; the tests compare the two).
void dot_rows_scalar(int t, const uint8_t* w, int64_t K, const void* act, int64_t stride, int R, float* out);
// The 32-element types, n (1..8) weight rows (row_bytes apart) against M activation rows at once:
// out[m * ldo + i] = row i times activation row m. Per block and row an exact int32 sum s, then
// acc = fma(float(s), d * a.d, acc) block by block (and mins = fma(m, a.s, mins), added at the
// end for Q4_1 / Q5_1): the same float steps as dot_rows_scalar, for any M. AVX2 only.
void dot_tile32(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act,
                int64_t stride, int64_t M, float* out, int64_t ldo);
// The K-quants the same way (prompt rows: worth unpacking a tile from 4 activation rows on; fewer
// read the file's rows, with AVX-512 where rows512: row_parts_vnni, the same sums).
void dot_tile_k(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act,
                int64_t stride, int64_t M, float* out, int64_t ldo, bool rows512);
// Both kinds with AVX-512 VNNI, n (1..16) weight rows (gguf_vnni.cpp): the same numbers again.
void dot_tile_vnni(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act,
                   int64_t stride, int64_t M, float* out, int64_t ldo);
// One weight row -> K float32 (embedding lookups).
void dequantize_row(int t, const uint8_t* w, int64_t K, float* out);
// Whether the AVX2 code runs here: the tiles, and dot_rows for F16 / BF16 (else dot_rows_scalar).
bool has_avx2();
// Whether dot_tile_vnni runs here (AVX-512 F, BW, VL and VNNI).
bool has_vnni512();

}  // namespace tokenmill::gguf
