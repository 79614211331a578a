// Linear layers on a GGUF file's own blocks (gguf_blocks.h), and embedding rows read from them.
//
// A layer is one or more parts (the shards of a fused q/k/v or gate/up projection may differ in
// type: a Q4_K_M file keeps some v and down projections in Q6_K), each a (rows, row_bytes) uint8
// tensor of whole blocks as the file stores them. Activations are quantized once per call for
// every form the parts need; the parts' rows go out in tasks of 16 weight rows, each task running
// every activation row against its rows 8 at a time (gguf_tile32.cpp, gguf_tilek.cpp: a tile
// unpacked once for prompt rows, the file's rows read through for a decode row), or, with AVX-512
// VNNI and from kVnniFrom activation rows on, 16 at a time (gguf_vnni.cpp). F16 / BF16 and
// the portable path take one weight row at a time (gguf_avx2.cpp, gguf_scalar.cpp). All give the
// same numbers for a row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "gguf_blocks.h"

namespace gg = tokenmill::gguf;

namespace {

constexpr int64_t kTaskRows = 16;
constexpr int64_t kChunkBytes = 160 << 10;  // a prompt chunk's quantized activations (see below)
// the same for the VNNI tiles: their multiplies are 2-3x faster, so unpacking a tile again per
// chunk weighs more; CPUs with AVX-512 have an L2 of 1 MiB or more a core
constexpr int64_t kChunkBytesVnni = 512 << 10;
constexpr int64_t kVnniFrom = 4;  // fewer activation rows read the file's rows (gguf_avx2 row kernels)

int64_t row_bytes(int t, int64_t K) { return K / gg::block_elems(t) * gg::block_bytes(t); }

void check_part(const at::Tensor& p, int64_t t, int64_t K) {
  TORCH_CHECK(gg::block_elems(static_cast<int>(t)) > 0, "GGUF type ", t, " is not run natively");
  TORCH_CHECK(K % gg::block_elems(static_cast<int>(t)) == 0, "K = ", K, " is not a whole number of blocks of type ", t);
  TORCH_CHECK(p.dim() == 2 && p.scalar_type() == at::kByte && p.is_contiguous() && p.device().is_cpu(),
              "a part must be a contiguous (rows, row_bytes) uint8 CPU tensor");
  TORCH_CHECK(p.size(1) == row_bytes(static_cast<int>(t), K), "part of type ", t, " has ", p.size(1),
              " bytes a row, K = ", K, " needs ", row_bytes(static_cast<int>(t), K));
}

}  // namespace

// x (M, K) float32; parts[i] (n_i, row_bytes_i) uint8 of types[i]; bias float32 (sum n_i,) or
// empty -> y (M, sum n_i). path: 0 the fastest this CPU has, 1 the plain C++ dot products (tests,
// CPUs without AVX2), 2 AVX2 without the VNNI tiles (tests). Every path gives the same numbers.
at::Tensor gguf_linear(at::Tensor x, std::vector<at::Tensor> parts, std::vector<int64_t> types,
                       at::Tensor bias, int64_t path) {
  TORCH_CHECK(path >= 0 && path <= 2, "path is 0 (fastest), 1 (portable) or 2 (AVX2)");
  const bool portable = path == 1;
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(), "x must be (M, K) float32 on CPU");
  TORCH_CHECK(!parts.empty() && parts.size() == types.size(), "one type per part");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  int64_t N = 0;
  bool need_k = false, need_32 = false;
  std::vector<int64_t> first_col;
  for (size_t i = 0; i < parts.size(); ++i) {
    check_part(parts[i], types[i], K);
    first_col.push_back(N);
    N += parts[i].size(0);
    const auto kind = gg::act_kind(static_cast<int>(types[i]));
    need_k |= kind == gg::ActKind::K256;
    need_32 |= kind == gg::ActKind::B32;
  }
  TORCH_CHECK(bias.numel() == 0 || (bias.numel() == N && bias.scalar_type() == at::kFloat && bias.is_contiguous()),
              "bias must be float32 with one value per output");
  const float* xp = x.data_ptr<float>();
  // activation rows in each form: (M, K / 256) ActK and (M, K / 32) Act32, as raw bytes
  const int64_t stride_k = need_k ? K / 256 * static_cast<int64_t>(sizeof(gg::ActK)) : 0;
  const int64_t stride_32 = need_32 ? K / 32 * static_cast<int64_t>(sizeof(gg::Act32)) : 0;
  std::vector<uint8_t> act_k(M * stride_k), act_32(M * stride_32);
  if (need_k || need_32) {
    at::parallel_for(0, M, 4, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        if (need_k) gg::quantize_act_k(xp + m * K, K, reinterpret_cast<gg::ActK*>(act_k.data() + m * stride_k));
        if (need_32) gg::quantize_act_32(xp + m * K, K, reinterpret_cast<gg::Act32*>(act_32.data() + m * stride_32));
      }
    });
  }
  auto y = at::empty({M, N}, x.options());
  float* yp = y.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  std::vector<std::pair<int, int64_t>> tasks;  // (part, first row)
  for (size_t i = 0; i < parts.size(); ++i)
    for (int64_t n = 0; n < parts[i].size(0); n += kTaskRows) tasks.emplace_back(static_cast<int>(i), n);
  const auto dot = portable ? gg::dot_rows_scalar : gg::dot_rows;
  const bool tiled = !portable && gg::has_avx2();  // tiles give the portable path's numbers
  const bool rows512 = tiled && path == 0 && gg::has_vnni512();  // K-quant decode rows (gguf_rows_vnni.cpp)
  const bool vnni = rows512 && M >= kVnniFrom;
  // A prompt's activation rows go through a thread's tasks a chunk at a time, the chunk small
  // enough to stay in the core's L2 while every tile of the thread runs against it (the tiles are
  // unpacked again per chunk, which costs about two rows' work each).
  const int64_t act_stride = std::max(stride_k, stride_32);
  const int64_t chunk = act_stride ? std::max<int64_t>(64, (vnni ? kChunkBytesVnni : kChunkBytes) / act_stride) : M;
  const auto run_task = [&](int64_t ti, int64_t m0, int64_t m1) {
    const auto [i, n0] = tasks[ti];
    const int t = static_cast<int>(types[i]);
    const auto kind = gg::act_kind(t);
    const int64_t stride = kind == gg::ActKind::K256 ? stride_k : kind == gg::ActKind::B32 ? stride_32 : K * 4;
    const uint8_t* act = (kind == gg::ActKind::K256 ? act_k.data()
                          : kind == gg::ActKind::B32 ? act_32.data()
                                                      : reinterpret_cast<const uint8_t*>(xp)) + m0 * stride;
    const int64_t rb = parts[i].size(1), n1 = std::min(parts[i].size(0), n0 + kTaskRows);
    const uint8_t* w = parts[i].data_ptr<uint8_t>();
    float* out = yp + m0 * N;
    const int64_t rows_m = m1 - m0;
    if (tiled && kind != gg::ActKind::Float) {  // 8 (16) weight rows against the chunk's rows at a time
      const int64_t step = vnni ? 16 : 8;
      for (int64_t n = n0; n < n1; n += step) {
        const int rows = static_cast<int>(std::min<int64_t>(step, n1 - n));
        const int64_t col = first_col[i] + n;
        if (vnni) gg::dot_tile_vnni(t, w + n * rb, rb, rows, K, act, stride, rows_m, out + col, N);
        else if (kind == gg::ActKind::B32) gg::dot_tile32(t, w + n * rb, rb, rows, K, act, stride, rows_m, out + col, N);
        else gg::dot_tile_k(t, w + n * rb, rb, rows, K, act, stride, rows_m, out + col, N, rows512);
        if (bp)
          for (int64_t m = 0; m < rows_m; ++m)
            for (int r = 0; r < rows; ++r) out[m * N + col + r] += bp[col + r];
      }
      return;
    }
    for (int64_t r0 = 0; r0 < rows_m; r0 += 4) {
      const int R = static_cast<int>(std::min<int64_t>(4, rows_m - r0));
      for (int64_t n = n0; n < n1; ++n) {
        float o4[4];
        dot(t, w + n * rb, K, act + r0 * stride, stride, R, o4);
        const int64_t col = first_col[i] + n;
        for (int r = 0; r < R; ++r) out[(r0 + r) * N + col] = o4[r] + (bp ? bp[col] : 0.f);
      }
    }
  };
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t m0 = 0; m0 < M; m0 += chunk)
      for (int64_t ti = t0; ti < t1; ++ti) run_task(ti, m0, std::min(M, m0 + chunk));
  });
  return y;
}

// rows ids of a (V, row_bytes) weight of type t with K columns -> (len(ids), K) float32
at::Tensor gguf_dequantize_rows(at::Tensor w, int64_t t, at::Tensor ids, int64_t K) {
  check_part(w, t, K);
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong, "ids must be (n,) int64");
  ids = ids.contiguous();
  const int64_t n = ids.size(0), V = w.size(0), rb = w.size(1);
  const int64_t* ip = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(ip[i] >= 0 && ip[i] < V, "row id ", ip[i], " out of range");
  auto out = at::empty({n, K}, w.options().dtype(at::kFloat));
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      gg::dequantize_row(static_cast<int>(t), w.data_ptr<uint8_t>() + ip[i] * rb, K, out.data_ptr<float>() + i * K);
  });
  return out;
}

bool gguf_has_avx2() { return gg::has_avx2(); }
bool gguf_has_vnni() { return gg::has_avx2() && gg::has_vnni512(); }
