// One row of the small fused ops (fused_ops.cpp), for callers that split rows themselves
// (decode_loop.cpp's thread team). The tensor functions in fused_ops.cpp call the same ones.
#pragma once
#include <cstdint>

namespace tokenmill {

// out = RMSNorm(x) * w
void rms_norm_row(const float* x, const float* w, int64_t H, float eps, float* out);
// r += x (in place), then out = RMSNorm(r) * w
void add_rms_norm_row(const float* x, float* r, const float* w, int64_t H, float eps, float* out);
// gate_up = [gate (I) | up (I)] -> out = silu(gate) * up
void silu_mul_row(const float* gate_up, int64_t I, float* out);
// One token's qkv row [q heads | k heads | v heads] (D each): q and k rotated in place at pos
// (cos, sin: (max_position, D)); k and v stored at slot of caches (Hkv, slots, RS). C: float,
// at::Half or int8_t (rows of D values and their float32 scale). tmp: D floats.
template <typename C>
void rope_and_cache_row(float* row, int64_t pos, const float* cos, const float* sin, int64_t Hq,
                        int64_t Hkv, int64_t D, C* k_cache, C* v_cache, int64_t slots,
                        int64_t slot, float* tmp);

}  // namespace tokenmill
