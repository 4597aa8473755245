#!/usr/bin/env bash
# Build (once) the small Debian base image the Docker e2e test builds docker/Dockerfile on.
# No image registry is needed: the root filesystem comes from deb.debian.org via debootstrap and
# is turned into an image with `docker import`. Skipped when the image already exists.
#
# usage: tests/docker/build-base-image.sh [IMAGE]   (default comfy-init-test-base:bookworm)
# env:   COMFY_INIT_TEST_MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild
set -euo pipefail

image=${1:-comfy-init-test-base:bookworm}
suite=bookworm
mirror=${COMFY_INIT_TEST_MIRROR:-http://deb.debian.org/debian}

if [[ ${FORCE:-0} != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image already present"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [[ $(id -u) != 0 ]]; then
        echo "debootstrap is missing and we are not root to install it" >&2
        exit 1
    fi
    echo "installing debootstrap"
    apt-get install -y --no-install-recommends debootstrap >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends debootstrap >/dev/null
    }
fi

rootfs=$(mktemp -d /tmp/comfy-init-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$rootfs"' EXIT

start=$SECONDS
echo "debootstrap $suite into $rootfs (minbase + python3, a few minutes)"
debootstrap --variant=minbase --include=python3,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"

# Keep it small: nothing here is needed at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/* 2>/dev/null || true
find "$rootfs"/usr/lib/python3* -name '__pycache__' -prune -exec rm -rf {} + 2>/dev/null || true
# The host's resolv.conf/hostname leak in through debootstrap; Docker provides its own.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

tar --numeric-owner -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["/bin/bash"]' \
    -m "debootstrap --variant=minbase --include=python3,ca-certificates $suite" \
    - "$image" >/dev/null
echo "built $image in $((SECONDS - start)) s: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
