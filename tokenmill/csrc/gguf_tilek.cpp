// The K-quants (Q4_K, Q5_K, Q6_K) for prompt rows with AVX2, a tile of 8 weight rows at a time, the
// way gguf_tile32.cpp runs the 32-element types. The tile's blocks are unpacked once into codes,
// the 8 rows interleaved 4 codes at a time (see transpose8), and their scales into vectors laid
// out for vpmaddwd (lane i = row i); then every activation row runs against it, 4 activations
// broadcast to the 8 rows per vpmaddubsw. Per 32 inputs four (Q6_K: two) vpmaddubsw outputs are
// added in int16 (codes < 32: 4 * 2 * 31 * 127 < 32768; Q6_K's < 64) and one vpmaddwd scales and
// widens them, each row's exact int32 block sum building up in its own lane. Then the float steps
// of gguf_scalar.cpp: the same result as the row kernels and the portable path, bit for bit.
#include <algorithm>
#include <vector>

#include "gguf_avx2.h"
#include "gguf_blocks.h"
#include "gguf_tiles.h"

namespace tokenmill::gguf {
namespace {

using namespace avx2;

constexpr int kRows = kTileRows;
constexpr int64_t kTileFrom = 4;  // from this many activation rows on, unpack the tile

// one row's block -> its 256 codes in element order (as gguf_scalar.cpp's codes(), unsigned), and
// its scales (Q6_K: 16) or scales and mins (Q4_K / Q5_K: 8 each)
template <int T>
TM_AVX2 void unpack_row(const uint8_t* blk, uint8_t* u, int* sc, int* mn, float& d, float& dmin) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const auto store = [&](int at, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(u + at), v); };
  if constexpr (T == Q6_K) {
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
      const auto top = [&](int shift) {
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, shift), m2), 4);
      };
      store(128 * h, _mm256_or_si256(_mm256_and_si256(l0, m4), top(0)));
      store(128 * h + 32, _mm256_or_si256(_mm256_and_si256(l1, m4), top(2)));
      store(128 * h + 64, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), top(4)));
      store(128 * h + 96, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), top(6)));
    }
    for (int s = 0; s < 16; ++s) sc[s] = static_cast<int8_t>(blk[192 + s]);
    d = fp16(blk + 208);
    dmin = 0.f;
  } else {
    const uint8_t* qs = blk + (T == Q4_K ? 16 : 48);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16));
    const __m256i one = _mm256_set1_epi8(1);
    for (int c = 0; c < 4; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      if (T == Q5_K) {  // bit 2c of qh byte l -> element 64c + l, bit 2c + 1 -> 64c + 32 + l
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      store(64 * c, lo);
      store(64 * c + 32, hi);
    }
    uint8_t s8[8], m8[8];
    k_scales(blk + 4, s8, m8);
    for (int j = 0; j < 8; ++j) sc[j] = s8[j], mn[j] = m8[j];
    d = fp16(blk);
    dmin = fp16(blk + 2);
  }
}

template <int T>
TM_AVX2 void unpack(const uint8_t* w, int64_t row_bytes, int n, int64_t nb, TileK* tile) {
  constexpr int bytes = T == Q4_K ? 144 : T == Q5_K ? 176 : 210;
  alignas(32) uint8_t u[kRows][256];
  for (int64_t b = 0; b < nb; ++b) {
    TileK& o = tile[b];
    int sc[kRows][16] = {}, mn[kRows][8] = {};
    for (int i = 0; i < kRows; ++i) {
      if (i < n) {
        unpack_row<T>(w + i * row_bytes + b * bytes, u[i], sc[i], mn[i], o.d[i], o.dmin[i]);
      } else {  // a short tile: rows of zeros
        std::fill(u[i], u[i] + 256, 0);
        o.d[i] = o.dmin[i] = 0.f;
      }
    }
    for (int j = 0; j < 8; ++j) {
      __m256i rows[kRows];
      for (int i = 0; i < kRows; ++i) rows[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(u[i] + 32 * j));
      transpose8(rows, reinterpret_cast<__m256i*>(o.u[j]));
    }
    constexpr int subs = T == Q6_K ? 16 : 8;
    for (int t = 0; t < subs; ++t)
      for (int e = 0; e < 16; ++e) o.sc[t][e] = static_cast<int16_t>(sc[e / 2][t]);
    for (int k = 0; k < (T == Q6_K ? 8 : 4); ++k)
      for (int i = 0; i < kRows; ++i) {
        const int* v = T == Q6_K ? sc[i] : mn[i];
        o.pairs[k][i][0] = static_cast<int16_t>(v[2 * k]), o.pairs[k][i][1] = static_cast<int16_t>(v[2 * k + 1]);
      }
  }
}

TM_AVX2 inline __m256i vload(const void* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

// sum_k pairs_k . (v_2k, v_2k+1) for each row: v as int16 (activation sums)
TM_AVX2 inline __m256i pair_dot(const TileK& o, const int16_t* v, int n_pairs) {
  __m256i s = _mm256_setzero_si256();
  for (int k = 0; k < n_pairs; ++k) {
    int32_t both;
    std::memcpy(&both, v + 2 * k, 4);
    s = _mm256_add_epi32(s, _mm256_madd_epi16(vload(o.pairs[k]), _mm256_set1_epi32(both)));
  }
  return s;
}

// the 8 rows' products of codes (4 at a time, from step s of sub-block j) and 4 activations
TM_AVX2 inline __m256i dot4(const TileK& o, const ActK& x, int j, int s) {
  return _mm256_maddubs_epi16(vload(o.u[j][s]), bcast4(x.q + 32 * j + 4 * s));
}

// one activation row (nb ActK blocks) against the tile -> out[0..n)
template <int T>
TM_AVX2 void run(const TileK* tile, int64_t nb, const ActK* a, int n, float* out) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const TileK& o = tile[b];
    const ActK& x = a[b];
    __m256i sum = _mm256_setzero_si256();
    if constexpr (T == Q6_K) {
      #pragma GCC unroll 8
      for (int j = 0; j < 8; ++j)
        #pragma GCC unroll 4
        for (int h = 0; h < 4; ++h) {  // 8 inputs of 16-sub-block 2j + h / 2: two outputs fit in int16
          const __m256i p = _mm256_add_epi16(dot4(o, x, j, 2 * h), dot4(o, x, j, 2 * h + 1));
          sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, vload(o.sc[2 * j + h / 2])));
          TM_KEEP(sum);
        }
      const __m256i off = _mm256_slli_epi32(pair_dot(o, x.bsum, 8), 5);  // 32 * sum_s sc_s * (sum of 16 a)
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sum, off)),
                            _mm256_mul_ps(_mm256_load_ps(o.d), _mm256_set1_ps(x.d)), acc);
    } else {
      #pragma GCC unroll 8
      for (int j = 0; j < 8; ++j)
        #pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {  // 16 inputs: four outputs fit in int16
          const __m256i p = _mm256_add_epi16(_mm256_add_epi16(dot4(o, x, j, 4 * h), dot4(o, x, j, 4 * h + 1)),
                                             _mm256_add_epi16(dot4(o, x, j, 4 * h + 2), dot4(o, x, j, 4 * h + 3)));
          sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, vload(o.sc[j])));
          TM_KEEP(sum);
        }
      int16_t sums32[8];  // the activations' sums of 32, from the sums of 16
      for (int j = 0; j < 8; ++j) sums32[j] = static_cast<int16_t>(x.bsum[2 * j] + x.bsum[2 * j + 1]);
      const __m256 summ = _mm256_cvtepi32_ps(pair_dot(o, sums32, 4));
      const __m256 t = _mm256_fnmadd_ps(_mm256_load_ps(o.dmin), summ, _mm256_mul_ps(_mm256_load_ps(o.d), _mm256_cvtepi32_ps(sum)));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(x.d), t, acc);
    }
  }
  alignas(32) float tmp[kRows];
  _mm256_store_ps(tmp, acc);
  std::copy(tmp, tmp + n, out);
}

// control for _mm256_shuffle_epi8 broadcasting int16 element lo (low 128 bits) and hi (high)
TM_AVX2 inline __m256i pick16(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(0x0100 + 0x0202 * hi)),
                          _mm_set1_epi16(static_cast<short>(0x0100 + 0x0202 * lo)));
}

// One weight row against one activation row (decode): per block the int32 lanes of
// sum_j sc_j (codes . a) and of sum_j min_j (sums of 32 a) -> sums[b * kRows], mins[b * kRows].
// Chunk by chunk, codes as in gguf_scalar.cpp, scales spread by shuffles.
template <bool Q5>
TM_AVX2 void row_parts_k45(const uint8_t* w, int64_t nb, const ActK* act, __m256i* sums, __m256i* mins) {
  const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  __m256i pick[8];  // scale j in every lane: chunk c's low nibbles take 2c, its high ones 2c + 1
  #pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) pick[j] = pick16(j, j);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * (Q5 ? 176 : 144);
    prefetch_ahead(blk, Q5 ? 176 : 144);
    const ActK& a = act[b];
    const __m128i sm8 = k_scales_vec(blk + 4);
    const __m256i sm = _mm256_cvtepu8_epi16(sm8);
    const __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);  // 8 scales in both lanes
    // mins, each twice: element 2j, 2j + 1 = min j, against the 16 sums of 16 activations
    const __m256i mn = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(sm8, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    mins[b * kRows] = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum)), mn);
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    const __m256i qh = Q5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)) : m4;
    __m256i sum = _mm256_setzero_si256();
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      if (Q5) {  // bit 2c of qh byte l -> element 64c + l, bit 2c + 1 -> 64c + 32 + l
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 64 * c));
      const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 64 * c + 32));
      const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), _mm256_shuffle_epi8(scales, pick[2 * c]));
      const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), _mm256_shuffle_epi8(scales, pick[2 * c + 1]));
      sum = _mm256_add_epi32(sum, _mm256_add_epi32(p0, p1));
      TM_KEEP(sum);
    }
    sums[b * kRows] = sum;
  }
}

// Q6_K the same: per block the int32 lanes of sum_s sc_s (codes - 32) . a -> sums[b * kRows]
TM_AVX2 void row_parts_q6k(const uint8_t* w, int64_t nb, const ActK* act, __m256i* sums) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
  __m256i pick[4];  // group g of a half: scale 2g (elements 0..15), 2g + 1 (16..31)
  #pragma GCC unroll 8
  for (int g = 0; g < 4; ++g) pick[g] = pick16(2 * g, 2 * g + 1);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * 210;
    prefetch_ahead(blk, 210);
    const ActK& a = act[b];
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
    // the codes' offset first: -32 * sum_s sc_s * (sum of 16 activations)
    __m256i sum = _mm256_sub_epi32(_mm256_setzero_si256(),
        _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum))), 5));
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
        const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 128 * h + 32 * g));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], av), _mm256_shuffle_epi8(sh, pick[g])));
        TM_KEEP(sum);
      }
    }
    sums[b * kRows] = sum;
  }
}

// one activation row against 8 weight rows read one after another (decode; see gguf_tile32.cpp's
// run_rows): each row's per-block sums kept, then the 8 rows' sums brought together block by block
template <int T>
TM_AVX2 void run_rows(const uint8_t* w, int64_t row_bytes, int n, int64_t nb, const ActK* a, float* out,
                      bool rows512) {
  constexpr int bytes = T == Q4_K ? 144 : T == Q5_K ? 176 : 210;
  thread_local std::vector<__m256i> part;  // (nb, 2, 8): block b, sums / mins, row i
  if (static_cast<int64_t>(part.size()) < 2 * nb * kRows) part.resize(2 * nb * kRows);
  __m256i* sums = part.data();
  __m256i* mins = part.data() + nb * kRows;
  const uint8_t* rows[kRows];  // a short tile repeats its last row; those lanes are not stored
  for (int i = 0; i < kRows; ++i) rows[i] = w + std::min(i, n - 1) * row_bytes;
  for (int i = 0; i < kRows; ++i) {
    if (rows512) row_parts_vnni(T, rows[i], nb, a, sums + i, mins + i);
    else if constexpr (T == Q6_K) row_parts_q6k(rows[i], nb, a, sums + i);
    else row_parts_k45<T == Q5_K>(rows[i], nb, a, sums + i, mins + i);
  }
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const ActK& x = a[b];
    if constexpr (T == Q6_K) {
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(transpose_sum(sums + b * kRows)),
                            _mm256_mul_ps(halves8(rows, b * bytes + 208), _mm256_set1_ps(x.d)), acc);
    } else {
      const __m256 sum = _mm256_cvtepi32_ps(transpose_sum(sums + b * kRows));
      const __m256 summ = _mm256_cvtepi32_ps(transpose_sum(mins + b * kRows));
      const __m256 t = _mm256_fnmadd_ps(halves8(rows, b * bytes + 2), summ, _mm256_mul_ps(halves8(rows, b * bytes), sum));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(x.d), t, acc);
    }
  }
  alignas(32) float tmp[kRows];
  _mm256_store_ps(tmp, acc);
  std::copy(tmp, tmp + n, out);
}

template <int T>
TM_AVX2 void tile_k(const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act, int64_t stride,
                    int64_t M, float* out, int64_t ldo, bool rows512) {
  const int64_t nb = K / 256;
  drive_tile<TileK, ActK>(
      nb, act, stride, M, out, ldo, kTileFrom,
      [&](const ActK* a, float* o) { run_rows<T>(w, row_bytes, n, nb, a, o, rows512); },
      [&](TileK* tile) { unpack<T>(w, row_bytes, n, nb, tile); },
      [&](const TileK* tile, const ActK* a, float* o) { run<T>(tile, nb, a, n, o); });
}

}  // namespace

void unpack_tile_k(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t nb, TileK* tile) {
  with_type(t, [&](auto T) {
    if constexpr (block_elems(T) == 256) unpack<T>(w, row_bytes, n, nb, tile);
  });
}

void dot_tile_k(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act,
                int64_t stride, int64_t M, float* out, int64_t ldo, bool rows512) {
  with_type(t, [&](auto T) {
    if constexpr (block_elems(T) == 256) tile_k<T>(w, row_bytes, n, K, act, stride, M, out, ldo, rows512);
  });
}

}  // namespace tokenmill::gguf
