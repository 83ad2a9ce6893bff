#!/usr/bin/env bash
# The peers of chatforge's benchmarks, built from PyPI's llama-cpp-python sdist (pinned below):
# llama.cpp's own C++ server (the primary peer: it batches continuously) and llama-cpp-python's
# Python server (the secondary one: it serves one request at a time). Nothing of llama.cpp is
# committed; the builds live in gitignored folders under benchmarks/.
#
#   benchmarks/peer_llamacpp.sh build-server        build llama-server (~20 min on 2 cores) into
#                                                    benchmarks/.peer/llama.cpp/build/bin/llama-server
#   benchmarks/peer_llamacpp.sh server-path         print the llama-server binary to use: $LLAMA_SERVER
#                                                    if set (an existing build), else the one built above
#   benchmarks/peer_llamacpp.sh setup               llama-cpp-python's server in benchmarks/.peer-venv
#   benchmarks/peer_llamacpp.sh serve [PORT]        serve the bundled GGUF with it (2 threads, port 8001)
#
# NOTE: builds run at the lowest priority with one compiler job, so colleagues' work on the same
# cores keeps its speed; it takes longer, but a peer is built once per machine. llama.cpp is
# built for the build machine's CPU (-march=native, as its default build does), so build it on
# the machine that runs the benchmark.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="${PEER_VENV:-$HERE/.peer-venv}"
PEER_DIR="${PEER_DIR:-$HERE/.peer}"
VERSION="0.3.36"  # llama-cpp-python, whose sdist vendors llama.cpp; pinned so figures are comparable
PYTHON="${PYTHON:-python3}"
CHATFORGE_PY="${CHATFORGE_PY:-$ROOT/.venv/bin/python}"

build_server() {
  local src="$PEER_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
  if [ -x "$src/build/bin/llama-server" ]; then
    echo "$src/build/bin/llama-server already built"
    return
  fi
  mkdir -p "$PEER_DIR"
  if [ ! -d "$PEER_DIR/llama_cpp_python-$VERSION" ]; then
    "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$PEER_DIR"
    tar -xzf "$PEER_DIR/llama_cpp_python-$VERSION.tar.gz" -C "$PEER_DIR"
  fi
  nice -n 19 cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
  nice -n 19 cmake --build "$src/build" --target llama-server -j 1
  echo "built $src/build/bin/llama-server"
}

server_path() {
  if [ -n "${LLAMA_SERVER:-}" ]; then
    echo "$LLAMA_SERVER"
  else
    echo "$PEER_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp/build/bin/llama-server"
  fi
}

setup() {
  if "$VENV/bin/python" -c "import llama_cpp.server, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already in $VENV"
    return
  fi
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # LLAVA_BUILD=OFF skips the multimodal library, which the server imports only for vision models.
  CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=1 \
    nice -n 19 "$VENV/bin/pip" install --no-cache-dir --verbose "llama-cpp-python[server]==$VERSION"
  "$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ready in $VENV')"
}

serve() {
  local port="${1:-8001}"
  local gguf
  gguf="$("$CHATFORGE_PY" -c 'from chatforge.models.source import bundled_gguf_path; print(bundled_gguf_path())')"
  # n_ctx 4096 leaves room for the 1,000-token prompts; the server runs one request at a time, so
  # one context is all it allocates. NOTE: by default a new request cuts the stream in progress
  # short ([DONE] with no finish_reason); interrupt_requests=false queues it instead, as a server
  # under load should.
  exec "$VENV/bin/python" -m llama_cpp.server --model "$gguf" --model_alias smollm2 \
    --n_threads 2 --n_threads_batch 2 --n_ctx 4096 --interrupt_requests false \
    --host 127.0.0.1 --port "$port"
}

case "${1:-}" in
  build-server) build_server ;;
  server-path) server_path ;;
  setup) setup ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: $0 build-server | server-path | setup | serve [PORT]" >&2; exit 2 ;;
esac
