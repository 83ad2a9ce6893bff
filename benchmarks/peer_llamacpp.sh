#!/usr/bin/env bash
# The peer server for chatforge's benchmarks: llama-cpp-python's OpenAI-compatible server on the
# same bundled GGUF, in its own virtual environment (benchmarks/.peer-venv, gitignored).
#
#   benchmarks/peer_llamacpp.sh setup          build llama-cpp-python from PyPI (many minutes on 2 cores)
#   benchmarks/peer_llamacpp.sh serve [PORT]   serve the bundled GGUF with 2 threads (default port 8001)
#
# NOTE: the build runs at the lowest priority with one compiler job, so colleagues' tests on the
# same cores keep their speed; it takes longer, but the peer is built once per machine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="${PEER_VENV:-$HERE/.peer-venv}"
VERSION="0.3.36"  # llama-cpp-python; pinned so figures are comparable across runs
PYTHON="${PYTHON:-python3}"
CHATFORGE_PY="${CHATFORGE_PY:-$ROOT/.venv/bin/python}"

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
  # n_ctx 4096 leaves room for the 1,000-token shared-prefix scenario; the server runs one
  # request at a time, so one context is all it allocates. NOTE: by default a new request cuts
  # the stream in progress short ([DONE] with no finish_reason); interrupt_requests=false queues
  # it instead, as a server under load should.
  exec "$VENV/bin/python" -m llama_cpp.server --model "$gguf" --model_alias smollm2 \
    --n_threads 2 --n_threads_batch 2 --n_ctx 4096 --interrupt_requests false \
    --host 127.0.0.1 --port "$port"
}

case "${1:-}" in
  setup) setup ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: $0 setup | serve [PORT]" >&2; exit 2 ;;
esac
