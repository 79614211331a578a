// Prompt rows on GGUF blocks with AVX-512 VNNI: a tile of 16 weight rows (two of the AVX2 kernels'
// 8-row tiles side by side, gguf_tiles.h), every step one vpdpbusd of a 64-byte vector (4 codes of
// each of the 16 rows) against 4 activations broadcast from memory, which adds the 4 products into
// the row's own int32 lane: no int16 stage, no horizontal adds. 8 activation rows run at a time,
// so each vector of codes loaded serves 8 vpdpbusd. The codes' scales multiply exact int32 sums
// (one vpmulld per 16 or 32 inputs), then the float steps of gguf_scalar.cpp lane by lane: the
// AVX2 tiles' and the portable path's numbers, bit for bit. Decode rows stay with the AVX2 row
// kernels (reading the weights from memory is their cost, not the multiplies).
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gguf_blocks.h"
#include "gguf_tiles.h"

#define TM_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace tokenmill::gguf {
namespace {

constexpr int kRows = 16;
// activation rows per pass over the tile: 8 independent vpdpbusd chains keep the multiply pipes
// busy (4 left them waiting on each other's latency), and each code vector loaded serves 8
constexpr int kGroup = 8;

// one 32-block of 16 rows: u[s] bytes 4i .. 4i + 3 = codes 4s .. 4s + 3 of row i (Q8_0: q + 128)
struct alignas(64) Block32 {
  uint8_t u[8][64];
  float d[kRows], m[kRows];
};

// one 256-block of 16 rows: u[8j + s] as Block32's u[s] for 32-sub-block j; sc[t] lane i = row i's
// scale of sub-block t (8 of 32 for Q4_K / Q5_K, 16 of 16 for Q6_K); pairs as TileK's, 16 rows
struct alignas(64) BlockK {
  uint8_t u[64][64];
  int32_t sc[16][kRows];
  int16_t pairs[8][kRows][2];
  float d[kRows], dmin[kRows];
};

template <int T>
constexpr int kBytes = T == Q4_0 ? 18 : T == Q4_1 ? 20 : T == Q5_0 ? 22 : T == Q5_1 ? 24 : 34;
template <int T>
constexpr int kOffset = T == Q4_0 ? 8 : T == Q5_0 ? 16 : T == Q8_0 ? 128 : 0;  // sum (code - off) a
template <int T>
constexpr bool kMin = T == Q4_1 || T == Q5_1;

// rows 8h .. 8h + 7 of a 16-row tile: how many of the n are there
inline int half_rows(int n, int h) { return std::clamp(n - 8 * h, 0, 8); }

template <int T>
void unpack32(const uint8_t* w, int64_t row_bytes, int n, int64_t nb, Block32* tile) {
  TileBlock half;
  for (int64_t b = 0; b < nb; ++b)
    for (int h = 0; h < 2; ++h) {
      unpack_tile32(T, w + 8 * h * row_bytes + b * kBytes<T>, row_bytes, half_rows(n, h), 1, &half);
      for (int s = 0; s < 8; ++s)
        for (int x = 0; x < 32; ++x)
          tile[b].u[s][32 * h + x] = T == Q8_0 ? static_cast<uint8_t>(half.q[s][x] ^ 0x80) : half.u[s][x];
      std::copy(half.d, half.d + 8, tile[b].d + 8 * h);
      std::copy(half.m, half.m + 8, tile[b].m + 8 * h);
    }
}

template <int T>
void unpack_k(const uint8_t* w, int64_t row_bytes, int n, int64_t nb, BlockK* tile) {
  constexpr int bytes = T == Q4_K ? 144 : T == Q5_K ? 176 : 210;
  TileK half;
  for (int64_t b = 0; b < nb; ++b)
    for (int h = 0; h < 2; ++h) {
      BlockK& o = tile[b];
      unpack_tile_k(T, w + 8 * h * row_bytes + b * bytes, row_bytes, half_rows(n, h), 1, &half);
      for (int j = 0; j < 8; ++j)
        for (int s = 0; s < 8; ++s) std::copy(half.u[j][s], half.u[j][s] + 32, o.u[8 * j + s] + 32 * h);
      for (int t = 0; t < 16; ++t)
        for (int i = 0; i < 8; ++i) o.sc[t][8 * h + i] = half.sc[t][2 * i];
      for (int k = 0; k < 8; ++k)
        for (int i = 0; i < 8; ++i) o.pairs[k][8 * h + i][0] = half.pairs[k][i][0], o.pairs[k][8 * h + i][1] = half.pairs[k][i][1];
      std::copy(half.d, half.d + 8, o.d + 8 * h);
      std::copy(half.dmin, half.dmin + 8, o.dmin + 8 * h);
    }
}

TM_VNNI inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

TM_VNNI inline __m512i vload(const void* p) { return _mm512_load_si512(p); }

// the G rows' n outputs
template <int G>
TM_VNNI inline void store(const __m512* acc, int n, float* out, int64_t ldo) {
  const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
  #pragma GCC unroll 8
  for (int r = 0; r < G; ++r) _mm512_mask_storeu_ps(out + r * ldo, keep, acc[r]);
}

// p[r] = S steps of codes (u[0 .. S): 4 inputs of each of the 16 rows) times activation row r's
// q[r][0 .. 4 S), 4 broadcast at a time: the 16 rows' exact int32 sums, lane by lane
template <int G, int S>
TM_VNNI inline void dot_steps(const uint8_t (*u)[64], const int8_t* const* q, __m512i* p) {
  #pragma GCC unroll 8
  for (int r = 0; r < G; ++r) p[r] = _mm512_setzero_si512();
  #pragma GCC unroll 8
  for (int k = 0; k < S; ++k) {
    const __m512i v = vload(u[k]);
    #pragma GCC unroll 8
    for (int r = 0; r < G; ++r) p[r] = _mm512_dpbusd_epi32(p[r], v, bcast4(q[r] + 4 * k));
  }
}

// G activation rows (a[r]: nb Act32 blocks) against the tile -> out[r * ldo + 0 .. n)
template <int T, int G>
TM_VNNI void run32(const Block32* tile, int64_t nb, const Act32* const* a, int n, float* out, int64_t ldo) {
  __m512 acc[G], mins[G];
  #pragma GCC unroll 8
  for (int r = 0; r < G; ++r) acc[r] = mins[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const Block32& o = tile[b];
    const int8_t* q[G];
    #pragma GCC unroll 8
    for (int r = 0; r < G; ++r) q[r] = a[r][b].q;
    __m512i s[G];
    dot_steps<G, 8>(o.u, q, s);
    const __m512 d = _mm512_load_ps(o.d);
    #pragma GCC unroll 8
    for (int r = 0; r < G; ++r) {  // block_step of gguf_tile32.cpp
      const Act32& x = a[r][b];
      if (kOffset<T>) s[r] = _mm512_sub_epi32(s[r], _mm512_set1_epi32(kOffset<T> * x.sum));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(d, _mm512_set1_ps(x.d)), acc[r]);
      if (kMin<T>) mins[r] = _mm512_fmadd_ps(_mm512_load_ps(o.m), _mm512_set1_ps(x.s), mins[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < G; ++r)
    if (kMin<T>) acc[r] = _mm512_add_ps(acc[r], mins[r]);
  store<G>(acc, n, out, ldo);
}

// sum_k pairs_k . (v_2k, v_2k+1) for each of the 16 rows
TM_VNNI inline __m512i pair_dot(const BlockK& o, const int16_t* v, int n_pairs) {
  __m512i s = _mm512_setzero_si512();
  for (int k = 0; k < n_pairs; ++k) {
    int32_t both;
    std::memcpy(&both, v + 2 * k, 4);
    s = _mm512_dpwssd_epi32(s, vload(o.pairs[k]), _mm512_set1_epi32(both));
  }
  return s;
}

// G activation rows (nb ActK blocks each) against the tile -> out[r * ldo + 0 .. n)
template <int T, int G>
TM_VNNI void run_k(const BlockK* tile, int64_t nb, const ActK* const* a, int n, float* out, int64_t ldo) {
  constexpr int subs = T == Q6_K ? 16 : 8, steps = 64 / subs;  // steps of 4 inputs per scale
  __m512 acc[G];
  #pragma GCC unroll 8
  for (int r = 0; r < G; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const BlockK& o = tile[b];
    __m512i sum[G];
    #pragma GCC unroll 8
    for (int r = 0; r < G; ++r) sum[r] = _mm512_setzero_si512();
    #pragma GCC unroll 16
    for (int t = 0; t < subs; ++t) {
      const int8_t* q[G];  // sub-block t's inputs
      #pragma GCC unroll 8
      for (int r = 0; r < G; ++r) q[r] = a[r][b].q + 4 * steps * t;
      __m512i p[G];
      dot_steps<G, steps>(o.u + steps * t, q, p);
      const __m512i sc = vload(o.sc[t]);
      #pragma GCC unroll 8
      for (int r = 0; r < G; ++r) sum[r] = _mm512_add_epi32(sum[r], _mm512_mullo_epi32(p[r], sc));
    }
    #pragma GCC unroll 8
    for (int r = 0; r < G; ++r) {  // the float steps of gguf_tilek.cpp's run
      const ActK& x = a[r][b];
      if constexpr (T == Q6_K) {
        const __m512i off = _mm512_slli_epi32(pair_dot(o, x.bsum, 8), 5);  // 32 * sum_s sc_s * (sum of 16 a)
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum[r], off)),
                                 _mm512_mul_ps(_mm512_load_ps(o.d), _mm512_set1_ps(x.d)), acc[r]);
      } else {
        int16_t sums32[8];  // the activations' sums of 32, from the sums of 16
        for (int j = 0; j < 8; ++j) sums32[j] = static_cast<int16_t>(x.bsum[2 * j] + x.bsum[2 * j + 1]);
        const __m512 summ = _mm512_cvtepi32_ps(pair_dot(o, sums32, 4));
        const __m512 t = _mm512_fnmadd_ps(_mm512_load_ps(o.dmin), summ,
                                          _mm512_mul_ps(_mm512_load_ps(o.d), _mm512_cvtepi32_ps(sum[r])));
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x.d), t, acc[r]);
      }
    }
  }
  store<G>(acc, n, out, ldo);
}

// f(std::integral_constant<int, G>{}) for the largest G in {1, 2, 4, 8} that is at most g
template <typename F>
void with_group(int64_t g, F f) {
  if (g >= 8) return f(std::integral_constant<int, 8>{});
  if (g >= 4) return f(std::integral_constant<int, 4>{});
  if (g >= 2) return f(std::integral_constant<int, 2>{});
  return f(std::integral_constant<int, 1>{});
}

// Unpack the tile once (into this thread's buffer), then run the M activation rows kGroup at a time.
template <int T>
void tile(const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act, int64_t stride, int64_t M,
          float* out, int64_t ldo) {
  constexpr bool k_quant = block_elems(T) == 256;
  using Block = std::conditional_t<k_quant, BlockK, Block32>;
  using Act = std::conditional_t<k_quant, ActK, Act32>;
  const int64_t nb = K / block_elems(T);
  thread_local std::vector<Block> tile;
  if (static_cast<int64_t>(tile.size()) < nb) tile.resize(nb);
  if constexpr (k_quant) unpack_k<T>(w, row_bytes, n, nb, tile.data());
  else unpack32<T>(w, row_bytes, n, nb, tile.data());
  const Act* rows[kGroup];
  for (int64_t m = 0; m < M;) {
    with_group(M - m, [&](auto G) {
      for (int r = 0; r < G; ++r)
        rows[r] = reinterpret_cast<const Act*>(static_cast<const uint8_t*>(act) + (m + r) * stride);
      if constexpr (k_quant) run_k<T, G>(tile.data(), nb, rows, n, out + m * ldo, ldo);
      else run32<T, G>(tile.data(), nb, rows, n, out + m * ldo, ldo);
      m += G;
    });
  }
}

}  // namespace

bool has_vnni512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return yes;
}

void dot_tile_vnni(int t, const uint8_t* w, int64_t row_bytes, int n, int64_t K, const void* act, int64_t stride,
                   int64_t M, float* out, int64_t ldo) {
  with_type(t, [&](auto T) { tile<T>(w, row_bytes, n, K, act, stride, M, out, ldo); });
}

}  // namespace tokenmill::gguf
