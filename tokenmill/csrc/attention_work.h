// The paged attention of a step split into independent pieces, so that two callers can share
// them: paged_attention_rows (its own parallel_for) and decode_loop.cpp's thread team.
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace tokenmill {

// int8 rows are scaled: a key's score is q . k_int * scale, a value's weight p * scale
template <typename C>
constexpr bool kScaled = std::is_same_v<C, int8_t>;

// the float32 scale stored after an int8 row's D values
inline float row_scale(const int8_t* row, int64_t D) {
  float s;
  std::memcpy(&s, row + D, sizeof s);
  return s;
}

// One (rows, kv head, chunk) task with AVX2 and FMA (attention_avx2.cpp), where the keys of row r
// are [s_row[r], n_row[r]) of the chunk (a sliding window masks the first ones), scores soft-capped
// where softcap > 0. Arguments as paged_attention.cpp's chunk_avx512; pr: GR x [unnormalized
// output (D), max, sum].
template <typename C>
void chunk_avx2(const float* qs, const int8_t* qi, const float* qscale, int64_t GR, int64_t G,
                int64_t D, const C* k, const C* v, const int64_t* off, const int64_t* s_row,
                const int64_t* n_row, int64_t R, float softcap, float* scores, int64_t ld_scores, float* pr);
bool has_avx2();

// Split-K ("flash decoding"): a row's context is cut into chunks of kChunk keys at fixed
// positions (0, kChunk, 2 kChunk, ...), each chunk one task (so one long row keeps every thread
// busy), then the chunks are merged in order. Chunk edges depend only on the row's own length.
constexpr int64_t kChunk = 256;
// A prompt's consecutive rows go in groups of up to kGroupRows (and kMaxHeads query heads) per
// task: they share every key's load and conversion (int8 caches: half as many rows, up to
// kMaxHeadsInt8 heads).
constexpr int64_t kGroupRows = 16;
constexpr int64_t kMaxHeads = 48;
constexpr int64_t kMaxHeadsInt8 = 24;

// One thread's working memory for tasks and merges.
struct AttentionScratch {
  // GR: the query heads of a group of rows, G x its rows
  std::vector<float> scores;  // (GR, kChunk)
  std::vector<float> qs;      // (GR, D): the scaled queries
  std::vector<int64_t> off;   // (kChunk,): each key's row in its head's cache, in elements
  std::vector<float> acc;     // (GR, D + 2): a task's results; (D,): a merge's sum
  std::vector<int8_t> qi;     // (GR, D): an int8 cache's queries as int8
  std::vector<float> qscale;  // (GR,): their scales
};

// C: the cache element (float, at::Half or int8_t; defined in paged_attention.cpp for these).
template <typename C>
struct AttentionWork {
  // query row t, head h at q + t * ldq + h * D (float32); output likewise at out + t * ldo
  const float* q = nullptr;
  int64_t ldq = 0;
  float* out = nullptr;
  int64_t ldo = 0;
  const C* k = nullptr;  // this layer's caches, (Hkv, NB, BS, RS)
  const C* v = nullptr;
  int64_t T = 0, Hq = 0, Hkv = 0, D = 0, NB = 0, BS = 0, RS = 0, MB = 0;
  const int64_t* row_seq = nullptr;  // (T,) row of block_tables
  const int64_t* row_ctx = nullptr;  // (T,) keys each row sees
  const int64_t* block_tables = nullptr;  // (S, MB)
  float scale = 1.f;
  // a sliding window: a row sees only its last `window` keys (0: all of them); its chunks start
  // at the one holding its first key, and keys before it in that chunk are masked
  int64_t window = 0;
  // gemma2: every score s becomes softcap * tanh(s / softcap) before the softmax (0: none)
  float softcap = 0.f;

  // Everything but q and out from the tensors (checked): caches (Hkv, NB, BS, RS), row_seq and
  // row_ctx (T,), block_tables (S, MB).
  void describe(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& row_seq,
                const at::Tensor& row_ctx, const at::Tensor& block_tables, int64_t T, int64_t Hq,
                int64_t D, double scale);
  // Sizes the task list and the partial results from the rows; the layers of a step share it.
  void plan();
  int64_t tasks() const { return static_cast<int64_t>(unit_row.size()) * Hkv; }
  int64_t merges() const { return T * Hkv; }
  // z in [0, tasks()); scratch from new_scratch(), one per thread
  void run_task(int64_t z, AttentionScratch& scratch) const;
  // i in [0, merges()): row i / Hkv, kv head i % Hkv; after every task of the row
  void merge(int64_t i, AttentionScratch& scratch) const;
  AttentionScratch new_scratch() const;

 private:
  std::vector<int64_t> first_task;  // (T + 1,): row t's chunks are first_task[t] ..
  std::vector<int64_t> first_chunk;  // (T,): the chunk of row t's first key (0 without a window)
  int64_t first_key(int64_t t) const { return window > 0 ? std::max<int64_t>(0, row_ctx[t] - window) : 0; }
  std::vector<int64_t> unit_row, unit_rows, unit_chunk;  // per (group, chunk): first row, rows, chunk
  mutable std::vector<float> part;  // per (chunk, kv head): G x [unnormalized out (D), max, sum]
};

}  // namespace tokenmill
