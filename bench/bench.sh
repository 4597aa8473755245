#!/usr/bin/env bash
# `make bench`: comfy-init against tini, dumb-init and catatonit. Never part of `make test`.
#
#   bash bench/bench.sh [path/to/comfy-init]
#
# Installs what is missing (apt-get: tini dumb-init catatonit hyperfine time curl), compiles
# bench/helper.c into a temporary folder, runs bench/bench.py: progress on stderr, the table on
# stdout and in bench/results.md. Needs root (PID namespaces). About 1-2 minutes on 2 cores.
# watchexec (for the token-change comparison) is used when found on PATH or in ~/.cargo/bin; it is
# not installed here because `cargo install watchexec-cli` alone takes longer than the bench.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
bin="${1:-$repo/target/dist/comfy-init}"

say() { echo "[bench] $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "needs root: each init runs as PID 1 of its own PID namespace (unshare --pid)"
    exit 1
fi
if [ ! -x "$bin" ]; then
    say "$bin missing: make build"
    (cd "$repo" && bash scripts/build.sh)
fi

missing=()
for tool in tini dumb-init catatonit hyperfine curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -x /usr/bin/time ] || missing+=(time)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

watchexec="$(command -v watchexec 2>/dev/null || true)"
if [ -z "$watchexec" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/watchexec" ]; then
    watchexec="${CARGO_HOME:-$HOME/.cargo}/bin/watchexec"
fi
[ -n "$watchexec" ] || say "watchexec not found (cargo install watchexec-cli): the token-change comparison is skipped"

work="$(mktemp -d /tmp/comfy-init-bench.XXXXXX)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

cc -O2 -Wall -o "$work/helper" "$here/helper.c"

# BENCH_ONLY=phase,...: those rows alone, printed; bench/results.md keeps the last full run.
out="$here/results.md"
[ -z "${BENCH_ONLY:-}" ] || out="$work/results.md"

started=$(date +%s)
python3 "$here/bench.py" --bin "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" --helper "$work/helper" \
    --work "$work" --out "$out" --watchexec "$watchexec" ${BENCH_ONLY:+--only "$BENCH_ONLY"}
if [ -z "${BENCH_ONLY:-}" ]; then
    say "done in $(( $(date +%s) - started )) s; table written to bench/results.md"
else
    say "done in $(( $(date +%s) - started )) s (BENCH_ONLY=$BENCH_ONLY: bench/results.md left as it was)"
fi
