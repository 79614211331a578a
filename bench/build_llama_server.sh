#!/usr/bin/env bash
# Build llama.cpp's llama-server (and llama-bench, llama-quantize) from the llama.cpp source that the
# llama-cpp-python source distribution vendors. Nothing is committed: source and binaries live
# in a cache outside the repository. About 10 minutes on 2 cores.
#   bench/build_llama_server.sh            -> prints the path of llama-server
#   bench/build_llama_server.sh --source   -> fetches the source only (its convert_hf_to_gguf.py and
#                                             gguf-py: a few seconds) and prints its directory
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TOKENMILL_CACHE:-$HOME/.cache/tokenmill}/llama.cpp-$VERSION"
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
BIN="$SRC/build/bin/llama-server"
if [ ! -f "$SRC/convert_hf_to_gguf.py" ]; then
  mkdir -p "$CACHE"
  pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" >&2
  tar xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
fi
if [ "${1:-}" = "--source" ]; then
  echo "$SRC"
  exit 0
fi
if [ ! -x "$BIN" ] || [ ! -f "$SRC/build/.tokenmill-flags-v3" ]; then
  # Not GGML_NATIVE: these VMs advertise AMX tiles that the kernel does not enable, and a
  # -march=native build dies with SIGILL. AVX2 always; AVX-512 (+VNNI) when the CPU has it.
  AVX512=OFF
  grep -q -w avx512f /proc/cpuinfo && AVX512=ON
  VNNI=OFF
  grep -q -w avx512_vnni /proc/cpuinfo && VNNI=ON
  cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=$AVX512 -DGGML_AVX512_VBMI=$AVX512 -DGGML_AVX512_VNNI=$VNNI -DGGML_AMX_TILE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
  cmake --build "$SRC/build" --target llama-server llama-bench llama-quantize -j "$(nproc)" >&2
  touch "$SRC/build/.tokenmill-flags-v3"
fi
echo "$BIN"
