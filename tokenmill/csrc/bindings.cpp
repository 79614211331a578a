// The Python module of our kernels: one extension built from every .cpp in this folder.
#include <torch/extension.h>

torch::Tensor paged_attention_rows(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                   torch::Tensor row_seq, torch::Tensor row_ctx,
                                   torch::Tensor block_tables, double scale, int64_t window, double softcap);
bool attention_portable_only(bool on);
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor wscale,
                          torch::Tensor wsum, torch::Tensor bias, int64_t gemm_min_rows);
bool int8_linear_has_vnni();
torch::Tensor int8_pack(torch::Tensor w);
torch::Tensor int8_linear_packed(torch::Tensor x, torch::Tensor wp, torch::Tensor wscale,
                                 torch::Tensor wsum, torch::Tensor bias, int64_t N);
torch::Tensor q4_pack(torch::Tensor codes, torch::Tensor d, torch::Tensor m);
torch::Tensor q4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor bias, int64_t N);
torch::Tensor gguf_linear(torch::Tensor x, std::vector<torch::Tensor> parts, std::vector<int64_t> types,
                          torch::Tensor bias, int64_t path);
torch::Tensor gguf_dequantize_rows(torch::Tensor w, int64_t t, torch::Tensor ids, int64_t K);
bool gguf_has_avx2();
bool gguf_has_vnni();
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps);
void rms_norm_heads_(torch::Tensor qkv, torch::Tensor wq, torch::Tensor wk, int64_t Hq, int64_t Hkv, double eps);
torch::Tensor decode_layers(torch::Tensor x, torch::Tensor positions, std::vector<torch::Tensor> layers,
                            std::vector<torch::Tensor> k_caches, std::vector<torch::Tensor> v_caches,
                            torch::Tensor slot_mapping, torch::Tensor row_seq, torch::Tensor row_ctx,
                            torch::Tensor block_tables, torch::Tensor cos, torch::Tensor sin,
                            torch::Tensor final_norm, double eps, double scale, int64_t Hq, int64_t Hkv,
                            torch::Tensor out_rows);
torch::Tensor family_layers(torch::Tensor x, torch::Tensor positions, std::vector<torch::Tensor> layers,
                            torch::Tensor info, std::vector<torch::Tensor> k_caches,
                            std::vector<torch::Tensor> v_caches, std::vector<torch::Tensor> slot_mapping,
                            torch::Tensor row_seq, torch::Tensor row_ctx, std::vector<torch::Tensor> block_tables,
                            std::vector<torch::Tensor> ropes, torch::Tensor final_norm, std::vector<double> floats,
                            std::vector<int64_t> ints, torch::Tensor out_rows);
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor w, double eps);
torch::Tensor silu_mul(torch::Tensor gate_up);
torch::Tensor gelu_mul(torch::Tensor gate_up);
void rope_and_cache(torch::Tensor qkv, torch::Tensor positions, torch::Tensor cos,
                    torch::Tensor sin, torch::Tensor k_cache, torch::Tensor v_cache,
                    torch::Tensor slot_mapping, int64_t Hq, int64_t Hkv);
torch::Tensor grammar_mask(torch::Tensor logits, torch::Tensor bitmask, torch::Tensor removed,
                           torch::Tensor excluded, torch::Tensor start, torch::Tensor flat,
                           int64_t max_candidates, double window);

// Every kernel runs without the GIL (its arguments are tensors and numbers, converted before
// it is let go): the server's event loop keeps running while the engine thread computes.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef TOKENMILL_SOURCE_DIGEST
  m.attr("source_digest") = TOKENMILL_SOURCE_DIGEST;  // the install's build (setup.py)
#endif
  m.def("paged_attention_rows", &paged_attention_rows, py::call_guard<py::gil_scoped_release>(),
        "paged attention, one query row at a time (window > 0: the last window keys only; softcap > 0: scores soft-capped)", py::arg("q"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("row_seq"), py::arg("row_ctx"), py::arg("block_tables"),
        py::arg("scale"), py::arg("window") = 0, py::arg("softcap") = 0.0);
  m.def("attention_portable_only", &attention_portable_only,
        "tests: run paged attention in its portable loop (true) or the machine's best path; returns the previous");
  m.def("int8_linear", &int8_linear, py::call_guard<py::gil_scoped_release>(), "int8 x int8 linear, exact int32 sums, per-row/per-channel scales");
  m.def("int8_pack", &int8_pack, py::call_guard<py::gil_scoped_release>(), "int8 (N, K) weights -> 16-row blocks of 4-byte groups");
  m.def("int8_linear_packed", &int8_linear_packed, py::call_guard<py::gil_scoped_release>(), "int8_linear on packed weights, any number of rows");
  m.def("q4_pack", &q4_pack, py::call_guard<py::gil_scoped_release>(), "Q4_1 codes and block scales -> 16-row records of the 4-bit kernel");
  m.def("q4_linear", &q4_linear, py::call_guard<py::gil_scoped_release>(), "linear on packed Q4_1 blocks, activations int8 per block of 32");
  m.def("gguf_linear", &gguf_linear, py::call_guard<py::gil_scoped_release>(), "linear on a GGUF file's own blocks (parts of any supported types)");
  m.def("gguf_dequantize_rows", &gguf_dequantize_rows, py::call_guard<py::gil_scoped_release>(), "rows of a GGUF weight as float32 (embedding lookups)");
  m.def("gguf_has_avx2", &gguf_has_avx2, "whether the GGUF dot products run their AVX2 code here");
  m.def("gguf_has_vnni", &gguf_has_vnni, "whether GGUF prompt rows run the AVX-512 VNNI tiles here");
  m.def("decode_layers", &decode_layers, py::call_guard<py::gil_scoped_release>(), "every decoder layer of a decode step in one call");
  m.def("family_layers", &family_layers, py::call_guard<py::gil_scoped_release>(),
        "every decoder layer of a step in one call, any family's switches, any weight format");
  m.def("rms_norm", &rms_norm, py::call_guard<py::gil_scoped_release>(), "RMSNorm of each row");
  m.def("rms_norm_heads_", &rms_norm_heads_, py::call_guard<py::gil_scoped_release>(), "RMSNorm of each q and k head of qkv rows, in place");
  m.def("add_rms_norm", &add_rms_norm, py::call_guard<py::gil_scoped_release>(), "residual += x in place, then RMSNorm of residual");
  m.def("silu_mul", &silu_mul, py::call_guard<py::gil_scoped_release>(), "silu(gate) * up of [gate | up] rows");
  m.def("gelu_mul", &gelu_mul, py::call_guard<py::gil_scoped_release>(), "gelu_tanh(gate) * up of [gate | up] rows");
  m.def("rope_and_cache", &rope_and_cache, py::call_guard<py::gil_scoped_release>(), "rotary on q, k in place; k, v into the paged cache");
  m.def("grammar_mask", &grammar_mask, py::call_guard<py::gil_scoped_release>(), "a grammar's token mask with prefix credit, one row");
  m.def("int8_linear_has_vnni", &int8_linear_has_vnni, "whether the AVX-512 VNNI row loop runs here");
}
