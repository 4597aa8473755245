#!/usr/bin/env bash
# Writes scripts/hot-text.txt: the functions comfy-init runs once start-up is over, measured with
# callgrind over what PID 1 does for a container's life: wait, forward a signal, reap an orphan,
# see a credential file change, stop the child, exit. scripts/build.sh lays them out together
# and src/resident.rs keeps only their pages (issue 17).
#
#   bash scripts/hot-text.sh        (needs valgrind; about a minute)
#
# Run it after changing the loop's code, and commit the list; `make bench` shows the stop and the
# RSS it buys. A function missing from the list still runs: its page is mapped on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "scripts/hot-text.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

work=$(mktemp -d /tmp/comfy-init-hot-text.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The shipped link with its symbols kept, so that callgrind can name what runs.
COMFY_INIT_KEEP_SYMBOLS=1 bash scripts/build.sh >/dev/null
cp target/dist/comfy-init "$work/comfy-init"
awk -v names=1 -f scripts/hot-text.awk "${CARGO_TARGET_DIR:-target}/hot-text/comfy-init.map" >"$work/names"

# One life under callgrind. Everything after the first madvise (the page release that ends
# start-up) is dumped apart from start-up, which is what the list is made of.
life() { # NAME ENV...: runs it, then the driver below
    local name=$1
    shift
    env "$@" COMFY_INIT_RESTART=never COMFY_INIT_STOP_SIGNAL=SIGTERM \
        valgrind --tool=callgrind --dump-before=madvise --demangle=no \
        --callgrind-out-file="$work/$name.%p" "$work/comfy-init" -- \
        sh -c 'trap "" USR1; sh -c "sleep 0.2 &"; exec sleep 600' 2>"$work/$name.log" &
    local pid=$! i
    for i in $(seq 600); do
        grep -q "started" "$work/$name.log" && break
        sleep 0.1
    done
    sleep 1 # the orphan is reaped
    kill -USR1 "$pid"
    sleep 0.5
    if [ -n "${envfile:-}" ]; then # an editor's swap file beside .env: seen, read, nothing to do
        echo swap >"$envfile.swp"
        rm "$envfile.swp"
        sleep 2
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    grep -q "exited" "$work/$name.log" || { echo "scripts/hot-text.sh: $name did not run:" >&2; cat "$work/$name.log" >&2; exit 1; }
}
envfile= life plain COMFY_INIT_GPU=off COMFY_INIT_AUTH=off
mkdir -p "$work/ComfyUI/login"
envfile=$work/ComfyUI/.env
printf 'COMFYUI_PASSWORD=hot-text-first-password\n' >"$envfile"
COMFYUI_DIR=$work/ComfyUI COMFY_INIT_ENV_FILE=$envfile "$work/comfy-init" sync >/dev/null
life auth COMFY_INIT_GPU=off COMFYUI_DIR="$work/ComfyUI" COMFY_INIT_ENV_FILE="$envfile"
envfile=

# Self cost per function, every part but start-up's (the first), mangled names made readable
# as hot-text.awk reads them back.
hot=$(for f in "$work"/plain.* "$work"/auth.*; do
    case $f in *.log | *.1) continue ;; esac
    awk '
        /^c?fn=\([0-9]+\)/ {
            id = $1; sub(/^c?fn=/, "", id); if (NF > 1) { n = $0; sub(/^[^ ]+ /, "", n); name[id] = n }
            if ($1 ~ /^fn=/) fn = name[id]
            next
        }
        /^calls=/ { skip = 1; next }
        /^[+-]?[0-9]/ { if (skip) { skip = 0; next } if (fn != "" && $2 > 0) hot[fn] = 1 }
        END { for (f in hot) { sub(/\x27[0-9]+$/, "", f); print f } } # drop callgrind recursion marks
    ' "$f"
done | sort -u)
{
    echo "# What PID 1 runs after start-up: scripts/hot-text.sh wrote it (do not edit by hand)."
    echo "# scripts/build.sh lays these functions out together; names as lld's map prints them."
    printf '%s\n' "$hot" | awk -F '\t' -v names="$work/names" '
        BEGIN { while ((getline line < names) > 0) { split(line, f, "\t"); readable[f[1]] = f[2] } }
        $0 in readable { print readable[$0] }' | sort -u
    # What the child runs between clone(CLONE_VM | CLONE_VFORK) and exec, in our memory (so its
    # pages are ours) but out of callgrind's sight.
    printf '%s\n' comfy_init::supervisor::vfork::child_main syscall
} >scripts/hot-text.txt
echo "scripts/hot-text.txt: $(grep -vc '^#' scripts/hot-text.txt) functions" >&2
bash scripts/build.sh >/dev/null
