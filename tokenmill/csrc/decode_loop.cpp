// The decoder layers of a step in one C++ call (CPU, float32, packed int8 or 4-bit weights).
//
// A decode step of a small model is ~30 short kernel calls per layer; from Python each costs a
// few microseconds of dispatch, a few milliseconds a step in all. This loop makes the same
// calls, to the same kernels, in the same order as LlamaForCausalLM.forward does (so the numbers
// are identical, bit for bit), without the interpreter between them. Every step whose attention
// goes to the C++ kernel (all steps on CPU with it) runs here, prompt chunks included.
//
// Where every linear is 4-bit (the default on a VNNI CPU) the step runs in one OpenMP team instead
// (team_layers): the threads start once per step and meet at a barrier between phases, where the
// loop of kernel calls starts and joins the threads ~6 times a layer and allocates ~15 tensors;
// those costs were ~1 ms of a 3.5 ms decode step. The same row functions and tiles compute every
// number, so the two loops agree bit for bit (and each row's result is still its own).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "attention_work.h"
#include "kernel_calls.h"
#include "q4_linear.h"
#include "quant_rows.h"
#include "row_ops.h"

namespace {

// w: int8 packed weight, scale (N,), wsum (N,), bias (N,) or empty; or 4-bit records (uint8,
// N / 16 groups), two unused slots, bias
at::Tensor linear(const at::Tensor& x, const at::Tensor* w) {
  if (w[0].scalar_type() == at::kByte) return q4_linear(x, w[0], w[3], 16 * w[0].size(0));
  return int8_linear_packed(x, w[0], w[1], w[2], w[3], w[1].size(0));
}

constexpr int64_t kPerLayer = 18;  // see decode_layers

// One 4-bit linear: records (G groups of 16 outputs, B blocks of 32 inputs), padded bias or null.
struct Q4 {
  const uint8_t* w;
  int64_t G, B;
  const float* bias;
};

Q4 q4_of(const at::Tensor* w) {
  return {w[0].data_ptr<uint8_t>(), w[0].size(0), w[0].size(1),
          w[3].numel() ? w[3].data_ptr<float>() : nullptr};
}

constexpr int kLinear[4] = {1, 5, 10, 14};  // qkv, o, gate_up, down in a layer's entries

bool all_q4(const std::vector<at::Tensor>& layers) {
  for (size_t l = 0; l < layers.size(); l += kPerLayer)
    for (int i : kLinear)
      if (layers[l + i].scalar_type() != at::kByte) return false;
  return true;  // the 4-bit functions run their portable paths without VNNI
}

// Inside the team: y (T, 16 G) = the quantized rows (a, dx, xs) through q; units of 4 groups
// handed out one at a time (a thread that got slower memory takes fewer).
// Prompt chunks are cut in blocks of rows too (a unit reads its 4 groups' weights again, from
// cache), so that a matrix of 9 units does not leave one thread 5 and the other 4.
inline void team_linear(const Q4& q, const int8_t* a, const float* dx, const float* xs, int64_t T,
                        float* y) {
  constexpr int64_t kRows = 64;  // a multiple of the tiles' 4 rows
  const int64_t quads = (q.G + 3) / 4, blocks = (T + kRows - 1) / kRows, K = 32 * q.B;
#pragma omp for schedule(dynamic, 1)
  for (int64_t u = 0; u < quads * blocks; ++u) {
    const int64_t g = 4 * (u % quads), m = kRows * (u / quads);
    tokenmill::q4_groups(q.w, q.B, a + m * K, dx + m * q.B, xs + m * q.B, std::min(kRows, T - m),
                         q.bias, y + m * 16 * q.G, 16 * q.G, g, std::min<int64_t>(4, q.G - g));
  }
}

template <typename C>
at::Tensor team_layers(at::Tensor x, at::Tensor positions, const std::vector<at::Tensor>& layers,
                       const std::vector<at::Tensor>& k_caches, const std::vector<at::Tensor>& v_caches,
                       at::Tensor slot_mapping, at::Tensor row_seq, at::Tensor row_ctx,
                       at::Tensor block_tables, at::Tensor cos, at::Tensor sin,
                       at::Tensor final_norm, double eps_d, double scale, int64_t Hq, int64_t Hkv,
                       at::Tensor out_rows) {
  const int64_t T = x.size(0), H = x.size(1), L = k_caches.size();
  const Q4 first_qkv = q4_of(layers.data() + 1);
  const int64_t QW = 16 * first_qkv.G, D = QW / (Hq + 2 * Hkv), HD = Hq * D;
  const int64_t I2 = 16 * q4_of(layers.data() + 10).G, I = I2 / 2;
  std::vector<Q4> lin;
  std::vector<const float*> norm1, norm2;
  std::vector<C*> kp, vp;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = layers.data() + l * kPerLayer;
    for (int i : kLinear) lin.push_back(q4_of(w + i));
    const Q4* q = lin.data() + 4 * l;
    TORCH_CHECK(16 * q[0].G == QW && 32 * q[0].B == H && 16 * q[1].G == H && 32 * q[1].B == HD &&
                16 * q[2].G == I2 && 32 * q[2].B == H && 16 * q[3].G == H && 32 * q[3].B == I,
                "decode_layers: layer ", l, " has other shapes");
    TORCH_CHECK(w[0].is_contiguous() && w[9].is_contiguous(), "norm weights must be contiguous");
    norm1.push_back(w[0].data_ptr<float>());
    norm2.push_back(w[9].data_ptr<float>());
    TORCH_CHECK(k_caches[l].sizes() == k_caches[0].sizes() && v_caches[l].sizes() == k_caches[0].sizes() &&
                k_caches[l].is_contiguous() && v_caches[l].is_contiguous(), "caches differ");
    kp.push_back(k_caches[l].data_ptr<C>());
    vp.push_back(v_caches[l].data_ptr<C>());
  }
  const int64_t RS = k_caches[0].size(-1), slots = k_caches[0].numel() / (Hkv * RS);
  TORCH_CHECK(RS == D + (std::is_same_v<C, int8_t> ? 4 : 0), "cache rows do not match head_dim");
  positions = positions.contiguous();
  slot_mapping = slot_mapping.contiguous();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sm[t] >= 0 && sm[t] < slots, "slot out of range");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.size(1) == D, "cos, sin: (positions, D)");

  tokenmill::AttentionWork<C> work;
  work.describe(k_caches[0], v_caches[0], row_seq, row_ctx, block_tables, T, Hq, D, scale);
  // The last layer past its keys and values, only for the rows the caller reads (out_rows,
  // ascending): the others' outputs are not used (a prompt's rows but its last, without prompt
  // logprobs), as llama.cpp prunes them. Those rows of qkv and the residual move up to rows
  // 0 .. R - 1 and the rest of the layer runs on R rows.
  TORCH_CHECK(out_rows.dim() == 1 && out_rows.scalar_type() == at::kLong && out_rows.is_contiguous(),
              "out_rows: (R,) int64");
  const int64_t R = out_rows.numel();
  const bool prune = R < T;
  const int64_t* keep = out_rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < R; ++i)
    TORCH_CHECK(keep[i] >= i && keep[i] < T && (i == 0 || keep[i] > keep[i - 1]),
                "out_rows must ascend, within the rows");
  tokenmill::AttentionWork<C> last;
  const at::Tensor last_seq = row_seq.index_select(0, out_rows), last_ctx = row_ctx.index_select(0, out_rows);
  if (prune)
    last.describe(k_caches[L - 1], v_caches[L - 1], last_seq, last_ctx, block_tables, R, Hq, D, scale);
  auto opt = x.options();
  auto h = at::empty({T, H}, opt), qkv = at::empty({T, QW}, opt), o = at::empty({T, HD}, opt);
  auto gu = at::empty({T, I2}, opt), act = at::empty({T, I}, opt), y = at::empty({T, H}, opt);
  auto out = at::empty({T, H}, opt);
  const int64_t Kmax = std::max({H, HD, I});
  auto a = at::empty({T, Kmax}, opt.dtype(at::kChar));
  auto dx = at::empty({T, Kmax / 32}, opt), xs = at::empty({T, Kmax / 32}, opt);
  float* res = x.data_ptr<float>();  // the residual stream, in place (as the other loop)
  float *hp = h.data_ptr<float>(), *qkvp = qkv.data_ptr<float>(), *op = o.data_ptr<float>();
  float *gup = gu.data_ptr<float>(), *actp = act.data_ptr<float>(), *yp = y.data_ptr<float>();
  float* outp = out.data_ptr<float>();
  int8_t* ap = a.data_ptr<int8_t>();
  float *dxp = dx.data_ptr<float>(), *xsp = xs.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  const float* fnorm = final_norm.data_ptr<float>();
  const float eps = static_cast<float>(eps_d);
  work.q = qkvp, work.ldq = QW, work.out = op, work.ldo = HD;
  work.plan();
  if (prune) {
    last.q = qkvp, last.ldq = QW, last.out = op, last.ldo = HD;
    last.plan();
  }
  // row t of a (K,) through dx, xs: the activations of the next linear, K its inputs
  auto quantize = [&](const float* src, int64_t K, int64_t t) {
    tokenmill::q4_quantize_row(src + t * K, K, ap + t * K, dxp + t * (K / 32), xsp + t * (K / 32));
  };

#pragma omp parallel num_threads(at::get_num_threads())
  {
    tokenmill::AttentionScratch scratch = work.new_scratch();
    std::vector<float> tmp(D);
    for (int64_t l = 0; l < L; ++l) {
      const Q4* q = lin.data() + 4 * l;
#pragma omp single nowait
      {  // the last readers of these (the previous layer's tasks) passed two barriers ago
        work.k = kp[l];
        work.v = vp[l];
      }
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) {
        if (l == 0)
          tokenmill::rms_norm_row(res + t * H, norm1[l], H, eps, hp + t * H);
        else
          tokenmill::add_rms_norm_row(yp + t * H, res + t * H, norm1[l], H, eps, hp + t * H);
        quantize(hp, H, t);
      }
      team_linear(q[0], ap, dxp, xsp, T, qkvp);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t)
        tokenmill::rope_and_cache_row(qkvp + t * QW, pos[t], cp, sp, Hq, Hkv, D, kp[l], vp[l], slots,
                                      sm[t], tmp.data());
      const bool pruned = prune && l == L - 1;
      const int64_t rows = pruned ? R : T;
      const tokenmill::AttentionWork<C>& att = pruned ? last : work;
      if (pruned) {
#pragma omp single
        {  // keep[i] >= i, ascending: each row moves up over rows already moved or dropped
          for (int64_t i = 0; i < R; ++i) {
            if (keep[i] == i) continue;
            std::copy(qkvp + keep[i] * QW, qkvp + (keep[i] + 1) * QW, qkvp + i * QW);
            std::copy(res + keep[i] * H, res + (keep[i] + 1) * H, res + i * H);
          }
        }
      }
#pragma omp for schedule(dynamic, std::max<int64_t>(1, att.tasks() / 64))
      for (int64_t z = 0; z < att.tasks(); ++z) att.run_task(z, scratch);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < att.merges(); ++i) att.merge(i, scratch);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < rows; ++t) quantize(op, HD, t);
      team_linear(q[1], ap, dxp, xsp, rows, yp);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < rows; ++t) {
        tokenmill::add_rms_norm_row(yp + t * H, res + t * H, norm2[l], H, eps, hp + t * H);
        quantize(hp, H, t);
      }
      team_linear(q[2], ap, dxp, xsp, rows, gup);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < rows; ++t) {
        tokenmill::silu_mul_row(gup + t * I2, I, actp + t * I);
        quantize(actp, I, t);
      }
      team_linear(q[3], ap, dxp, xsp, rows, yp);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < R; ++t)
      tokenmill::add_rms_norm_row(yp + t * H, res + t * H, fnorm, H, eps, outp + t * H);
  }
  return prune ? out.narrow(0, 0, R) : out;
}

}  // namespace

// x (T, H): the embeddings (the team loop uses it as its residual stream, in place); layers: per
// layer [input norm w, qkv (4), o (4), post norm w, gate_up (4), down (4)], each linear as
// (packed, scale, wsum, bias) or (records, -, -, bias); out_rows: the rows wanted (int64,
// ascending; all T of them, or fewer). Returns the final norm's output of those rows (R, H), as
// LlamaForCausalLM.forward.
at::Tensor decode_layers(at::Tensor x, at::Tensor positions, std::vector<at::Tensor> layers,
                         std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches,
                         at::Tensor slot_mapping, at::Tensor row_seq, at::Tensor row_ctx,
                         at::Tensor block_tables, at::Tensor cos, at::Tensor sin,
                         at::Tensor final_norm, double eps, double scale, int64_t Hq,
                         int64_t Hkv, at::Tensor out_rows) {
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == kPerLayer * static_cast<int64_t>(k_caches.size()),
              "decode_layers: weights and caches disagree");
  const int64_t T = x.size(0), L = k_caches.size();
  if (L > 0 && all_q4(layers) && x.is_contiguous() && x.scalar_type() == at::kFloat &&
      final_norm.is_contiguous()) {
    const auto kind = k_caches[0].scalar_type();
    TORCH_CHECK(v_caches[0].scalar_type() == kind, "k and v caches differ in dtype");
    if (kind == at::kChar)
      return team_layers<int8_t>(x, positions, layers, k_caches, v_caches, slot_mapping, row_seq,
                                 row_ctx, block_tables, cos, sin, final_norm, eps, scale, Hq, Hkv,
                                 out_rows);
    if (kind == at::kHalf)
      return team_layers<at::Half>(x, positions, layers, k_caches, v_caches, slot_mapping, row_seq,
                                   row_ctx, block_tables, cos, sin, final_norm, eps, scale, Hq, Hkv,
                                 out_rows);
    if (kind == at::kFloat)
      return team_layers<float>(x, positions, layers, k_caches, v_caches, slot_mapping, row_seq,
                                row_ctx, block_tables, cos, sin, final_norm, eps, scale, Hq, Hkv,
                                 out_rows);
  }
  at::Tensor residual = x, h;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = layers.data() + l * kPerLayer;
    h = l == 0 ? rms_norm(x, w[0], eps) : add_rms_norm(x, residual, w[0], eps);  // residual += x
    at::Tensor qkv = linear(h, w + 1);  // (T, (Hq + 2 Hkv) * D)
    const int64_t D = qkv.size(1) / (Hq + 2 * Hkv);
    rope_and_cache(qkv, positions, cos, sin, k_caches[l], v_caches[l], slot_mapping, Hq, Hkv);
    at::Tensor q = qkv.narrow(1, 0, Hq * D).reshape({T, Hq, D}).contiguous();
    at::Tensor o = paged_attention_rows(q, k_caches[l], v_caches[l], row_seq, row_ctx, block_tables,
                                        scale, 0, 0);
    h = add_rms_norm(linear(o.reshape({T, Hq * D}), w + 5), residual, w[9], eps);
    x = linear(silu_mul(linear(h, w + 10)), w + 14);
  }
  at::Tensor out = add_rms_norm(x, residual, final_norm, eps);
  return out_rows.numel() == T ? out : out.index_select(0, out_rows);
}
