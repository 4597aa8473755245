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

# The hot text: the functions PID 1 runs once it supervises (scripts/hot-text.txt) are laid out
# together at the start of .text, so the loop, a stop and the exit touch a few pages that stay
# mapped, and all the rest is dropped (src/resident.rs). lld's --symbol-ordering-file does it;
# it takes mangled names, which only a link shows: each link writes a map, the order is made from
# it, and the binary is linked again only when that order changed (a new toolchain, a new hot
# function). The order file is named by its content, so cargo relinks exactly then.
hot=$out/hot-text
map=$hot/comfy-init.map
mkdir -p "$hot"
# COMFY_INIT_KEEP_SYMBOLS=1 keeps the symbol table (scripts/hot-text.sh profiles that build).
link_static() { # ORDER_FILE CARGO_ARGS...: links comfy-init in that order (none: ''), writes $map
    local order=$1
    shift
    RUSTFLAGS=$static_flags cargo rustc --release "$@" --target "$host" --bin comfy-init -- \
        ${order:+-C link-arg=-Wl,--symbol-ordering-file="$order" -C link-arg=-Wl,--no-warn-symbol-ordering} \
        ${COMFY_INIT_KEEP_SYMBOLS:+-C strip=none} -C link-arg=-Wl,-Map="$map"
}
order_from_map() { # writes the order that $map calls for, named by its content; prints its path
    local order file
    order=$(awk -v list=scripts/hot-text.txt -f scripts/hot-text.awk "$map")
    file=$hot/$(printf '%s\n' "$order" | cksum | cut -d' ' -f1).order
    printf '%s\n' "$order" >"$file"
    echo "$file"
}
if printf 'fn main() {}' | rustc -C link-arg=-Wl,--symbol-ordering-file=/dev/null -o "$hot/probe" - 2>/dev/null; then
    used=$(cat "$hot/used" 2>/dev/null || true)
    [ -f "$used" ] || used=
    [ -f "$map" ] || rm -f "$out/$host/release/comfy-init" # no map of the last link: link again
    link_static "$used" "$@"
    order=$(order_from_map)
    if [ "$order" != "$used" ]; then
        link_static "$order" "$@"
        echo "$order" >"$hot/used"
    fi
else
    echo "scripts/build.sh: the linker takes no --symbol-ordering-file (not lld): comfy-init is linked" >&2
    echo "  without its hot text laid out together; it works the same, its stop maps more pages" >&2
    RUSTFLAGS=$static_flags cargo build --release "$@" --target "$host" --bin comfy-init
fi

mkdir -p target/dist
install -m 0755 "$out/$host/release/comfy-init" target/dist/comfy-init
install -m 0755 "$out/release/comfy-init-nvml" target/dist/comfy-init-nvml
