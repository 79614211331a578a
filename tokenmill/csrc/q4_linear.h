// The 4-bit kernel's pieces (q4_linear.cpp), for callers that split the work themselves
// (decode_loop.cpp's thread team). q4_linear calls the same ones.
#pragma once
#include <cstdint>

namespace tokenmill {

// One activation row x (K,), K % 32 == 0 -> a (K,) int8, dx and xs (K / 32,): see q4_linear.cpp.
void q4_quantize_row(const float* x, int64_t K, int8_t* a, float* dx, float* xs);
// Output groups [g, g + gn) (16 rows each) of the records w (groups, B, 320) for M activation
// rows (a: (M, 32 B), dx, xs: (M, B)): y (M, Np) at columns 16 g ..; bias (Np,) or null.
void q4_groups(const uint8_t* w, int64_t B, const int8_t* a, const float* dx, const float* xs,
               int64_t M, const float* bias, float* y, int64_t Np, int64_t g, int64_t gn);

}  // namespace tokenmill
