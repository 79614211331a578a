// Paged attention over the KV cache in place, one query row at a time (CPU, float32).
//
// Every (query token, kv head) pair is computed on its own, reading its sequence's keys and
// values through the block table; the G query heads that share a kv head share each K/V read.
// A row's result depends only on its own query and its own context, never on the batch, the
// chunking of a prompt or padding: batch invariance by construction.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;  // fixed lane order: the same rounding whatever the build vectorizes

inline float dot(const float* a, const float* b, int64_t D) {
  float lanes[kLanes] = {0};
  for (int64_t d = 0; d < D; d += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[d + l] * b[d + l];
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n * p(r), |rel err| < 2e-7.
inline float fast_exp(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.4426950408889634f;          // x / ln 2
  const float n = static_cast<float>(static_cast<int32_t>(t - (t < 0)));  // floor
  const float r = (t - n) * 0.6931471805599453f;     // in [0, ln 2)
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f +
            r * (0.008333334f + r * (0.0013888889f + r * 0.0001984127f))))));
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

}  // namespace

// q: (T, Hq, D); k_cache, v_cache: (Hkv, num_blocks, block_size, D); row_seq: (T,) row of
// block_tables for each query; row_ctx: (T,) keys it may see (its position + 1);
// block_tables: (S, max_blocks). Returns (T, Hq, D).
torch::Tensor paged_attention_rows(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                   torch::Tensor row_seq, torch::Tensor row_ctx,
                                   torch::Tensor block_tables, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32, "float32 only");
  q = q.contiguous();
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hkv = k_cache.size(0), NB = k_cache.size(1), BS = k_cache.size(2);
  const int64_t G = Hq / Hkv, MB = block_tables.size(1);
  TORCH_CHECK(D % kLanes == 0, "head_dim must be a multiple of 16");
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* rs = row_seq.data_ptr<int64_t>();
  const int64_t* rc = row_ctx.data_ptr<int64_t>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, T * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc(G * D);
    std::vector<float> qs(G * D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i / Hkv, h = i % Hkv, n = rc[t];
      const int64_t* table = bt + rs[t] * MB;
      const float* qrow = qp + (t * Hq + h * G) * D;
      for (int64_t x = 0; x < G * D; ++x) qs[x] = qrow[x] * sc;
      scores.resize(G * n);
      for (int64_t j = 0; j < n; ++j) {
        const float* krow = kp + ((h * NB + table[j / BS]) * BS + j % BS) * D;
        for (int64_t g = 0; g < G; ++g) scores[g * n + j] = dot(qs.data() + g * D, krow, D);
      }
      std::vector<float> total(G);
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * n;
        float m = s[0];
        for (int64_t j = 1; j < n; ++j) m = std::max(m, s[j]);
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          s[j] = fast_exp(s[j] - m);
          sum += s[j];
        }
        total[g] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const float* vrow = vp + ((h * NB + table[j / BS]) * BS + j % BS) * D;
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[g * n + j];
          float* a = acc.data() + g * D;
          for (int64_t d = 0; d < D; ++d) a[d] += p * vrow[d];
        }
      }
      float* orow = op + (t * Hq + h * G) * D;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) orow[g * D + d] = acc[g * D + d] / total[g];
    }
  });
  return out;
}
