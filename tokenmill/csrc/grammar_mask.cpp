// One constrained row's grammar mask with prefix credit (engine/token_alignment.py says why):
// the same arithmetic as credit_prefixes() there, in one pass over the vocabulary instead of a
// dozen tensor ops (~0.4 ms a row in PyTorch, most of a c=16 step's grammar cost).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

// logits (V,) float32, masked in place and returned; bitmask (ceil(V/32),) int32 from llguidance; removed: allowed tokens the
// canonical rule takes out (ignored if nothing would be left); excluded: tokens that get no
// credit (inside forced text); start (V+1,), flat: each token's prefix tokens, longest first.
torch::Tensor grammar_mask(torch::Tensor logits, torch::Tensor bitmask, torch::Tensor removed,
                           torch::Tensor excluded, torch::Tensor start, torch::Tensor flat,
                           int64_t max_candidates, double window) {
  TORCH_CHECK(logits.dim() == 1 && logits.scalar_type() == torch::kFloat32 && logits.is_contiguous());
  const int64_t V = logits.size(0);
  const int32_t* bm = bitmask.data_ptr<int32_t>();
  const int64_t* rm = removed.data_ptr<int64_t>();
  const int64_t* ex = excluded.data_ptr<int64_t>();
  const int32_t* st = start.data_ptr<int32_t>();
  const int32_t* fl = flat.data_ptr<int32_t>();
  const int64_t n_rm = removed.numel(), n_ex = excluded.numel();
  const float NEG = -std::numeric_limits<float>::infinity();
  auto in = [](const int64_t* v, int64_t n, int64_t t) { return std::find(v, v + n, t) != v + n; };
  auto bit = [&](int64_t t) { return t < V && ((bm[t >> 5] >> (t & 31)) & 1); };

  int64_t kept = 0;  // allowed tokens that the canonical rule leaves (counted only if it removes any)
  if (n_rm > 0) {
    for (int64_t w = 0; w * 32 < V; ++w) kept += __builtin_popcount(static_cast<uint32_t>(bm[w]));
    for (int64_t i = 0; i < n_rm; ++i) kept -= bit(rm[i]);
  }
  const bool use_removed = kept > 0;
  auto allowed = [&](int64_t t) { return bit(t) && !(use_removed && in(rm, n_rm, t)); };
  // the main loops: removed tokens are few, so look them up only where the bit is set
  auto allowed_fast = [&](int64_t t) {
    return ((bm[t >> 5] >> (t & 31)) & 1) && !(use_removed && in(rm, n_rm, t));
  };

  // in place: a fresh (V,) output took more time in page faults than the work itself
  float* __restrict__ o = logits.data_ptr<float>();
  // the best allowed logit; 8 running maxima so that the loop is not one long dependency chain
  float acc[8] = {NEG, NEG, NEG, NEG, NEG, NEG, NEG, NEG};
  for (int64_t base = 0; base < V; base += 32) {
    const uint32_t m = static_cast<uint32_t>(bm[base >> 5]);
    if (m == 0) continue;
    if (m == 0xffffffffu && !use_removed && base + 32 <= V) {
      for (int j = 0; j < 32; ++j) acc[j & 7] = std::max(acc[j & 7], o[base + j]);
      continue;
    }
    for (int64_t t = base; t < std::min(V, base + 32); ++t)
      if (allowed_fast(t)) acc[t & 7] = std::max(acc[t & 7], o[t]);
  }
  const float top = *std::max_element(acc, acc + 8);
  if (top == NEG) {  // nothing allowed: every token -inf
    std::fill(o, o + V, NEG);
    return logits;
  }
  const float floor_ = top - static_cast<float>(window);
  std::vector<std::pair<float, int64_t>> cand;  // forbidden tokens worth crediting
  for (int64_t base = 0; base < V; base += 32) {
    const uint32_t m = static_cast<uint32_t>(bm[base >> 5]);
    if (m == 0xffffffffu && !use_removed) continue;  // all allowed
    for (int64_t t = base; t < std::min(V, base + 32); ++t) {
      if (allowed_fast(t)) continue;
      if (o[t] > floor_) cand.emplace_back(o[t], t);
      o[t] = NEG;
    }
  }
  if (static_cast<int64_t>(cand.size()) > max_candidates) {
    std::nth_element(cand.begin(), cand.begin() + max_candidates, cand.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    cand.resize(max_candidates);
  }
  std::vector<std::pair<int64_t, double>> gained;  // (prefix token, credited probability / e^top)
  for (const auto& [v, t] : cand) {
    for (int32_t j = st[t]; j < st[t + 1]; ++j) {
      const int64_t p = fl[j];
      if (!allowed(p) || in(ex, n_ex, p)) continue;
      auto it = std::find_if(gained.begin(), gained.end(), [p](const auto& g) { return g.first == p; });
      const double w = std::exp(static_cast<double>(v) - top);
      if (it == gained.end()) gained.emplace_back(p, w); else it->second += w;
      break;  // the longest allowed prefix only
    }
  }
  for (const auto& [p, g] : gained)
    o[p] = static_cast<float>(std::log(std::exp(static_cast<double>(o[p]) - top) + g) + top);
  return logits;
}
