// The decoder layers of a step in one C++ call, for every family and every weight format: the
// switches of model/config.py (norms before and/or after each branch, q/k norms, GeGLU, residual
// multiplier, per-layer windows, rotary bases and layers without rotary, soft-capped scores)
// over linears packed int8, 4-bit records or a GGUF file's own blocks. It makes the calls
// LlamaForCausalLM.forward's Python layers make, in the same order, with the same ATen ops
// where those are PyTorch's (so the numbers are identical, bit for bit), without the
// interpreter between ~20 calls a layer. decode_loop.cpp's loops remain for the plain llama
// decoder, whose 4-bit team loop also cuts the calls themselves.
#include <ATen/ATen.h>

#include <vector>

#include "kernel_calls.h"

namespace {

// A layer's entries: 6 norm weights (input, post-attention, pre-MLP, post-MLP, q, k; empty where
// the family has none), then qkv, o, gate_up, down as 5 entries each:
//   int8 packed: (packed int8, scale, wsum, bias, -)   4-bit records: (records uint8, -, -, bias, -)
//   a GGUF file's blocks: (types int64 (n,), part 0, part 1, part 2, bias), n <= 3 parts
constexpr int64_t kNorms = 6, kLinearSlots = 5, kPerLayer = kNorms + 4 * kLinearSlots;

at::Tensor linear(const at::Tensor& x, const at::Tensor* w) {
  if (w[0].scalar_type() == at::kLong) {
    const int64_t n = w[0].numel();
    std::vector<at::Tensor> parts(w + 1, w + 1 + n);
    std::vector<int64_t> types(w[0].data_ptr<int64_t>(), w[0].data_ptr<int64_t>() + n);
    return gguf_linear(x, parts, types, w[4], 0);
  }
  if (w[0].scalar_type() == at::kByte) return q4_linear(x, w[0], w[3], 16 * w[0].size(0));
  return int8_linear_packed(x, w[0], w[1], w[2], w[3], w[1].size(0));
}

struct Switches {
  int64_t Hq, Hkv, D, qk_norm;  // qk_norm: 0 none, 1 per head, 2 over the whole projection
  bool pre_norms, post_norms, gelu;
  double eps, scale, softcap, residual_scale;
};

// Attention.forward: qkv, q/k norms, rotary and the cache write, paged attention, o
at::Tensor attention(at::Tensor x, const at::Tensor* w, const Switches& s, const int64_t* info,
                     at::Tensor positions, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& slots,
                     const at::Tensor& row_seq, const at::Tensor& row_ctx, const at::Tensor& tables) {
  const int64_t T = x.size(0), QD = s.Hq * s.D, KD = s.Hkv * s.D;
  at::Tensor qkv = linear(x, w + kNorms);  // (T, (Hq + 2 Hkv) D)
  if (s.qk_norm == 1) {  // each head's D values, in place
    rms_norm_heads_(qkv, w[4], w[5], s.Hq, s.Hkv, s.eps);
  } else if (s.qk_norm == 2) {
    at::Tensor q = rms_norm(qkv.narrow(1, 0, QD).contiguous(), w[4], s.eps);
    at::Tensor k = rms_norm(qkv.narrow(1, QD, KD).contiguous(), w[5], s.eps);
    qkv = at::cat({q, k, qkv.narrow(1, QD + KD, KD)}, -1);
  }
  // info: window, rotary (0/1); a layer without rotary writes its keys through a table of one
  // position that turns nothing (cos 1, sin 0)
  if (info[1])
    rope_and_cache(qkv, positions, cos, sin, k_cache, v_cache, slots, s.Hq, s.Hkv);
  else
    rope_and_cache(qkv, at::zeros_like(positions), at::ones({1, s.D}, cos.options()),
                   at::zeros({1, s.D}, sin.options()), k_cache, v_cache, slots, s.Hq, s.Hkv);
  at::Tensor q = qkv.narrow(1, 0, QD).view({T, s.Hq, s.D});  // rows qkv's: the kernel takes their stride
  at::Tensor o = paged_attention_rows(q, k_cache, v_cache, row_seq, row_ctx, tables, s.scale, info[0], s.softcap);
  return linear(o.reshape({T, QD}), w + kNorms + kLinearSlots);
}

// MLP.forward
at::Tensor mlp(at::Tensor x, const at::Tensor* w, const Switches& s) {
  at::Tensor gate_up = linear(x, w + kNorms + 2 * kLinearSlots);  // (T, 2 I)
  return linear(s.gelu ? gelu_mul(gate_up) : silu_mul(gate_up), w + kNorms + 3 * kLinearSlots);
}

}  // namespace

// x (T, H): the (scaled) embeddings; layers: kPerLayer entries a layer (see above); info (L, 3)
// int64: window, rotary, local rotary base per layer; caches per layer; slot_mapping and
// block_tables: [global layers', windowed layers'] (the second empty where the windowed layers
// share the global pool); ropes: [cos, sin, local cos, local sin]; floats: eps, attention scale,
// softcap, residual multiplier; ints: Hq, Hkv, qk_norm, pre_norms, post_norms, gelu. Returns the
// final norm's output of out_rows, as LlamaForCausalLM.forward.
at::Tensor family_layers(at::Tensor x, at::Tensor positions, std::vector<at::Tensor> layers,
                         at::Tensor info, std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches,
                         std::vector<at::Tensor> slot_mapping, at::Tensor row_seq, at::Tensor row_ctx,
                         std::vector<at::Tensor> block_tables, std::vector<at::Tensor> ropes,
                         at::Tensor final_norm, std::vector<double> floats, std::vector<int64_t> ints,
                         at::Tensor out_rows) {
  const int64_t L = k_caches.size(), T = x.size(0);
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == kPerLayer * L && v_caches.size() == k_caches.size(),
              "family_layers: weights and caches disagree");
  TORCH_CHECK(info.dim() == 2 && info.size(0) == L && info.size(1) == 3 && info.scalar_type() == at::kLong &&
              info.is_contiguous(), "info: (L, 3) int64");
  TORCH_CHECK(floats.size() == 4 && ints.size() == 6 && ropes.size() == 4 && slot_mapping.size() == 2 &&
              block_tables.size() == 2, "family_layers: switches");
  Switches s{ints[0], ints[1], 0, ints[2], ints[3] != 0, ints[4] != 0, ints[5] != 0,
             floats[0], floats[1], floats[2], floats[3]};
  s.D = ropes[0].size(1);  // callers send full-width tables only (a partial rotary stays in Python)
  const int64_t* inf = info.data_ptr<int64_t>();
  at::Tensor residual;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = layers.data() + l * kPerLayer;
    const int64_t* li = inf + 3 * l;
    const int which = li[0] > 0 && slot_mapping[1].numel() ? 1 : 0;  // a windowed layer's own pool
    const bool local = li[2] != 0;
    auto attend = [&](at::Tensor h) {
      return attention(h, w, s, li, positions, ropes[local ? 2 : 0], ropes[local ? 3 : 1], k_caches[l],
                       v_caches[l], slot_mapping[which], row_seq, row_ctx, block_tables[which]);
    };
    if (s.post_norms) {  // h += post(attn(pre(h))); h += post(mlp(pre(h))), pre only where given
      at::Tensor h = l == 0 ? x : x + residual;
      at::Tensor a = attend(s.pre_norms ? rms_norm(h, w[0], s.eps) : h);
      h = h + rms_norm(a, w[1], s.eps);
      at::Tensor m = mlp(s.pre_norms ? rms_norm(h, w[2], s.eps) : h, w, s);
      x = rms_norm(m, w[3], s.eps);
      residual = h;
      continue;
    }
    at::Tensor h;
    if (l == 0) {
      residual = x;
      h = rms_norm(x, w[0], s.eps);
    } else {
      h = add_rms_norm(x, residual, w[0], s.eps);  // residual += x
    }
    at::Tensor a = attend(h);
    if (s.residual_scale != 1.0) a = a * s.residual_scale;
    x = mlp(add_rms_norm(a, residual, w[1], s.eps), w, s);
    if (s.residual_scale != 1.0) x = x * s.residual_scale;
  }
  at::Tensor out = add_rms_norm(x, residual, final_norm, s.eps);
  return out_rows.numel() == T ? out : out.index_select(0, out_rows);
}
