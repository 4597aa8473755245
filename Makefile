# comfy-init: the two commands a newcomer needs are `make demo` and `make test`.

CARGO ?= cargo
# What ships: comfy-init (static) and comfy-init-nvml (dynamic), side by side (scripts/build.sh).
BIN   := target/dist/comfy-init

.PHONY: build test test-unit test-integration test-docker demo bench fuzz fmt lint clean

build:
	bash scripts/build.sh

# Everything: unit tests, integration tests (as PID 1 in a fresh PID namespace when root),
# and the Docker end-to-end test (skipped with a reason where no engine runs).
# The integration tests drive the shipped binary ($(BIN)), not cargo's debug build of it.
test: build
	COMFY_INIT_BIN=$(CURDIR)/$(BIN) $(CARGO) test --no-fail-fast
	$(MAKE) --no-print-directory test-docker

test-docker: build
	bash tests/docker/e2e.sh $(BIN)

demo: build
	bash scripts/demo.sh $(BIN)

bench: build
	bash bench/bench.sh $(BIN)

# Property tests over every parser of outside input, millions of cases each (make test runs
# 20,000). A failure prints the seed that replays it: COMFY_INIT_FUZZ_SEED=<seed> make fuzz.
FUZZ_CASES ?= 5000000
fuzz:
	COMFY_INIT_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --lib fuzz::

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
