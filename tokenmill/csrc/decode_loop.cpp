// The decoder layers of a step in one C++ call (CPU, float32, packed int8 or 4-bit weights).
//
// A decode step of a small model is ~30 short kernel calls per layer; from Python each costs a
// few microseconds of dispatch, a few milliseconds a step in all. This loop makes the same
// calls, to the same kernels, in the same order as LlamaForCausalLM.forward does (so the numbers
// are identical, bit for bit), without the interpreter between them. Every step whose attention
// goes to the C++ kernel (all steps on CPU with it) runs here, prompt chunks included.
#include <ATen/ATen.h>

#include <vector>

at::Tensor int8_linear_packed(at::Tensor x, at::Tensor wp, at::Tensor wscale, at::Tensor wsum,
                              at::Tensor bias, int64_t N);
at::Tensor q4_linear(at::Tensor x, at::Tensor packed, at::Tensor bias, int64_t N);
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps);
at::Tensor add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor w, double eps);
at::Tensor silu_mul(at::Tensor gate_up);
void rope_and_cache(at::Tensor qkv, at::Tensor positions, at::Tensor cos, at::Tensor sin,
                    at::Tensor k_cache, at::Tensor v_cache, at::Tensor slot_mapping, int64_t Hq,
                    int64_t Hkv);
at::Tensor paged_attention_rows(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                at::Tensor row_seq, at::Tensor row_ctx, at::Tensor block_tables,
                                double scale);

namespace {

// w: int8 packed weight, scale (N,), wsum (N,), bias (N,) or empty; or 4-bit records (uint8,
// N / 16 groups), two unused slots, bias
at::Tensor linear(const at::Tensor& x, const at::Tensor* w) {
  if (w[0].scalar_type() == at::kByte) return q4_linear(x, w[0], w[3], 16 * w[0].size(0));
  return int8_linear_packed(x, w[0], w[1], w[2], w[3], w[1].size(0));
}

constexpr int64_t kPerLayer = 18;  // see decode_layers

}  // namespace

// x (T, H): the embeddings; layers: per layer [input norm w, qkv (4), o (4), post norm w,
// gate_up (4), down (4)], each linear as (packed, scale, wsum, bias) or (records, -, -, bias). Returns the final norm's
// output (T, H), as LlamaForCausalLM.forward.
at::Tensor decode_layers(at::Tensor x, at::Tensor positions, std::vector<at::Tensor> layers,
                         std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches,
                         at::Tensor slot_mapping, at::Tensor row_seq, at::Tensor row_ctx,
                         at::Tensor block_tables, at::Tensor cos, at::Tensor sin,
                         at::Tensor final_norm, double eps, double scale, int64_t Hq,
                         int64_t Hkv) {
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == kPerLayer * static_cast<int64_t>(k_caches.size()),
              "decode_layers: weights and caches disagree");
  const int64_t T = x.size(0), L = k_caches.size();
  at::Tensor residual = x, h;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = layers.data() + l * kPerLayer;
    h = l == 0 ? rms_norm(x, w[0], eps) : add_rms_norm(x, residual, w[0], eps);  // residual += x
    at::Tensor qkv = linear(h, w + 1);  // (T, (Hq + 2 Hkv) * D)
    const int64_t D = qkv.size(1) / (Hq + 2 * Hkv);
    rope_and_cache(qkv, positions, cos, sin, k_caches[l], v_caches[l], slot_mapping, Hq, Hkv);
    at::Tensor q = qkv.narrow(1, 0, Hq * D).reshape({T, Hq, D}).contiguous();
    at::Tensor o = paged_attention_rows(q, k_caches[l], v_caches[l], row_seq, row_ctx, block_tables,
                                        scale);
    h = add_rms_norm(linear(o.reshape({T, Hq * D}), w + 5), residual, w[9], eps);
    x = linear(silu_mul(linear(h, w + 10)), w + 14);
  }
  return add_rms_norm(x, residual, final_norm, eps);
}
