"""comfy-init companion: a new ComfyUI-Login token applied without restarting ComfyUI.

Contract with comfy-init (PID 1):
  * `<session>.companion` (session = $COMFY_INIT_COMPANION_SESSION) holds this process's pid. It
    is written (tmp file + rename) only once the handlers of both signals below are installed:
    comfy-init sends them only to a pid read from there (an unhandled real-time signal would
    kill Python).
  * RELOAD_SIGNAL = SIGRTMIN+7: re-read login/PASSWORD into ComfyUI-Login (below).
  * DRAIN_SIGNAL = SIGRTMIN+8: new prompts are refused with 503 from then on, one way
    (lifecycle.py says how, and what `GET /comfy-init/status` answers). If lifecycle.py could
    not be loaded, the signal only logs a warning: it never kills ComfyUI.
  * prestartup_script.py writes `<session>.fatal` (its docstring has the format).

ComfyUI-Login reads its token once, at import, into a module-level `TOKEN`; its middleware reads
that global at every request, web logins are checked against a cached hash (`user_cache`), and
session cookies are encrypted with a key read once from `.secret-key.txt` in its own folder.

comfy-init writes the new `login/PASSWORD` (and deletes that key file), then sends this process
RELOAD_SIGNAL, never SIGHUP (an outside SIGHUP keeps its meaning). The handler re-reads PASSWORD
into ComfyUI-Login's `TOKEN`, empties its web-login cache, and gives the cookie storage a new key,
so old browser sessions end as they would with a restart. comfy-init then proves the reload from
outside (the new token answers, the old one is refused) and restarts ComfyUI when it cannot.

It also closes the doors ComfyUI-Login leaves open (doors.py). ComfyUI-Login is found by what it
is (node.py), not by its folder's name: nodes are imported in no fixed order. Everything is
wrapped: a failure logs one warning and leaves ComfyUI as it was. Part of comfy-init (installed by
it at start); standard library plus what ComfyUI and ComfyUI-Login already import.
"""

import logging
import os
import signal

from . import doors
from .node import event_loop, login_node, session_storage

try:
    from . import lifecycle
except Exception as e:  # noqa: BLE001 - reload and doors work without it
    lifecycle = None
    logging.warning("comfy-init companion: no drain and no status route (%s)", e)

RELOAD_SIGNAL = signal.SIGRTMIN + 7
DRAIN_SIGNAL = signal.SIGRTMIN + 8
# Where comfy-init looks for `<session>.companion`, which names this process once it is ready.
SESSION = os.environ.get("COMFY_INIT_COMPANION_SESSION")
NODE_CLASS_MAPPINGS = {}


def reload():
    """Everything is looked up and prepared first; the node's state changes only at the end."""
    node = login_node()
    storage = session_storage()
    with open(node.password_path, "r", encoding="utf-8") as f:
        token = f.readline().strip()
    if not token:
        raise RuntimeError("login/PASSWORD is empty")
    key = node.get_or_refresh_key()  # comfy-init deleted the old key: this makes a new one
    fernet = type(storage._fernet)(key)
    node.TOKEN = token
    node.user_cache.clear()
    storage._fernet = fernet
    if hasattr(node, "secret_key"):
        node.secret_key = key
    logging.info("comfy-init companion: ComfyUI-Login now uses the new token; old browser sessions ended")


def reload_now():
    try:
        reload()
    except Exception as e:  # noqa: BLE001 - comfy-init restarts ComfyUI when no proof comes
        logging.warning("comfy-init companion: reload failed (%s); comfy-init will restart ComfyUI", e)


def drain_now():
    try:
        lifecycle.start_draining()
    except Exception as e:  # noqa: BLE001 - comfy-init sees no "draining" in the status
        logging.warning("comfy-init companion: cannot drain (%s)", e)


def in_the_event_loop(work):
    """A signal's handler. Python runs it in the main thread (ComfyUI's event loop) between two
    bytecodes of whatever that thread was doing: maybe inside a write to the log, holding
    app/logger.py's LogInterceptor lock, which is not reentrant. Work that logs would wait there
    for itself forever, and ComfyUI with it. So the work is handed to the event loop, to run
    between two callbacks: call_soon_threadsafe appends to a deque and writes a byte to the
    loop's self-pipe, taking no lock (asyncio's own signal handling does the same). Without a
    running loop (not found) the work runs here, as before."""

    def handler(_signum, _frame):
        loop = event_loop()
        if loop is None:
            work()
        else:
            loop.call_soon_threadsafe(work)

    return handler


def announce():
    """The handlers first, then the file that says so: comfy-init signals only a ready process."""
    if not SESSION:
        return
    signal.signal(RELOAD_SIGNAL, in_the_event_loop(reload_now))
    signal.signal(DRAIN_SIGNAL, in_the_event_loop(drain_now))
    path = SESSION + ".companion"
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


try:
    announce()
except Exception as e:  # noqa: BLE001 - never break ComfyUI's start
    logging.warning("comfy-init companion: not ready (%s); a new password will restart ComfyUI", e)

try:
    doors.install()
except Exception as e:  # noqa: BLE001 - never break ComfyUI's start; the healthcheck sees the door
    logging.warning("comfy-init companion: cannot close ComfyUI-Login's open doors (%s)", e)

try:
    if lifecycle is not None:
        lifecycle.install()
except Exception as e:  # noqa: BLE001 - never break ComfyUI's start; the status route is missed
    logging.warning("comfy-init companion: no drain and no status route (%s)", e)
