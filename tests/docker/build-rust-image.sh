#!/usr/bin/env bash
# Build (once) the image the Docker e2e test compiles comfy-init in, through docker/Dockerfile's
# build stage (BUILD_IMAGE). The crate needs a newer Rust than Debian ships and rustup's servers
# may be out of reach, so the host's own toolchain goes in: FROM the test base image, gcc and
# libc6-dev from the Debian mirror (scripts/build.sh links glibc statically: libc.a), cargo and
# rustc with the libraries and the host target's standard library under /usr/local (no docs).
# The host's CA bundle replaces the image's, so that cargo reaches crates.io wherever the host
# does (TLS-intercepting proxies included).
#
# Skipped when the image is there and was made from the same rustc, base image and CA bundle
# (its label says which); otherwise rebuilt, and the image it replaces removed.
#
# usage: tests/docker/build-rust-image.sh [IMAGE] [BASE_IMAGE]
#        (defaults comfy-init-test-rust:bookworm, comfy-init-test-base:bookworm)
# env:   FORCE=1 to rebuild
set -euo pipefail

image=${1:-comfy-init-test-rust:bookworm}
base=${2:-comfy-init-test-base:bookworm}

sysroot=$(rustc --print sysroot)
rustc_version=$("$sysroot/bin/rustc" --version)
host=$("$sysroot/bin/rustc" -vV | sed -n 's/^host: //p')
base_id=$(docker image inspect -f '{{.Id}}' "$base")
ca=
for f in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -n $f && -r $f ]]; then
        ca=$f
        break
    fi
done
ca_sum=$([[ -n $ca ]] && sha256sum "$ca" | cut -c1-16 || echo none)
key="$rustc_version; base $base_id; ca $ca_sum"

old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
if [[ ${FORCE:-0} != 1 && -n $old_id ]] &&
    [[ $(docker image inspect -f '{{index .Config.Labels "comfy-init.test.key"}}' "$image") == "$key" ]]; then
    echo "rust image $image already present ($rustc_version)"
    exit 0
fi

cd "$sysroot"
shopt -s nullglob
parts=(bin/cargo bin/rustc lib/librustc_driver-*.so lib/libLLVM*.so* "lib/rustlib/$host")
for p in bin/cargo bin/rustc 'lib/librustc_driver-*.so' "lib/rustlib/$host"; do
    if ! compgen -G "$p" >/dev/null; then
        echo "$sysroot has no $p: not a toolchain laid out as rustup's" >&2
        exit 1
    fi
done

ctx=$(mktemp -d /tmp/comfy-init-rust.XXXXXX)
files=(Dockerfile)
trap 'rm -rf "$ctx"' EXIT
cat >"$ctx/Dockerfile" <<EOF
FROM $base
RUN set -eu; export DEBIAN_FRONTEND=noninteractive; \\
    apt-get update -qq; \\
    apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null; \\
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY bin/ /usr/local/bin/
COPY lib/ /usr/local/lib/
EOF
if [[ -n $ca ]]; then
    cp "$ca" "$ctx/ca-certificates.crt"
    files+=(ca-certificates.crt)
    echo 'COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt' >>"$ctx/Dockerfile"
fi
cat >>"$ctx/Dockerfile" <<EOF
RUN cargo --version && rustc --version && cc -print-file-name=libc.a | grep -q '^/'
LABEL comfy-init.test.key="$key"
EOF

start=$SECONDS
echo "building $image: $rustc_version from $sysroot, gcc and libc6-dev from the Debian mirror"
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
# The context is a tar stream: the toolchain's files straight from the sysroot, no copy on disk.
mapfile -t before < <(docker images -aq --no-trunc)
if ! out=$(tar -c "${parts[@]}" -C "$ctx" "${files[@]}" |
    docker build --force-rm -t "$image" - 2>&1); then
    tail -n 30 <<<"$out" >&2
    # The classic builder keeps the steps that did succeed as untagged images.
    for id in $(docker images -aq --no-trunc); do
        [[ " ${before[*]} " == *" $id "* ]] || docker rmi "$id" >/dev/null 2>&1 || true
    done
    exit 1
fi
new_id=$(docker image inspect -f '{{.Id}}' "$image")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi
echo "built $image in $((SECONDS - start)) s: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
