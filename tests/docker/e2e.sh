#!/usr/bin/env bash
# End-to-end test of docker/: builds docker/Dockerfile on a debootstrapped Debian base (no image
# registry needed) with a prebuilt comfy-init and the stand-in ComfyUI, then drives the image with
# docker run / restart / stop, an atomic .env edit, docker-compose and `docker run --init`, the
# ready/alive split (a custom node that fails to import) and the drain on `docker stop`.
# Then it builds the image once more FROM SOURCE, the way users do: the repository root as the
# context (the real .dockerignore), the Dockerfile's build stage compiling with cargo --locked
# (crates from crates.io) on a build image holding the host's Rust toolchain, and checks that
# image briefly (version, NVML helper, embedded companion, healthy, clean docker stop).
#
# usage: tests/docker/e2e.sh [PATH/TO/comfy-init]     (default target/dist/comfy-init; the
#                                                     comfy-init-nvml beside it goes in too)
#
# Prints `ok - ...` / `not ok - ...` per check and `N passed, N failed` last; exits non-zero on
# any failure. With no Docker engine it says why and exits 0, unless COMFY_INIT_TESTS_MANDATORY=1.
# Env: COMFY_INIT_TEST_BASE_IMAGE (default comfy-init-test-base:bookworm, built and cached by
#      tests/docker/build-base-image.sh), COMFY_INIT_TEST_RUST_IMAGE (default
#      comfy-init-test-rust:bookworm, built and cached by tests/docker/build-rust-image.sh),
#      COMFY_INIT_E2E_KEEP=1 keeps containers/images to debug, COMFY_INIT_E2E_FROM_SOURCE=0 leaves
#      out the from-source build (minutes; to iterate on the other checks: CI runs it).
# Everything it creates (containers, images, compose project, temp files) is removed on exit;
# the base and build images are kept as caches.
set -euo pipefail

T0=$SECONDS
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${1:-$ROOT/target/dist/comfy-init}
[[ $BIN == /* ]] || BIN=$PWD/$BIN
STANDIN=$ROOT/tests/fixtures/fake_comfyui.py
BASE_IMAGE=${COMFY_INIT_TEST_BASE_IMAGE:-comfy-init-test-base:bookworm}
MANDATORY=${COMFY_INIT_TESTS_MANDATORY:-0}
FROM_SOURCE=${COMFY_INIT_E2E_FROM_SOURCE:-1}
RUN_ID=e2e$$x$RANDOM
IMG=comfy-init-e2e:$RUN_ID
IMG_SRC=comfy-init-e2e:$RUN_ID-src
RUST_IMAGE=${COMFY_INIT_TEST_RUST_IMAGE:-comfy-init-test-rust:bookworm}
LABEL=comfy-init-e2e=$RUN_ID
WORK=$(mktemp -d "${TMPDIR:-/tmp}/comfy-init-e2e.XXXXXX")
PASS=0
FAIL=0
DONE=0
COMPOSE=()
NEW_IMAGES=()

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
skip() { echo "# skip - $*"; }
note() { sed -e 's/^/#   /' || true; }
check() { # DESCRIPTION COMMAND...: one line, ok or not ok
    local d=$1
    shift
    if "$@"; then ok "$d"; else not_ok "$d"; fi
}

finish() {
    DONE=1
    echo "# total time: $((SECONDS - T0)) s"
    echo "$PASS passed, $FAIL failed"
    [[ $FAIL -eq 0 ]]
}

cleanup() {
    local rc=$?
    set +e
    if [[ $DONE == 0 ]]; then
        not_ok "e2e script aborted (status $rc, line ${ERR_LINE:-?})"
        finish
        rc=1
    fi
    if [[ ${COMFY_INIT_E2E_KEEP:-0} == 1 ]]; then
        echo "# kept: containers labelled $LABEL, images $IMG $IMG_SRC, folder $WORK" >&2
        exit "$rc"
    fi
    if ((${#COMPOSE[@]})) && [[ -f $WORK/compose/compose.yml ]]; then
        "${COMPOSE[@]}" -p "$RUN_ID" -f "$WORK/compose/compose.yml" down -v --remove-orphans >/dev/null 2>&1
    fi
    if ((${#COMPOSE[@]})) && [[ -d $WORK/cpu-config ]]; then
        COMFYUI_IMAGE="$IMG" COMFYUI_CONFIG_DIR="$WORK/cpu-config" \
            "${COMPOSE[@]}" -p "$RUN_ID-cpu" -f "$ROOT/docker/compose.cpu.yml" down -v --remove-orphans >/dev/null 2>&1
    fi
    local ids
    mapfile -t ids < <(docker ps -aq --filter "label=$LABEL" 2>/dev/null)
    ((${#ids[@]})) && docker rm -f "${ids[@]}" >/dev/null 2>&1
    docker image inspect "$IMG" >/dev/null 2>&1 && docker rmi -f "$IMG" >/dev/null 2>&1
    docker image inspect "$IMG_SRC" >/dev/null 2>&1 && docker rmi -f "$IMG_SRC" >/dev/null 2>&1
    # The classic builder leaves the build stage (and a failed build's steps) behind untagged.
    local id
    for id in "${NEW_IMAGES[@]}"; do
        docker image inspect "$id" >/dev/null 2>&1 && docker rmi "$id" >/dev/null 2>&1
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap 'ERR_LINE=$LINENO' ERR
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

wait_until() { # TIMEOUT_S COMMAND...: poll every 0.25 s
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.25
    done
}
wait_alive() { # CONTAINER TIMEOUT_S COMMAND...: like wait_until, fails at once if CONTAINER stops
    local c=$1 deadline=$((SECONDS + $2))
    shift 2
    until "$@"; do
        running "$c" || return 1
        ((SECONDS >= deadline)) && return 1
        sleep 0.25
    done
}

# ---------------------------------------------------------------------------------------------
# Static checks: no engine needed.

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
fi
if ((${#COMPOSE[@]})); then
    if out=$("${COMPOSE[@]}" -f "$ROOT/docker/compose.cpu.yml" config -q 2>&1); then
        ok "docker/compose.cpu.yml validates (${COMPOSE[*]} config)"
    else
        not_ok "docker/compose.cpu.yml validates (${COMPOSE[*]} config)"
        note <<<"$out"
    fi
    if out=$("${COMPOSE[@]}" -f "$ROOT/docker/compose.yml" config -q 2>&1); then
        ok "docker/compose.yml validates (${COMPOSE[*]} config)"
    else
        not_ok "docker/compose.yml validates (${COMPOSE[*]} config)"
        note <<<"$out"
    fi
    if out=$("${COMPOSE[@]}" -f "$ROOT/docker/compose.multi-gpu.yml" config 2>&1) &&
        grep -q "COMFY_INIT_INSTANCES: per-gpu" <<<"$out" && grep -q "count: all" <<<"$out"; then
        ok "docker/compose.multi-gpu.yml validates: one ComfyUI per GPU, all GPUs (${COMPOSE[*]} config)"
    else
        not_ok "docker/compose.multi-gpu.yml validates: one ComfyUI per GPU, all GPUs (${COMPOSE[*]} config)"
        note <<<"$out"
    fi
elif [[ $MANDATORY == 1 ]]; then
    not_ok "docker compose or docker-compose is installed"
else
    skip "no docker compose / docker-compose: compose checks left out"
fi

# kubernetes-validate (PyPI) carries the Kubernetes JSON schemas: validation needs no network.
kv_bin() {
    if command -v kubernetes-validate >/dev/null 2>&1; then
        command -v kubernetes-validate
        return
    fi
    local venv=${XDG_CACHE_HOME:-$HOME/.cache}/comfy-init-tests/kubernetes-validate
    if [[ ! -x $venv/bin/kubernetes-validate ]]; then
        rm -rf "$venv"
        if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
            'kubernetes-validate>=1.28'; } >/dev/null 2>&1; then
            rm -rf "$venv"
            return 1
        fi
    fi
    echo "$venv/bin/kubernetes-validate"
}
if kv=$(kv_bin); then
    if out=$("$kv" --strict --quiet "$ROOT/docker/k8s.yaml" 2>&1); then
        ok "docker/k8s.yaml validates offline against the Kubernetes schemas (kubernetes-validate --strict)"
    else
        not_ok "docker/k8s.yaml validates offline against the Kubernetes schemas (kubernetes-validate --strict)"
        note <<<"$out"
    fi
elif [[ $MANDATORY == 1 ]]; then
    not_ok "kubernetes-validate is installed (pip install kubernetes-validate)"
else
    skip "kubernetes-validate not installed and not installable: k8s.yaml not validated"
fi

# ---------------------------------------------------------------------------------------------
# Engine, binary, base image, image build.

if ! out=$(timeout 30 docker info 2>&1 >/dev/null); then
    echo "# no Docker engine answers (docker info: $(head -n 1 <<<"$out")): Docker e2e checks left out"
    if [[ $MANDATORY == 1 ]]; then
        not_ok "a Docker engine answers (COMFY_INIT_TESTS_MANDATORY=1)"
    fi
    finish
    exit
fi

if ! command -v curl >/dev/null 2>&1; then
    not_ok "curl is installed on the host (apt-get install curl)"
    finish
    exit
fi
if [[ ! -x $BIN ]]; then
    not_ok "comfy-init binary exists and is executable: $BIN (build it with cargo build --release)"
    finish
    exit
fi
if [[ ! -f $STANDIN ]]; then
    not_ok "stand-in ComfyUI exists: $STANDIN"
    finish
    exit
fi

t=$SECONDS
if out=$("$HERE/build-base-image.sh" "$BASE_IMAGE" 2>&1); then
    ok "base image $BASE_IMAGE is there ($((SECONDS - t)) s: $(tail -n 1 <<<"$out"))"
else
    not_ok "base image $BASE_IMAGE builds (debootstrap from deb.debian.org)"
    note <<<"$out"
    finish
    exit
fi

# Classic builder when buildx is missing (client 23+ would otherwise refuse DOCKER_BUILDKIT=1).
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

mkdir -p "$WORK/ctx"
cp "$BIN" "$WORK/ctx/comfy-init"
cp "$(dirname "$BIN")/comfy-init-nvml" "$WORK/ctx/comfy-init-nvml"
cp "$STANDIN" "$WORK/ctx/fake_comfyui.py"
mkdir -p "$WORK/ctx/docker/pre-start.d"
cp "$ROOT/docker/pre-start.d/20-provision" "$WORK/ctx/docker/pre-start.d/"
# Untagged images a build added (newest first): the build stage, and after a failed build the
# steps that did succeed. Removed in cleanup; `docker rmi IMG` only takes the runtime stage's.
track_new_images() {
    local id after
    mapfile -t after < <(docker images -aq --no-trunc)
    for id in "${after[@]}"; do
        [[ " ${images_before[*]} " == *" $id "* ]] || NEW_IMAGES+=("$id")
    done
}
mapfile -t images_before < <(docker images -aq --no-trunc)
t=$SECONDS
if out=$(docker build -f "$ROOT/docker/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "BUILD_IMAGE=$BASE_IMAGE" \
    --build-arg COMFY_INIT_BINARY=comfy-init \
    --build-arg COMFYUI_STANDIN=fake_comfyui.py \
    --force-rm --label "$LABEL" -t "$IMG" "$WORK/ctx" 2>&1); then
    ok "docker/Dockerfile builds on $BASE_IMAGE with the prebuilt binary and the stand-in ($((SECONDS - t)) s)"
    build_ok=1
else
    not_ok "docker/Dockerfile builds on $BASE_IMAGE with the prebuilt binary and the stand-in"
    note <<<"$(tail -n 30 <<<"$out")"
    build_ok=0
fi
track_new_images
if [[ $build_ok == 0 ]]; then
    finish
    exit
fi

image_field() { docker image inspect -f "$1" "$IMG"; }
check "image: ENTRYPOINT is [\"comfy-init\"] in exec form" \
    test "$(image_field '{{json .Config.Entrypoint}}')" = '["comfy-init"]'
check "image: HEALTHCHECK runs [comfy-init healthcheck] with a start period" \
    test "$(image_field '{{json .Config.Healthcheck.Test}} {{gt .Config.Healthcheck.StartPeriod 0}}')" \
    = '["CMD","comfy-init","healthcheck"] true'
check "image: STOPSIGNAL is SIGTERM" test "$(image_field '{{.Config.StopSignal}}')" = SIGTERM
if out=$(docker run --rm --label "$LABEL" "$IMG" --version 2>&1); then
    ok "image: comfy-init --version runs in the image (glibc matches): $(head -n 1 <<<"$out")"
else
    not_ok "image: comfy-init --version runs in the image (glibc matches)"
    note <<<"$out"
fi
# No GPU here: the answer must be NVML's absence, found by comfy-init-nvml in the image (a missing
# or unloadable helper would be nvml_helper_missing / nvml_helper_failed instead).
out=$(docker run --rm --label "$LABEL" "$IMG" gpu --json 2>/dev/null || true)
code=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["findings"][0]["code"])' <<<"$out" 2>/dev/null || true)
if [[ $code == library_missing ]]; then
    ok "image: comfy-init gpu --json asks NVML through comfy-init-nvml (no GPU here: library_missing)"
else
    not_ok "image: comfy-init gpu --json asks NVML through comfy-init-nvml (got '${code:-no JSON}')"
    note <<<"$out"
fi

# ---------------------------------------------------------------------------------------------
# Helpers for the running containers.

HEALTH_OPTS=(--health-interval 1s --health-timeout 5s --health-retries 2 --health-start-period 30s)

# A `ps` for a minbase image without procps: pid ppid state uid gid comm cmdline, tab-separated.
PS_PY='
import os
for p in sorted((d for d in os.listdir("/proc") if d.isdigit()), key=int):
    try:
        st = open(f"/proc/{p}/stat").read()
        status = open(f"/proc/{p}/status").read().splitlines()
        cmd = open(f"/proc/{p}/cmdline", "rb").read()
    except OSError:
        continue
    comm = st[st.index("(") + 1:st.rindex(")")]
    state, ppid = st[st.rindex(")") + 2:].split()[:2]
    ids = {l.split(":")[0]: l.split()[1] for l in status if l.startswith(("Uid:", "Gid:"))}
    cmd = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
    print(p, ppid, state, ids["Uid"], ids["Gid"], comm, cmd, sep="\t")
'
cps() { docker exec "$1" python3 -c "$PS_PY" 2>/dev/null; }
# pid of the stand-in ComfyUI (python3 .../main.py) in container $1

running() { [[ $(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null; }
healthy() { [[ $(health "$1") == healthy ]]; }
started_at() { docker inspect -f '{{.State.StartedAt}}' "$1"; }
exit_code() { docker inspect -f '{{.State.ExitCode}}' "$1"; }
same_container_start() { running "$1" && [[ $(started_at "$1") == "$2" ]]; } # CONTAINER STARTED_AT

health_settled() { [[ $(health "$1") == @(healthy|unhealthy) ]]; }
wait_healthy() { # CONTAINER TIMEOUT_S: gives up at once when the container stops or is unhealthy
    wait_alive "$1" "$2" health_settled "$1" && healthy "$1"
}

diagnose() { # CONTAINER: logs and last health probe as comments
    {
        echo "state: $(docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}} health={{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>&1)"
        docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}probe exit={{.ExitCode}} {{.Output}}{{end}}{{end}}' "$1" 2>&1 | tail -n 4
        echo "logs:"
        docker logs --tail 25 "$1" 2>&1
    } | note
}

base_url() { # CONTAINER: http://127.0.0.1:PORT (the published port may change on restart)
    local hp
    hp=$(docker port "$1" 8188/tcp 2>/dev/null | grep -m1 '^127\.0\.0\.1:') || return 1
    echo "http://$hp"
}
http_code() { # CONTAINER PATH [TOKEN]
    local url
    url=$(base_url "$1") || { echo 000; return; }
    if [[ -n ${3:-} ]]; then
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $3" "$url$2" || true
    else
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url$2" || true
    fi
}
code_is() { [[ $(http_code "$2" "$3" "${4:-}") == "$1" ]]; } # CODE CONTAINER PATH [TOKEN]
token_of() { docker exec "$1" comfy-init token 2>/dev/null | tr -d '\r\n' || true; }
token_differs() { local t; t=$(token_of "$1"); [[ -n $t && $t != "$2" ]]; }
probe() { # CONTAINER [--ready]: `comfy-init healthcheck [--ready]` in it; sets PROBE_RC, PROBE_LINE
    PROBE_RC=0
    PROBE_LINE=$(docker exec "$1" comfy-init healthcheck "${@:2}" 2>/dev/null) || PROBE_RC=$?
}
is_ready() { probe "$1" --ready && [[ $PROBE_RC == 0 ]]; }
starts_with() { [[ $1 == "$2"* ]]; } # STRING PREFIX
# POST /prompt of a stand-in prompt that runs SECONDS: prints 'HTTP_CODE PROMPT_ID' (no id when
# it was refused).
post_prompt() { # CONTAINER TOKEN SECONDS
    local url out code id
    url=$(base_url "$1") || { echo 000; return; }
    out=$(curl -s -w '\n%{http_code}' --max-time 5 -H "Authorization: Bearer $2" \
        -H 'Content-Type: application/json' --data-binary \
        "{\"prompt\": {\"1\": {\"class_type\": \"StandinSleep\", \"inputs\": {\"seconds\": $3}}}}" \
        "$url/prompt" || true)
    code=${out##*$'\n'}
    id=$(python3 -c 'import json, sys; print(json.loads(sys.stdin.read()).get("prompt_id", ""))' \
        <<<"${out%$'\n'*}" 2>/dev/null || true)
    echo "${code:-000} $id"
}
is_bcrypt() { [[ $1 =~ ^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$ ]]; }
starts() { # EVENTS_FILE: how many times the stand-in started so far
    if [[ -f $1 ]]; then grep -c '^start ' "$1" || true; else echo 0; fi
}
starts_above() { (($(starts "$1") > $2)); }
last_events() { # EVENTS_FILE N: the last N start/signal/exit events, as 'start|signal SIGINT|exit 0|'
    grep -E '^(start|signal|exit)' "$1" 2>/dev/null | tail -n "$2" | sed 's/^start .*/start/' | tr '\n' '|' || true
}

# grep reads to the end: with -q it would quit at the first match, docker logs would die of
# SIGPIPE, and pipefail would fail the check though the line is there (a flake seen once).
logs_have() { docker logs "$1" 2>&1 | grep -F -- "$2" >/dev/null; }
stop_timed() { # CONTAINER: docker stop, sets STOP_MS and WAS_RUNNING
    local t
    WAS_RUNNING=0
    running "$1" && WAS_RUNNING=1
    t=$(now_ms)
    docker stop -t 10 "$1" >/dev/null 2>&1 || true
    STOP_MS=$(($(now_ms) - t))
}
check_clean_stop() { # CONTAINER EVENTS_FILE WHAT
    local c=$1 ev=$2 what=$3 logs
    check "$what: the container was still running before docker stop" test "$WAS_RUNNING" = 1
    check "$what: docker stop returns well under Docker's 10 s (took $STOP_MS ms)" test "$STOP_MS" -lt 5000
    check "$what: exit code 0 after docker stop (got $(exit_code "$c"))" test "$(exit_code "$c")" = 0
    logs=$(docker logs "$c" 2>&1 || true)
    check "$what: the stand-in got SIGINT and stopped cleanly ('Stopped server' in the logs)" \
        grep -q 'Stopped server' <<<"$logs"
    check "$what: the stand-in's last events are 'signal SIGINT' then 'exit 0'" \
        test "$(last_events "$ev" 2)" = "signal SIGINT|exit 0|"
}

mkdir -p "$WORK/events"
chmod 0777 "$WORK/events"

# ---------------------------------------------------------------------------------------------
# docker run: healthy, token, auth.

mkdir -p "$WORK/config"
printf '# comfy-init e2e\nCOMFYUI_USERNAME=admin\nCOMFYUI_PASSWORD=e2e-first-password\n' >"$WORK/config/.env"
C1=comfy-init-$RUN_ID-main
EV1=$WORK/events/main.log
docker run -d --name "$C1" --label "$LABEL" -p 127.0.0.1::8188 \
    -v "$WORK/config:/config" -v "$WORK/events:/events" \
    -e COMFY_INIT_GPU=off -e RUST_LOG=debug -e FAKE_COMFYUI_EVENTS=/events/main.log \
    "${HEALTH_OPTS[@]}" "$IMG" >/dev/null

t=$SECONDS
if wait_healthy "$C1" 60; then
    ok "docker run: the container turns healthy ($((SECONDS - t)) s)"
else
    not_ok "docker run: the container turns healthy"
    diagnose "$C1"
fi
check "docker run: PID 1 is comfy-init" \
    test "$(docker exec "$C1" cat /proc/1/comm 2>/dev/null || true)" = comfy-init
TOKEN1=$(token_of "$C1")
check "comfy-init token prints a bcrypt hash (got ${#TOKEN1} chars)" is_bcrypt "$TOKEN1"
check "the token gets 200 on /system_stats" code_is 200 "$C1" /system_stats "$TOKEN1"
check "no token gets 401 on /system_stats" code_is 401 "$C1" /system_stats
check "a wrong token gets 401 on /system_stats" code_is 401 "$C1" /system_stats 'not-the-token'
check "the token is written back to the mounted .env as COMFYUI_BEARER_TOKEN='...'" \
    grep -qxF "COMFYUI_BEARER_TOKEN='$TOKEN1'" "$WORK/config/.env"
# Readiness (for a load balancer, Kubernetes' readinessProbe) apart from liveness (Docker's
# HEALTHCHECK): PID 1's phase is running, the companion saw no custom node fail to import and
# nothing waits.
t=$SECONDS
wait_alive "$C1" 10 is_ready "$C1" || true
if [[ $PROBE_RC == 0 && $PROBE_LINE == "ready: no custom node reported IMPORT FAILED, 0 prompts waiting; healthy"* ]] &&
    healthy "$C1"; then
    ok "healthcheck --ready: exits 0 with 'ready: ...' and Docker says healthy ($((SECONDS - t)) s after healthy)"
else
    not_ok "healthcheck --ready: exits 0 with 'ready: ...' and Docker says healthy"
    note <<<"healthcheck --ready: exit $PROBE_RC: $PROBE_LINE; docker health: $(health "$C1")"
fi

# The whole container as one user (`--user 1000:1000`, Kubernetes' runAsUser): PID 1 cannot make
# /run/comfy-init, so its phase goes to a folder of its own in /tmp, where its healthcheck (an exec
# as the same user) looks too.
CU=comfy-init-$RUN_ID-user
mkdir -p "$WORK/config-user"
printf 'COMFYUI_PASSWORD=e2e-user-password\n' >"$WORK/config-user/.env"
chown -R 1000:1000 "$WORK/config-user"
docker run -d --name "$CU" --label "$LABEL" --user 1000:1000 -v "$WORK/config-user:/config" \
    -e COMFY_INIT_GPU=off "${HEALTH_OPTS[@]}" "$IMG" >/dev/null
if wait_healthy "$CU" 60 && wait_alive "$CU" 10 is_ready "$CU" && [[ $PROBE_LINE == "ready:"* ]]; then
    ok "docker run --user 1000:1000: healthy, and healthcheck --ready says ready (phase in /tmp)"
else
    not_ok "docker run --user 1000:1000: healthy, and healthcheck --ready says ready (phase in /tmp)"
    note <<<"healthcheck --ready: exit ${PROBE_RC:-?}: ${PROBE_LINE:-}"
    diagnose "$CU"
fi
docker rm -f "$CU" >/dev/null 2>&1 || true

# ---------------------------------------------------------------------------------------------
# docker restart: same container filesystem, same token.

n=$(starts "$EV1")
docker restart -t 10 "$C1" >/dev/null 2>&1 || true
t=$SECONDS
if wait_alive "$C1" 30 starts_above "$EV1" "$n" && wait_healthy "$C1" 60; then
    ok "docker restart: healthy again ($((SECONDS - t)) s)"
else
    not_ok "docker restart: healthy again"
    diagnose "$C1"
fi
TOKEN2=$(token_of "$C1")
check "docker restart: the token is unchanged" test -n "$TOKEN2" -a "$TOKEN2" = "$TOKEN1"
check "docker restart: the token still gets 200" code_is 200 "$C1" /system_stats "$TOKEN1"

# ---------------------------------------------------------------------------------------------
# Edit the password in the mounted .env like an editor does (write a temp file, rename it over).

STARTED=$(started_at "$C1")
n=$(starts "$EV1")
sed 's/^COMFYUI_PASSWORD=.*/COMFYUI_PASSWORD=e2e-second-password/' "$WORK/config/.env" >"$WORK/config/.env.e2e-tmp"
mv "$WORK/config/.env.e2e-tmp" "$WORK/config/.env"
t=$SECONDS
if wait_alive "$C1" 30 token_differs "$C1" "$TOKEN1"; then
    ok ".env edited on the host: comfy-init token changes ($((SECONDS - t)) s)"
else
    not_ok ".env edited on the host: comfy-init token changes"
    diagnose "$C1"
fi
TOKEN3=$(token_of "$C1")
if [[ -n $TOKEN3 && $TOKEN3 != "$TOKEN1" ]] && wait_alive "$C1" 30 code_is 200 "$C1" /system_stats "$TOKEN3"; then
    ok ".env edited: the new token gets 200 ($((SECONDS - t)) s)"
else
    not_ok ".env edited: the new token gets 200"
fi
check ".env edited: the old token gets 401" code_is 401 "$C1" /system_stats "$TOKEN1"
# The companion node (installed by comfy-init into custom_nodes/) applies it in place.
check ".env edited: applied in place, the stand-in was not restarted (start events $n -> $(starts "$EV1"))" \
    test "$(starts "$EV1")" = "$n"
# PID 1 logs its proof a moment after the new token answers (its probe follows the reload).
check ".env edited: comfy-init says it proved the reload" \
    wait_alive "$C1" 15 logs_have "$C1" 'no restart needed'
check ".env edited: the token is not in docker logs" \
    sh -c "! docker logs '$C1' 2>&1 | grep -qF '$TOKEN3'"
check ".env edited: the container itself kept running (same StartedAt)" \
    same_container_start "$C1" "$STARTED"
check ".env edited: the container is still healthy" wait_healthy "$C1" 15
if wait_alive "$C1" 10 is_ready "$C1"; then
    ok ".env edited: healthcheck --ready says ready again (phase back to running after the reload)"
else
    not_ok ".env edited: healthcheck --ready says ready again (phase back to running after the reload)"
    note <<<"healthcheck --ready: exit $PROBE_RC: $PROBE_LINE"
fi

# ---------------------------------------------------------------------------------------------
# docker stop: SIGTERM to comfy-init -> SIGINT to ComfyUI -> clean exit 0.

stop_timed "$C1"
check_clean_stop "$C1" "$EV1" "docker stop"

# ---------------------------------------------------------------------------------------------
# docker stop with COMFY_INIT_DRAIN_TIMEOUT: the prompts ComfyUI took (one running, one waiting)
# finish; meanwhile a new prompt gets 503, readiness fails and liveness holds; then SIGINT, exit 0.

mkdir -p "$WORK/drain-config"
printf 'COMFYUI_PASSWORD=e2e-drain-password\n' >"$WORK/drain-config/.env"
C10=comfy-init-$RUN_ID-drain
EV10=$WORK/events/drain.log
docker run -d --name "$C10" --label "$LABEL" -p 127.0.0.1::8188 \
    -v "$WORK/drain-config:/config" -v "$WORK/events:/events" \
    -e COMFY_INIT_GPU=off -e COMFY_INIT_DRAIN_TIMEOUT=20s -e FAKE_COMFYUI_EVENTS=/events/drain.log \
    "${HEALTH_OPTS[@]}" "$IMG" >/dev/null
if wait_healthy "$C10" 60 && wait_alive "$C10" 10 is_ready "$C10"; then
    ok "drain: a container with COMFY_INIT_DRAIN_TIMEOUT=20s turns healthy and ready"
else
    not_ok "drain: a container with COMFY_INIT_DRAIN_TIMEOUT=20s turns healthy and ready"
    diagnose "$C10"
fi
TOKEN10=$(token_of "$C10")
read -r code ID1 < <(post_prompt "$C10" "$TOKEN10" 3)
check "drain: POST /prompt of a 3 s prompt is taken (HTTP $code, id '$ID1')" test "$code" = 200 -a -n "$ID1"
wait_alive "$C10" 15 grep -qxF "prompt_started $ID1" "$EV10" || true
read -r code ID2 < <(post_prompt "$C10" "$TOKEN10" 1)
check "drain: a second one (1 s) waits behind it (HTTP $code, id '$ID2')" test "$code" = 200 -a -n "$ID2"
WAS_RUNNING=0
running "$C10" && WAS_RUNNING=1
t=$(now_ms)
docker stop -t 30 "$C10" >/dev/null 2>&1 &
stop_pid=$!
# The probe logs this once the companion refuses (the drain signal is handled in ComfyUI's time).
if wait_alive "$C10" 10 logs_have "$C10" "draining: ComfyUI refuses new prompts (503)"; then
    read -r code _ < <(post_prompt "$C10" "$TOKEN10" 0)
    check "drain: during docker stop, a new POST /prompt gets 503 (got $code)" test "$code" = 503
    probe "$C10" --ready
    check "drain: during docker stop, healthcheck --ready exits 1: NOT READY, draining (exit $PROBE_RC: $PROBE_LINE)" \
        starts_with "$PROBE_RC $PROBE_LINE" "1 NOT READY: ComfyUI is draining"
    probe "$C10"
    check "drain: during docker stop, healthcheck (liveness) still exits 0 (exit $PROBE_RC: $PROBE_LINE)" \
        test "$PROBE_RC" = 0
    check "drain: during docker stop, Docker's health status stays healthy (got '$(health "$C10")')" healthy "$C10"
else
    not_ok "drain: docker stop starts a drain ('draining: ComfyUI refuses new prompts (503)' in the logs)"
    diagnose "$C10"
fi
wait "$stop_pid" || true
STOP_MS=$(($(now_ms) - t))
check "drain: the container was still running before docker stop" test "$WAS_RUNNING" = 1
check "drain: docker stop -t 30 returns once the queue is empty, well before 30 s (took $STOP_MS ms)" \
    test "$STOP_MS" -lt 15000
check "drain: exit code 0 after docker stop (got $(exit_code "$C10"))" test "$(exit_code "$C10")" = 0
events=$(cat "$EV10" 2>/dev/null || true)
both_done() { # EVENTS ID ID: both prompts done, none dropped
    grep -qxF "prompt_done $2" <<<"$1" && grep -qxF "prompt_done $3" <<<"$1" && ! grep -q '^prompt_dropped' <<<"$1"
}
check "drain: both prompts ran to the end (prompt_done for each, none dropped)" both_done "$events" "$ID1" "$ID2"
check "drain: the prompt refused with 503 was never queued (2 prompt_queued)" \
    test "$(grep -c '^prompt_queued ' <<<"$events" || true)" = 2
check "drain: the stand-in got SIGINT only after the last prompt was done" \
    test "$(grep -nxF "prompt_done $ID2" <<<"$events" | cut -d: -f1)" \
    -lt "$(grep -nx 'signal SIGINT' <<<"$events" | tail -n 1 | cut -d: -f1)"
check "drain: the stand-in's last events are 'signal SIGINT' then 'exit 0'" \
    test "$(last_events "$EV10" 2)" = "signal SIGINT|exit 0|"
check "drain: docker logs say it waited for 1 running and 1 waiting prompt" \
    logs_have "$C10" "draining: ComfyUI refuses new prompts (503); waiting for 1 running and 1 waiting"
check "drain: docker logs say the drain ended with the queue empty, then ComfyUI was stopped" \
    logs_have "$C10" "drain over (the queue is empty): stopping ComfyUI"

# ---------------------------------------------------------------------------------------------
# PUID/PGID: ComfyUI runs unprivileged, login/PASSWORD belongs to it.

mkdir -p "$WORK/config-puid"
printf 'COMFYUI_PASSWORD=e2e-puid-password\n' >"$WORK/config-puid/.env"
C3=comfy-init-$RUN_ID-puid
docker run -d --name "$C3" --label "$LABEL" -p 127.0.0.1::8188 -v "$WORK/config-puid:/config" \
    -v "$WORK/events:/events" -e PUID=1000 -e PGID=1000 -e COMFY_INIT_GPU=off \
    -e FAKE_COMFYUI_EVENTS=/events/puid.log "${HEALTH_OPTS[@]}" "$IMG" >/dev/null
if wait_healthy "$C3" 60; then
    ok "PUID=1000 PGID=1000: the container turns healthy"
else
    not_ok "PUID=1000 PGID=1000: the container turns healthy"
    diagnose "$C3"
fi
uidgid=$(cps "$C3" | awk -F'\t' '$3 != "Z" && $7 ~ /main\.py/ && $6 ~ /^python/ {print $4 ":" $5; exit}' || true)
check "PUID/PGID: the stand-in ComfyUI runs as 1000:1000 (got '${uidgid:-none}')" test "$uidgid" = 1000:1000
owner=$(docker exec "$C3" stat -c '%u:%g %a' /opt/ComfyUI/login/PASSWORD 2>/dev/null || true)
check "PUID/PGID: login/PASSWORD is 1000:1000 mode 600 (got '${owner:-missing}')" test "$owner" = "1000:1000 600"
check "PUID/PGID: the token gets 200" code_is 200 "$C3" /system_stats "$(token_of "$C3")"
docker rm -f "$C3" >/dev/null 2>&1 || true

# ---------------------------------------------------------------------------------------------
# docker run --init: tini is PID 1, comfy-init must be a subreaper, reap, and still stop cleanly.

mkdir -p "$WORK/config-init"
printf 'COMFYUI_PASSWORD=e2e-init-password\n' >"$WORK/config-init/.env"
C2=comfy-init-$RUN_ID-init
EV2=$WORK/events/init.log
# The child leaves two orphans behind: a long one (must be re-parented to comfy-init, the
# subreaper, not to tini) and a short one (must be reaped when it exits: no zombie left).
# The long one restores SIGINT (a shell's background job starts with it ignored), so that the
# stop below measures comfy-init, not a process that sits out the whole stop timeout.
ORPHANS_THEN_COMFYUI='(python3 -c "import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); time.sleep(300)" e2e-orphan &)
(sleep 1 &)
exec python3 /opt/ComfyUI/main.py --listen 0.0.0.0 --port 8188'
docker run -d --init --name "$C2" --label "$LABEL" -p 127.0.0.1::8188 \
    -v "$WORK/config-init:/config" -v "$WORK/events:/events" \
    -e COMFY_INIT_GPU=off -e RUST_LOG=debug -e FAKE_COMFYUI_EVENTS=/events/init.log \
    "${HEALTH_OPTS[@]}" "$IMG" run -- sh -c \
    "$ORPHANS_THEN_COMFYUI" >/dev/null
if wait_healthy "$C2" 60; then
    ok "docker run --init: the container turns healthy"
else
    not_ok "docker run --init: the container turns healthy"
    diagnose "$C2"
fi
pid1=$(docker exec "$C2" cat /proc/1/comm 2>/dev/null || true)
check "docker run --init: PID 1 is tini/docker-init (got '${pid1:-none}')" \
    test "$pid1" = docker-init -o "$pid1" = tini
sleep 2 # let the short orphan exit
table=$(cps "$C2" || true)
ci_pid=$(awk -F'\t' '$6 == "comfy-init" && $3 != "Z" {print $1; exit}' <<<"$table")
orphan_ppid=$(awk -F'\t' '$7 ~ / e2e-orphan$/ {print $2; exit}' <<<"$table")
check "docker run --init: an orphan is re-parented to comfy-init (subreaper: ppid ${orphan_ppid:-?}, comfy-init ${ci_pid:-?})" \
    test -n "$ci_pid" -a "$orphan_ppid" = "$ci_pid"
zombies=$(awk -F'\t' '$3 == "Z"' <<<"$table")
check "docker run --init: no zombie left after an orphan exits" test -n "$table" -a -z "$zombies"
[[ -z $zombies ]] || note <<<"$zombies"
check "docker run --init: the token gets 200" code_is 200 "$C2" /system_stats "$(token_of "$C2")"
stop_timed "$C2"
check_clean_stop "$C2" "$EV2" "docker stop with --init"

# ---------------------------------------------------------------------------------------------
# Compose: env_file holding a bcrypt hash (single-quoted, the form comfy-init writes to .env).

if ((${#COMPOSE[@]})); then
    mkdir -p "$WORK/compose"
    HASH=$(docker run --rm --label "$LABEL" --entrypoint python3 "$IMG" -W ignore -c \
        'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=4096)))' \
        e2e-compose-password 2>/dev/null || true)
    printf "COMFYUI_PASSWORD=e2e-compose-password\nCOMFYUI_BEARER_TOKEN='%s'\n" "$HASH" >"$WORK/compose/app.env"
    cat >"$WORK/compose/compose.yml" <<EOF
services:
  comfyui:
    image: $IMG
    init: false
    labels:
      - $LABEL
    env_file:
      - app.env
    environment:
      COMFY_INIT_GPU: "off"
EOF
    dc() { "${COMPOSE[@]}" -p "$RUN_ID" -f "$WORK/compose/compose.yml" "$@"; }
    got=$(dc run --rm -T --entrypoint printenv comfyui COMFYUI_BEARER_TOKEN 2>/dev/null | tr -d '\r' || true)
    check "${COMPOSE[*]} env_file: a single-quoted bcrypt hash reaches the container intact" \
        test -n "$HASH" -a "$got" = "$HASH"
    got=$(dc run --rm -T --entrypoint sh comfyui -c 'comfy-init sync >/dev/null 2>&1; comfy-init token' \
        2>/dev/null | tr -d '\r' || true)
    check "${COMPOSE[*]} env_file: comfy-init keeps the pinned COMFYUI_BEARER_TOKEN that verifies the password" \
        test -n "$HASH" -a "$got" = "$HASH"
    dc down -v --remove-orphans >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------------------------------------
# ComfyUI flags after the image name; PUID with a root-owned bind-mounted output/; a custom node
# that fails to import (mounted read-only into custom_nodes/): the ready/alive split.

mkdir -p "$WORK/flags-config" "$WORK/output-root" "$WORK/broken-node"
printf 'COMFYUI_PASSWORD=e2e-flags-password\n' >"$WORK/flags-config/.env"
printf 'raise ImportError("e2e: this custom node is broken on purpose")\n' >"$WORK/broken-node/__init__.py"
chmod 755 "$WORK/broken-node"
chmod 644 "$WORK/broken-node/__init__.py"
C4=comfy-init-$RUN_ID-flags
docker run -d --name "$C4" --label "$LABEL" -p 127.0.0.1::8188 \
    -v "$WORK/flags-config:/config" -v "$WORK/output-root:/opt/ComfyUI/output" \
    -v "$WORK/broken-node:/opt/ComfyUI/custom_nodes/Broken:ro" \
    -e COMFY_INIT_GPU=off -e PUID=1000 -e PGID=1000 \
    "${HEALTH_OPTS[@]}" "$IMG" --cpu --preview-method auto >/dev/null
if wait_healthy "$C4" 60; then
    ok "docker run IMAGE --cpu --preview-method auto, PUID=1000, root-owned output/: healthy"
else
    not_ok "docker run IMAGE --cpu --preview-method auto, PUID=1000, root-owned output/: healthy"
    diagnose "$C4"
fi
argv=$(curl -s --max-time 5 -H "Authorization: Bearer $(token_of "$C4")" "$(base_url "$C4")/system_stats" |
    python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["system"]["argv"]))' 2>/dev/null || true)
check "docker run IMAGE --cpu --preview-method auto: the flags reach ComfyUI ($argv)" \
    grep -q -- '--cpu --preview-method auto$' <<<"$argv"
check "PUID=1000: the root-owned bind-mounted output/ now belongs to 1000:1000 ($(stat -c %u:%g "$WORK/output-root"))" \
    test "$(stat -c %u:%g "$WORK/output-root")" = "1000:1000"
# ComfyUI serves on without the node (and auth holds): alive, so Docker must not call it unhealthy
# (an autoheal would restart it in a loop), but not ready: its workflows would fail.
check "broken custom node: ComfyUI's log says IMPORT FAILED for it" \
    sh -c "docker logs '$C4' 2>&1 | grep -F '(IMPORT FAILED)' | grep -q 'custom_nodes/Broken'"
probe "$C4" --ready
check "broken custom node: healthcheck --ready exits 1 with 'NOT READY: custom nodes failed to import: Broken' (exit $PROBE_RC: $PROBE_LINE)" \
    starts_with "$PROBE_RC $PROBE_LINE" "1 NOT READY: custom nodes failed to import: Broken "
probe "$C4"
check "broken custom node: healthcheck (liveness) exits 0 (exit $PROBE_RC: $PROBE_LINE)" test "$PROBE_RC" = 0
check "broken custom node: Docker's health status is healthy (got '$(health "$C4")')" healthy "$C4"

# ---------------------------------------------------------------------------------------------
# Pre-start hooks in /config/pre-start.d: before ComfyUI, a failure stops the start, docker stop
# ends a long one.

hook_container() { # NAME SCRIPT: a container whose only hook is NAME; prints its id
    local dir=$WORK/hooks-$1
    mkdir -p "$dir/pre-start.d"
    printf 'COMFYUI_PASSWORD=e2e-hooks-password\n' >"$dir/.env"
    printf '#!/bin/sh\n%s\n' "$2" >"$dir/pre-start.d/$1"
    chmod 755 "$dir/pre-start.d/$1"
    docker run -d --name "comfy-init-$RUN_ID-hook-$1" --label "$LABEL" -p 127.0.0.1::8188 \
        -v "$dir:/config" -e COMFY_INIT_GPU=off "${HEALTH_OPTS[@]}" "$IMG"
}
line_of() { docker logs "$1" 2>&1 | grep -nF -- "$2" | head -n 1 | cut -d: -f1; }

C6=$(hook_container 10-marker 'echo marker written; touch /tmp/hook-ran')
if wait_healthy "$C6" 60; then ok "pre-start hook: the container turns healthy"; else not_ok "pre-start hook: healthy"; diagnose "$C6"; fi
check "pre-start hook: its output is in docker logs, prefixed by its name" logs_have "$C6" "[pre-start 10-marker] marker written"
check "pre-start hook: done before ComfyUI started" \
    test "$(line_of "$C6" "pre-start hook 10-marker done")" -lt "$(line_of "$C6" "started python3")"
C7=$(hook_container 10-broken 'echo cannot do it; exit 3')
wait_alive "$C7" 30 false || true # until it stops
check "pre-start hook that fails: the container stops with its status (got $(exit_code "$C7"))" test "$(exit_code "$C7")" = 3
check "pre-start hook that fails: the log names it and its status" \
    logs_have "$C7" "pre-start hook 10-broken failed (exit code 3): ComfyUI not started"
C8=$(hook_container 10-sleep 'echo sleeping; sleep 60')
wait_alive "$C8" 30 logs_have "$C8" "[pre-start 10-sleep] sleeping" || true
stop_timed "$C8"
check "pre-start hook sleeping 60 s: docker stop returns within the grace (took $STOP_MS ms)" test "$STOP_MS" -lt 9000

# ---------------------------------------------------------------------------------------------
# docker/compose.cpu.yml: comes up on an engine without the NVIDIA runtime (this one).

if ((${#COMPOSE[@]})); then
    mkdir -p "$WORK/cpu-config"
    printf 'COMFYUI_PASSWORD=e2e-cpu-password\n' >"$WORK/cpu-config/.env"
    cpu() {
        COMFYUI_IMAGE="$IMG" COMFYUI_CONFIG_DIR="$WORK/cpu-config" COMFYUI_BIND=127.0.0.1 COMFYUI_HOST_PORT= \
            COMFYUI_HEALTH_INTERVAL=1s "${COMPOSE[@]}" -p "$RUN_ID-cpu" -f "$ROOT/docker/compose.cpu.yml" "$@"
    }
    cpu up -d --no-build >/dev/null 2>&1 || true
    C5=$(cpu ps -q comfyui 2>/dev/null | head -n 1)
    if [[ -n $C5 ]] && wait_healthy "$C5" 90; then
        ok "${COMPOSE[*]} -f docker/compose.cpu.yml up: healthy without an NVIDIA runtime"
    else
        not_ok "${COMPOSE[*]} -f docker/compose.cpu.yml up: healthy without an NVIDIA runtime"
        [[ -n $C5 ]] && diagnose "$C5"
    fi
    # Its COMFY_INIT_DRAIN_TIMEOUT=120s: a stop drains, and with nothing queued that is at once.
    if [[ -n $C5 ]]; then
        t=$(now_ms)
        cpu stop >/dev/null 2>&1 || true
        STOP_MS=$(($(now_ms) - t))
        drained_at_once() { ((STOP_MS < 10000)) && [[ $(exit_code "$1") == 0 ]] && logs_have "$1" "drain over (the queue is empty)"; }
        check "${COMPOSE[*]} stop (COMFY_INIT_DRAIN_TIMEOUT=120s), nothing queued: the drain ends at once, exit 0 (took $STOP_MS ms, exit $(exit_code "$C5"))" \
            drained_at_once "$C5"
    fi
    cpu down -v --remove-orphans >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------------------------------------
# From source, once: the repository root as the context, so through the real .dockerignore, and
# the Dockerfile's own build stage (cargo --locked, crates from crates.io, scripts/build.sh) on a
# build image holding the host's toolchain (rustup's servers may be out of reach). Then a
# reduced set of checks on that image.

if [[ $FROM_SOURCE == 0 ]]; then
    skip "from source: the build and its checks left out (COMFY_INIT_E2E_FROM_SOURCE=0)"
    finish
    exit
fi
t=$SECONDS
if out=$("$HERE/build-rust-image.sh" "$RUST_IMAGE" "$BASE_IMAGE" 2>&1); then
    ok "build image $RUST_IMAGE is there ($((SECONDS - t)) s: $(tail -n 1 <<<"$out"))"
    rust_ok=1
else
    not_ok "build image $RUST_IMAGE builds (the host's toolchain, gcc and libc6-dev on $BASE_IMAGE)"
    note <<<"$out"
    rust_ok=0
fi
if [[ $rust_ok == 1 ]]; then
    mapfile -t images_before < <(docker images -aq --no-trunc)
    t=$SECONDS
    # --no-cache: a build stage left cached by an earlier run would skip the compile.
    if out=$(cd "$ROOT" && docker build -f docker/Dockerfile --no-cache \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "BUILD_IMAGE=$RUST_IMAGE" \
        --build-arg COMFYUI_STANDIN=tests/fixtures/fake_comfyui.py \
        --force-rm --label "$LABEL" -t "$IMG_SRC" . 2>&1); then
        echo "# from-source build: $((SECONDS - t)) s"
        ok "from source: docker/Dockerfile builds with the repository root as context ($((SECONDS - t)) s)"
        build_ok=1
    else
        echo "# from-source build: $((SECONDS - t)) s (failed)"
        not_ok "from source: docker/Dockerfile builds with the repository root as context"
        note <<<"$(tail -n 30 <<<"$out")"
        build_ok=0
    fi
    track_new_images
fi
if [[ $rust_ok == 1 && $build_ok == 1 ]]; then
    version=$(sed -n 's/^version = "\(.*\)"/comfy-init \1/p' "$ROOT/Cargo.toml" | head -n 1)
    # cargo's colours split its lines: compare without them.
    check "from source: cargo compiled comfy-init in the build stage ('Compiling ${version/ / v}' in the build log)" \
        grep -qF "Compiling ${version/ / v} (/src)" <<<"$(sed 's/\x1b\[[0-9;]*m//g' <<<"$out")"
    got=$(docker run --rm --label "$LABEL" "$IMG_SRC" --version 2>&1 | head -n 1 || true)
    check "from source: comfy-init --version in the image is Cargo.toml's ('$got')" test "$got" = "$version"
    out=$(docker run --rm --label "$LABEL" "$IMG_SRC" gpu --json 2>/dev/null || true)
    code=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["findings"][0]["code"])' <<<"$out" 2>/dev/null || true)
    check "from source: comfy-init gpu --json asks NVML through comfy-init-nvml (got '${code:-no JSON}')" \
        test "$code" = library_missing
    mkdir -p "$WORK/src-config"
    printf 'COMFYUI_PASSWORD=e2e-source-password\n' >"$WORK/src-config/.env"
    C9=comfy-init-$RUN_ID-src
    EV9=$WORK/events/src.log
    docker run -d --name "$C9" --label "$LABEL" -p 127.0.0.1::8188 \
        -v "$WORK/src-config:/config" -v "$WORK/events:/events" \
        -e COMFY_INIT_GPU=off -e FAKE_COMFYUI_EVENTS=/events/src.log \
        "${HEALTH_OPTS[@]}" "$IMG_SRC" >/dev/null
    if wait_healthy "$C9" 60; then
        ok "from source: the container turns healthy"
    else
        not_ok "from source: the container turns healthy"
        diagnose "$C9"
    fi
    check "from source: the token gets 200 on /system_stats" code_is 200 "$C9" /system_stats "$(token_of "$C9")"
    check "from source: no token gets 401 on /system_stats" code_is 401 "$C9" /system_stats
    # What include_str! embedded: the companion/ the context let through, installed as it is here.
    same_companion() {
        local f
        for f in "$ROOT"/companion/*.py; do
            docker exec "$C9" cat "/opt/ComfyUI/custom_nodes/comfy-init-companion/${f##*/}" 2>/dev/null |
                cmp -s - "$f" || return 1
        done
    }
    check "from source: the companion installed in custom_nodes/ is the repository's companion/" same_companion
    stop_timed "$C9"
    check_clean_stop "$C9" "$EV9" "from source: docker stop"
fi

finish
