#!/usr/bin/env bash
# Builds what ships into target/dist/ (`make build`, the Dockerfile):
#
#   comfy-init       linked statically (glibc static-pie): PID 1 starts without the dynamic
#                    loader, which was most of its start-up (issue 17; `make bench` measures it)
#   comfy-init-nvml  linked dynamically: it loads the host's libnvidia-ml.so.1, which a static
#                    glibc must not (see src/gpu/helper.rs); comfy-init runs it beside itself
#
# The two are one build: install both, side by side. Extra arguments go to both cargo builds
# (the Dockerfile passes --locked).
#
# usage: scripts/build.sh [CARGO BUILD ARGS...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cc=${CC:-cc}
libc_a=$("$cc" -print-file-name=libc.a 2>/dev/null || true)
if [[ $libc_a != /* ]]; then
    echo "scripts/build.sh: comfy-init links glibc statically, and $cc has no libc.a:" >&2
    echo "  install glibc's static library (Debian, Ubuntu: libc6-dev; Fedora, RHEL: glibc-static)" >&2
    exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')

cargo build --release "$@" --bin comfy-init-nvml
# --target keeps the static flags off build scripts and proc macros (they must stay dynamic).
# getrandom: call glibc's getrandom(); its default looks that up with dlsym, which a static
# binary cannot, and falls back to opening /dev/urandom (absent in some minimal containers).
static_flags="${RUSTFLAGS:-} -C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\""
out=${CARGO_TARGET_DIR:-target}

RUSTFLAGS=$static_flags cargo build --release "$@" --target "$host" --bin comfy-init

mkdir -p target/dist
install -m 0755 "$out/$host/release/comfy-init" target/dist/comfy-init
install -m 0755 "$out/release/comfy-init-nvml" target/dist/comfy-init-nvml
