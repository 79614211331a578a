// The kernels' entry points that the layer loops (decode_loop.cpp, family_loop.cpp) call, as
// the Python layers call them through bindings.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

at::Tensor int8_linear_packed(at::Tensor x, at::Tensor wp, at::Tensor wscale, at::Tensor wsum,
                              at::Tensor bias, int64_t N);
at::Tensor q4_linear(at::Tensor x, at::Tensor packed, at::Tensor bias, int64_t N);
at::Tensor gguf_linear(at::Tensor x, std::vector<at::Tensor> parts, std::vector<int64_t> types,
                       at::Tensor bias, int64_t path);
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps);
void rms_norm_heads_(at::Tensor qkv, at::Tensor wq, at::Tensor wk, int64_t Hq, int64_t Hkv, double eps);
at::Tensor add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor w, double eps);
at::Tensor silu_mul(at::Tensor gate_up);
at::Tensor gelu_mul(at::Tensor gate_up);
void rope_and_cache(at::Tensor qkv, at::Tensor positions, at::Tensor cos, at::Tensor sin,
                    at::Tensor k_cache, at::Tensor v_cache, at::Tensor slot_mapping, int64_t Hq,
                    int64_t Hkv);
at::Tensor paged_attention_rows(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                at::Tensor row_seq, at::Tensor row_ctx, at::Tensor block_tables,
                                double scale, int64_t window, double softcap);
