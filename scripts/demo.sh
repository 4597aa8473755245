#!/usr/bin/env bash
# `make demo`: comfy-init over the stand-in ComfyUI in a temporary workspace. Watch the GPU
# preflight, the generated password and token, a healthcheck, a password rotation applied in
# place (no restart, the token redacted from the log), ComfyUI-Login's open doors closed (user
# files through .js paths, wrong logins throttled), the PyTorch-against-card check, a hostile
# PASSWORD refused without blocking, guest mode called out, readiness apart from liveness, a
# stop that lets the running prompt finish first, API keys added and revoked in place, one ComfyUI
# per GPU over a fake NVML with two cards, provisioning (a model and a pinned node, then a second
# start that fetches nothing), and PID 1's children (the credential service, ComfyUI). Runs as PID 1 of a fresh PID
# namespace when root.
set -euo pipefail

BIN=$(realpath "${1:-target/dist/comfy-init}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/comfy-init-demo.XXXXXX)
LOG="$WORK/comfy-init.log"
INIT_PID=

# Bold headings on a terminal only, and never with NO_COLOR (https://no-color.org).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  bold() { printf '\n== %s\n' "$*"; }
fi
cleanup() {
  [ -n "$INIT_PID" ] && kill -KILL "$INIT_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# GET /system_stats with an optional bearer token; prints the HTTP status.
status() {
  python3 - "$COMFYUI_PORT" "${1:-}" <<'PY'
import sys, urllib.request, urllib.error
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/system_stats")
if sys.argv[2]:
    req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    print(urllib.request.urlopen(req, timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("no answer")
PY
}

wait_for() { # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for: $*"; cat "$LOG"; exit 1; }
    sleep 0.2
  done
}

mkdir -p "$WORK/ComfyUI"
cp "$ROOT/tests/fixtures/fake_comfyui.py" "$WORK/ComfyUI/main.py"
export COMFYUI_DIR="$WORK/ComfyUI" COMFY_INIT_ENV_FILE="$WORK/.env" COMFY_INIT_GPU=warn
# A stop lets the running prompt finish (new ones get 503); the phase for `healthcheck --ready`.
export COMFY_INIT_DRAIN_TIMEOUT=30s COMFY_INIT_RUN_DIR="$WORK/run" FAKE_COMFYUI_EVENTS="$WORK/events"
export COMFYUI_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '# my settings: comfy-init keeps this comment and every other line\nHF_HOME=/models/hf\n' > "$WORK/.env"

bold "Workspace $WORK: the stand-in ComfyUI in ComfyUI/main.py, an .env with no password"
cat "$WORK/.env"

bold "Starting comfy-init (GPU policy 'warn': this machine may have no RTX card)"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
  unshare --pid --fork --mount-proc "$BIN" >"$LOG" 2>&1 &
  OUTER=$!
  has_child() { [ -n "$(cat "/proc/$OUTER/task/$OUTER/children" 2>/dev/null)" ]; }
  wait_for 5 has_child
  INIT_PID=$(cut -d' ' -f1 "/proc/$OUTER/task/$OUTER/children")
  echo "comfy-init is PID 1 of a new PID namespace (host pid $INIT_PID)"
else
  "$BIN" >"$LOG" 2>&1 &
  INIT_PID=$!
  echo "not root: comfy-init runs as a child subreaper (pid $INIT_PID)"
fi
wait_for 30 "$BIN" healthcheck
sed 's/^/  | /' "$LOG"
libs=$(awk '$6 ~ /\.so/ {print $6}' "/proc/$INIT_PID/maps" | sort -u | xargs -r -n1 basename | tr '\n' ' ')
echo "shared libraries PID 1 maps: ${libs:-none (statically linked: no dynamic loader at start; NVML is asked by comfy-init-nvml)}"

bold "PID 1's children: the credential service (bcrypt, locks and writes live there) and ComfyUI"
ps -o pid=,pgid=,user=,args= --ppid "$INIT_PID" | cut -c1-120 | sed 's/^/  | /'

bold "The .env now holds the generated password and the token, single-quoted"
sed 's/^/  | /' "$WORK/.env"

bold "comfy-init healthcheck (the Docker HEALTHCHECK)"
"$BIN" healthcheck; echo "  exit $?"

OLD=$("$BIN" token)
bold "API: with the token -> $(status "$OLD"), without -> $(status)"

bold "comfy-init rotate: a new password, applied in place by the companion node (no restart)"
"$BIN" rotate 2>&1 | sed "s/^/  | /"
NEW=$("$BIN" token)
new_token_works() { [ "$(status "$NEW")" = 200 ]; }
wait_for 15 new_token_works
echo "new token -> $(status "$NEW"), old token -> $(status "$OLD")"
grep -E 'token changed|started|no restart needed' "$LOG" | sed 's/^/  | /'
echo "the token in ComfyUI's log: $(grep -o 'use token=.*' "$LOG" | tail -n 1)"

bold "ComfyUI-Login's open doors, closed by the companion node (as an anonymous visitor)"
# The node lets every path ending in .js through: ComfyUI's user-data API with it. The stand-in
# does what the real node does; the companion lets such a path through only to a static file.
python3 - "$COMFYUI_PORT" "$NEW" <<'PY'
import sys, urllib.request, urllib.error
port, token = sys.argv[1], sys.argv[2]
class Keep(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None
open_ = urllib.request.build_opener(Keep).open
def ask(method, path, data=None, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        r = open_(req, timeout=5)
        return r.status, r.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")
for method, path, body in [("POST", "/userdata/evil.js", b"alert(1)"),
                           ("POST", "/userdata/workflows%2Fsecret.json/move/stolen.js", b""),
                           ("DELETE", "/userdata/x.js", None), ("GET", "/scripts/app.js", None)]:
    print(f"  {method} {path} -> {ask(method, path, body)[0]}")
print(f"  POST /userdata/mine.js with the token -> {ask('POST', '/userdata/mine.js', b'ok', token)[0]}")
codes = [ask("POST", "/login", f"username=admin&password=guess{i}".encode()) for i in range(8)]
print("  8 wrong logins -> " + ", ".join(f"{c}" + (f" (Retry-After {r})" if r else "") for c, r in codes))
print(f"  an authenticated API call meanwhile -> {ask('GET', '/system_stats', None, token)[0]}")
PY
grep "comfy-init companion: refused" "$LOG" | head -n 3 | cut -c1-160 | sed 's/^/  | /'

bold "A hostile file: PASSWORD replaced by a FIFO (a read would block PID 1 forever)"
PASSWORD="$COMFYUI_DIR/login/PASSWORD"
rm -f "$PASSWORD"; mkfifo "$PASSWORD"
fifo_refused() { grep -q "named pipe" "$LOG"; }
wait_for 5 fifo_refused
grep "named pipe" "$LOG" | tail -n 1 | sed 's/^/  | /'
echo "ComfyUI keeps serving: token -> $(status "$NEW"); comfy-init token: $("$BIN" token 2>&1 | head -c 120)"
rm -f "$PASSWORD"
healed() { [ -f "$PASSWORD" ] && [ "$(head -n1 "$PASSWORD")" = "$NEW" ]; }
wait_for 5 healed
echo "FIFO removed: PASSWORD written back from the running token, no restart"

bold "Guest mode: a login/GUEST_MODE file lets anyone in, and a guest can read the token"
touch "$COMFYUI_DIR/login/GUEST_MODE"
guest_warned() { grep -q "guest mode is on" "$LOG"; }
wait_for 5 guest_warned
grep "guest mode is on" "$LOG" | tail -n 1 | cut -c1-200 | sed 's/$/ .../; s/^/  | /'
"$BIN" healthcheck | sed 's/^/  /'
rm -f "$COMFYUI_DIR/login/GUEST_MODE"

if command -v cc >/dev/null; then
  bold "GPU preflight against PyTorch: an RTX 5090 (fake NVML) with a cu124 torch (fake version.py)"
  cc -shared -fPIC -o "$WORK/libnvidia-ml-fake.so" "$ROOT/tests/fixtures/fake_nvml.c"
  mkdir -p "$WORK/site/torch"; : > "$WORK/site/torch/__init__.py"
  printf "__version__ = '2.6.0+cu124'\ncuda: Optional[str] = '12.4'\nhip: Optional[str] = None\n" \
    > "$WORK/site/torch/version.py"
  PYTHONPATH="$WORK/site" COMFY_INIT_NVML_LIB="$WORK/libnvidia-ml-fake.so" COMFY_INIT_GPU=require \
    FAKE_NVML_GPUS="NVIDIA GeForce RTX 5090:32:12.0" FAKE_NVML_DRIVER=570.86 FAKE_NVML_CUDA=12080 \
    "$BIN" gpu | grep -E "PyTorch|GPU 0|ERROR|^  |Verdict" | sed 's/^/  | /' || true

  bold "A wedged driver: nvmlInit never returns (fake NVML); comfy-init-nvml is killed at COMFY_INIT_GPU_TIMEOUT"
  COMFY_INIT_NVML_LIB="$WORK/libnvidia-ml-fake.so" COMFY_INIT_GPU_TIMEOUT=1s FAKE_NVML_HANG=1 \
    "$BIN" gpu | grep -E "ERROR|Verdict" | sed 's/^/  | /' || true
fi

bold "API keys: one per client, apart from the password, revoked in place"
KEY=$("$BIN" apikey add demo-client --expires 90d)
echo "comfy-init apikey add demo-client --expires 90d -> ${KEY:0:12}... (printed once; login/API_KEYS keeps its SHA-256)"
"$BIN" apikey list | sed 's/^/  | /'
key_served() { [ "$(status "$KEY")" = 200 ]; }
wait_for 5 key_served
echo "the key -> $(status "$KEY")"
key_used() { "$BIN" apikey list | grep -q "last used"; }
wait_for 8 key_used
"$BIN" apikey list | sed 's/^/  | (after a use, batched by the companion) /'
"$BIN" apikey revoke demo-client
key_refused() { [ "$(status "$KEY")" = 401 ]; }
wait_for 5 key_refused
echo "revoked -> $(status "$KEY"), no restart; the key is in the log $(grep -c "$KEY" "$LOG" || true) times"

bold "Ready is not alive: liveness for restarts, readiness for traffic"
echo "  healthcheck:         $("$BIN" healthcheck | cut -c1-110) ..."
echo "  healthcheck --ready: $("$BIN" healthcheck --ready | cut -c1-110) ..."

# POST /prompt with a stand-in prompt that runs $2 seconds; prints the HTTP status.
prompt() {
  python3 - "$COMFYUI_PORT" "$1" "$2" <<'PY'
import json, sys, urllib.request, urllib.error
body = json.dumps({"prompt": {"1": {"class_type": "StandinSleep", "inputs": {"seconds": float(sys.argv[3])}}}})
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/prompt", data=body.encode(),
                             headers={"Authorization": "Bearer " + sys.argv[2], "Content-Type": "application/json"})
try:
    print(urllib.request.urlopen(req, timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
}

bold "Stopping with a prompt running: SIGTERM drains first (COMFY_INIT_DRAIN_TIMEOUT), then ComfyUI's clean stop"
TOKEN=$("$BIN" token)
echo "a 2 s prompt queued: $(prompt "$TOKEN" 2)"
started() { grep -q "prompt_started" "$WORK/events"; }
wait_for 5 started
START=$(date +%s.%N)
kill -TERM "$INIT_PID"
draining() { grep -q "draining: ComfyUI refuses" "$LOG"; }
wait_for 5 draining
echo "a new prompt while draining: $(prompt "$TOKEN" 0) (refused)"
echo "  healthcheck --ready: $("$BIN" healthcheck --ready)"
while kill -0 "$INIT_PID" 2>/dev/null; do sleep 0.05; done
wait 2>/dev/null || true
INIT_PID=
grep -E "drain|exited" "$LOG" | sed 's/^/  | /'
echo "the running prompt: $(grep -oE "prompt_(done|dropped)" "$WORK/events" | head -n1)"
printf 'stopped in %.2f s\n' "$(echo "$(date +%s.%N) - $START" | bc 2>/dev/null || echo 0)"

if command -v cc >/dev/null; then
  bold "One ComfyUI per GPU (COMFY_INIT_INSTANCES=per-gpu) over a fake NVML with two RTX cards"
  cc -shared -fPIC -o "$WORK/libnvidia-ml-fake.so" "$ROOT/tests/fixtures/fake_nvml.c" 2>/dev/null || true
  mkdir -p "$WORK/multi/ComfyUI" "$WORK/site/torch" && : > "$WORK/site/torch/__init__.py"
  printf "__version__ = '2.8.0+cu128'\ncuda = '12.8'\nhip = None\n" > "$WORK/site/torch/version.py"
  cp "$ROOT/tests/fixtures/fake_comfyui.py" "$WORK/multi/ComfyUI/main.py"
  printf 'COMFYUI_PASSWORD=two-cards\n' > "$WORK/multi/.env"
  MULTI_LOG="$WORK/multi.log"
  COMFYUI_DIR="$WORK/multi/ComfyUI" COMFY_INIT_ENV_FILE="$WORK/multi/.env" COMFY_INIT_RUN_DIR="$WORK/multi/run" \
    COMFY_INIT_INSTANCES=per-gpu COMFY_INIT_GPU=require COMFY_INIT_NVML_LIB="$WORK/libnvidia-ml-fake.so" \
    PYTHONPATH="$WORK/site" FAKE_NVML_GPUS="NVIDIA GeForce RTX 4090:24:8.9;NVIDIA GeForce RTX 3090:24:8.6" \
    FAKE_NVML_DRIVER=570.86 FAKE_NVML_CUDA=12080 "$BIN" >"$MULTI_LOG" 2>&1 &
  INIT_PID=$!
  multi() { COMFYUI_DIR="$WORK/multi/ComfyUI" COMFY_INIT_ENV_FILE="$WORK/multi/.env" COMFY_INIT_RUN_DIR="$WORK/multi/run" "$BIN" "$@"; }
  both_ready() { multi healthcheck --ready; }
  wait_for 30 both_ready
  grep -E "gpu: instance|started python3" "$MULTI_LOG" | cut -c1-140 | sed 's/^/  | /'
  echo "  healthcheck: $(multi healthcheck | cut -c1-200) ..."
  OLD=$(multi token)
  printf 'COMFYUI_PASSWORD=two-cards-changed\n' > "$WORK/multi/.env.tmp" && mv "$WORK/multi/.env.tmp" "$WORK/multi/.env"
  reloaded_twice() { [ "$(grep -c "no restart needed" "$MULTI_LOG")" -ge 2 ]; }
  wait_for 15 reloaded_twice
  NEW=$(multi token)
  for i in 0 1; do
    echo "  instance $i (port $((COMFYUI_PORT + i))): new token -> $(COMFYUI_PORT=$((COMFYUI_PORT + i)) status "$NEW"), old -> $(COMFYUI_PORT=$((COMFYUI_PORT + i)) status "$OLD")"
  done
  kill -TERM "$INIT_PID"; wait "$INIT_PID" 2>/dev/null || true; INIT_PID=
  grep -E "exited|stopp" "$MULTI_LOG" | cut -c1-140 | sed 's/^/  | /'
fi

bold "Provisioning: a model from a loopback server and a pinned node from a git repository"
if command -v aria2c >/dev/null && command -v curl >/dev/null && command -v git >/dev/null; then
  P="$WORK/provision"
  mkdir -p "$P/srv" "$P/ComfyUI" "$P/node"
  head -c 2000000 /dev/urandom >"$P/srv/demo.safetensors"
  head -c 500000 /dev/urandom >"$P/srv/gated.safetensors"
  SHA=$(sha256sum "$P/srv/demo.safetensors" | cut -d' ' -f1)
  GATED_SHA=$(sha256sum "$P/srv/gated.safetensors" | cut -d' ' -f1)
  # /away/ wants the token, then sends the download on to another host (127.0.0.2), as Hugging
  # Face sends it to its storage: the token must not follow.
  RANGE_SERVER_TOKEN=hf_demo_secret python3 "$ROOT/tests/fixtures/range_server.py" "$P/srv" "$P/port" "$P/requests.log" &
  SERVER=$!
  wait_for 5 test -f "$P/port"
  git -C "$P/node" init -q && echo 'NODE_CLASS_MAPPINGS = {}' >"$P/node/__init__.py"
  git -C "$P/node" add . && git -C "$P/node" -c user.name=demo -c user.email=demo@demo commit -qm one
  git -C "$P/node" tag v1
  printf '[[model]]\nurl = "http://127.0.0.1:%s/files/demo.safetensors"\ndir = "checkpoints"\nsha256 = "%s"\n\n[[model]]\nurl = "http://127.0.0.1:%s/away/gated.safetensors"\ndir = "checkpoints"\nsha256 = "%s"\nauth_env = "HF_TOKEN"\n\n[[node]]\ngit = "file://%s"\nref = "v1"\nname = "DemoNode"\n' \
    "$(cat "$P/port")" "$SHA" "$(cat "$P/port")" "$GATED_SHA" "$P/node" >"$P/provision.toml"
  sed 's/^/  | /' "$P/provision.toml"
  for start in first second; do
    echo "$start start (the image's hook docker/pre-start.d/20-provision):"
    PATH="$(dirname "$BIN"):$PATH" COMFYUI_DIR="$P/ComfyUI" COMFY_INIT_PROVISION="$P/provision.toml" \
      HF_TOKEN=hf_demo_secret sh "$ROOT/docker/pre-start.d/20-provision" 2>&1 | sed 's/^/  | /'
    echo "  requests the server answered so far: $(wc -l <"$P/requests.log")"
  done
  echo "  requests that reached the other host (127.0.0.2) with a token: $(grep '"127.0.0.2"' "$P/requests.log" | grep -c '"auth_sent": true')"
  kill "$SERVER" 2>/dev/null || true
else
  echo "skipped: aria2c, curl and git are needed (apt-get install aria2 curl git)"
fi

bold "Done. Next: 'make test', and README.md for Docker, compose and Kubernetes."
