// GGUF blocks in plain C++: activation quantizers, one weight row dequantized, and the dot
// products of every type (the portable path, and the definition the AVX2 code follows).
// Integer sums are exact; each block's sum becomes float once (see gguf_blocks.h).
#include <algorithm>
#include <cmath>

#include "gguf_blocks.h"

namespace tokenmill::gguf {
namespace {

// x (n,) -> q = round(x / d) in -127..127, d = max|x| / 127; returns d
float quantize_run(const float* x, int n, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  for (int i = 0; i < n; ++i)
    q[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(x[i] * inv))));
  return amax / 127.f;
}

// the code of element i (0..31) of a 32-block's nibbles (+ fifth bit for Q5_0 / Q5_1)
inline int nibble32(const uint8_t* qs, int i) { return i < 16 ? qs[i] & 0xF : qs[i - 16] >> 4; }

inline int fifth32(const uint8_t* qh, int i) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  return ((h >> i) & 1) << 4;
}

// element codes of one block into c (block_elems(t) ints); the block's affine form below
void codes(int t, const uint8_t* b, int* c) {
  switch (t) {
    case Q4_0: for (int i = 0; i < 32; ++i) c[i] = nibble32(b + 2, i) - 8; break;
    case Q4_1: for (int i = 0; i < 32; ++i) c[i] = nibble32(b + 4, i); break;
    case Q5_0: for (int i = 0; i < 32; ++i) c[i] = (nibble32(b + 6, i) | fifth32(b + 2, i)) - 16; break;
    case Q5_1: for (int i = 0; i < 32; ++i) c[i] = nibble32(b + 8, i) | fifth32(b + 4, i); break;
    case Q8_0: for (int i = 0; i < 32; ++i) c[i] = static_cast<int8_t>(b[2 + i]); break;
    case Q4_K: case Q5_K: {
      const uint8_t* qs = b + (t == Q4_K ? 16 : 48);
      for (int ch = 0; ch < 4; ++ch)
        for (int l = 0; l < 32; ++l) {
          int lo = qs[32 * ch + l] & 0xF, hi = qs[32 * ch + l] >> 4;
          if (t == Q5_K) {
            lo |= ((b[16 + l] >> (2 * ch)) & 1) << 4;
            hi |= ((b[16 + l] >> (2 * ch + 1)) & 1) << 4;
          }
          c[64 * ch + l] = lo;
          c[64 * ch + 32 + l] = hi;
        }
      break;
    }
    case Q6_K:
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b + 64 * h;
        const uint8_t* qh = b + 128 + 32 * h;
        int* o = c + 128 * h;
        for (int l = 0; l < 32; ++l) {
          o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
          o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
          o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        }
      }
      break;
  }
}

float to_float(int t, const uint8_t* p) { return t == F16 ? fp16(p) : bf16(p); }

}  // namespace

void quantize_act_k(const float* x, int64_t K, ActK* out) {
  for (int64_t b = 0; b < K / 256; ++b) {
    ActK& a = out[b];
    a.d = quantize_run(x + 256 * b, 256, a.q);
    for (int s = 0; s < 16; ++s) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += a.q[16 * s + i];
      a.bsum[s] = static_cast<int16_t>(sum);
    }
  }
}

void quantize_act_32(const float* x, int64_t K, Act32* out) {
  for (int64_t b = 0; b < K / 32; ++b) {
    Act32& a = out[b];
    a.d = quantize_run(x + 32 * b, 32, a.q);
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += a.q[i];
    a.sum = sum;
    a.s = a.d * static_cast<float>(sum);
  }
}

void dequantize_row(int t, const uint8_t* w, int64_t K, float* out) {
  if (t == F16 || t == BF16) {
    for (int64_t k = 0; k < K; ++k) out[k] = to_float(t, w + 2 * k);
    return;
  }
  const int n = block_elems(t), bytes = block_bytes(t);
  int c[256];
  for (int64_t b = 0; b < K / n; ++b, w += bytes, out += n) {
    codes(t, w, c);
    if (t == Q4_K || t == Q5_K) {
      uint8_t sc[8], mn[8];
      k_scales(w + 4, sc, mn);
      const float d = fp16(w), dmin = fp16(w + 2);
      for (int i = 0; i < 256; ++i) out[i] = d * sc[i / 32] * c[i] - dmin * mn[i / 32];
    } else if (t == Q6_K) {
      const float d = fp16(w + 208);
      for (int i = 0; i < 256; ++i) out[i] = d * static_cast<int8_t>(w[192 + i / 16]) * c[i];
    } else {
      const float d = fp16(w), m = (t == Q4_1 || t == Q5_1) ? fp16(w + 2) : 0.f;
      for (int i = 0; i < 32; ++i) out[i] = d * c[i] + m;
    }
  }
}

void dot_rows_scalar(int t, const uint8_t* w, int64_t K, const void* act, int64_t stride, int R,
                     float* out) {
  const auto* base = static_cast<const uint8_t*>(act);
  if (t == F16 || t == BF16) {
    for (int r = 0; r < R; ++r) {
      const float* x = reinterpret_cast<const float*>(base + r * stride);
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += to_float(t, w + 2 * k) * x[k];
      out[r] = acc;
    }
    return;
  }
  const int n = block_elems(t), bytes = block_bytes(t);
  int c[256];
  float mins[4] = {0.f, 0.f, 0.f, 0.f};
  for (int r = 0; r < R; ++r) out[r] = 0.f;
  for (int64_t b = 0; b < K / n; ++b, w += bytes) {
    codes(t, w, c);
    for (int r = 0; r < R; ++r) {
      if (n == 256) {
        const ActK& a = reinterpret_cast<const ActK*>(base + r * stride)[b];
        if (t == Q6_K) {
          int sumi = 0;
          for (int s = 0; s < 16; ++s) {
            int part = 0;
            for (int i = 16 * s; i < 16 * s + 16; ++i) part += c[i] * a.q[i];
            sumi += static_cast<int8_t>(w[192 + s]) * part;
          }
          out[r] = std::fma(static_cast<float>(sumi), fp16(w + 208) * a.d, out[r]);
        } else {
          uint8_t sc[8], mn[8];
          k_scales(w + 4, sc, mn);
          int sumi = 0, summ = 0;
          for (int j = 0; j < 8; ++j) {
            int part = 0;
            for (int i = 32 * j; i < 32 * j + 32; ++i) part += c[i] * a.q[i];
            sumi += sc[j] * part;
            summ += mn[j] * (a.bsum[2 * j] + a.bsum[2 * j + 1]);
          }
          const float t = std::fma(-fp16(w + 2), static_cast<float>(summ), fp16(w) * static_cast<float>(sumi));
          out[r] = std::fma(a.d, t, out[r]);
        }
      } else {  // (see dot_tile32)
        const Act32& a = reinterpret_cast<const Act32*>(base + r * stride)[b];
        int sumi = 0;
        for (int i = 0; i < 32; ++i) sumi += c[i] * a.q[i];
        out[r] = std::fma(static_cast<float>(sumi), fp16(w) * a.d, out[r]);
        if (t == Q4_1 || t == Q5_1) mins[r] = std::fma(fp16(w + 2), a.s, mins[r]);
      }
    }
  }
  if (t == Q4_1 || t == Q5_1)
    for (int r = 0; r < R; ++r) out[r] += mins[r];
}

}  // namespace tokenmill::gguf
