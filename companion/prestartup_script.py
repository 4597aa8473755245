"""comfy-init companion, run by ComfyUI before it imports any custom node (main.py loads this file
as a standalone module, not as part of the package): what must be in place before anything else.

Contract with comfy-init (PID 1), issue 24:
  * `<session>.fatal`, session = $COMFY_INIT_COMPANION_SESSION (the `.companion` file's): written
    at most once per process (tmp file + rename, mode 0644), ONE line ending in "\\n", when
    ComfyUI is about to die for a reason a restart will not cure, and never otherwise:
        assets <kind>   a root-logger record at ERROR or above whose message starts with
                        `ASSETS_STARTUP_FAILED: <kind>` (leading whitespace aside; kind:
                        [A-Za-z0-9_]{1,64}, the rest of its line ignored; newer ComfyUI's
                        asset database: in_use, locked, not_writable, corrupt,
                        missing_packages, ...), logged just before its sys.exit(1);
        port <N>        an uncaught OSError with errno EADDRINUSE (ComfyUI's port is taken);
                        N: ComfyUI's --port (comfy.cli_args, else sys.argv, else 8188);
        module <name>   an uncaught ModuleNotFoundError (its `.name`: a dotted identifier),
                        e.g. `import torch` in main.py.
    The last two through a sys.excepthook wrapper that records, then calls the previous hook
    (the traceback is printed as before). Nothing else is ever written there: no secret, no path.
  * The custom nodes that failed to import: the folder (or file) names from the lines ComfyUI's
    nodes.py logs at INFO in its summary once every node is imported,
    `{:6.1f} seconds (IMPORT FAILED): <path>`, kept in the shared state (below) for the
    companion's status route (lifecycle.py). Only those lines: `Cannot import <path> module for
    custom nodes` is also logged for ComfyUI's own comfy_extras, which are no custom nodes.
    A ComfyUI run with --verbose WARNING or above logs no summary: the list stays empty.
  * The shared state: a module object `comfy_init_state` in sys.modules, made by whichever of
    this file and the package runs first, with `import_failed` (list of names), `draining`
    (bool, set by the drain signal in __init__.py) and `fatal` (the line written, or None).

And it keeps the bearer token out of ComfyUI's log: ComfyUI-Login logs `For direct API calls, use
token=<hash>` when it is imported, and ComfyUI keeps its log for `/internal/logs`: the token, a
permanent API credential, would land in `docker logs` and in a page any guest may read. The filter
installed here, before any node is imported, replaces every bcrypt hash in every log record. The
token is a bcrypt hash and no other bcrypt hash belongs in a log, so nothing here needs to know the
token: it holds across reloads. comfy-init's API keys (`cik_` + hex) are replaced the same way.

Part of comfy-init (installed by it at start, version-matched); standard library only. A failure
logs one warning and leaves ComfyUI as it was.
"""

import errno
import logging
import os
import re
import sys
import types

REDACTED = "<token redacted by comfy-init>"
# A bcrypt hash, plain or URL-encoded (`?token=` in an access log line).
HASHES = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}|%242[aby]%24\d\d%24[./A-Za-z0-9]{53}")

SESSION = os.environ.get("COMFY_INIT_COMPANION_SESSION")
STATE_MODULE = "comfy_init_state"
ASSETS_FAILED = re.compile(r"\s*ASSETS_STARTUP_FAILED: ([A-Za-z0-9_]{1,64})")  # at the start (blank lines aside)
IMPORT_FAILED = re.compile(r"\s*\d+\.\d seconds \(IMPORT FAILED\): (.+)")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
DEFAULT_PORT = 8188
MAX_NAMES = 200  # import failures kept: the status answer stays small


# comfy-init's API keys (issue 25: `cik_` + 64 hex), and any long run of hex after `cik_` (a key
# mistyped is a secret too). The whole key is hex: URL-encoding leaves it as it is.
KEY_REDACTED = "<API key redacted by comfy-init>"
KEYS = re.compile(r"cik_[0-9A-Fa-f]{16,}")


class RedactTokens(logging.Filter):
    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format is not ours to judge
            return True
        changed = False
        if HASHES.search(message):
            message, changed = HASHES.sub(REDACTED, message), True
        if "cik_" in message and KEYS.search(message):
            message, changed = KEYS.sub(KEY_REDACTED, message), True
        if changed:
            record.msg = message
            record.args = None
        return True


def install():
    """On the root logger (records logged on it) and on each of its handlers (records that
    propagate from any logger). Idempotent: a re-run adds nothing."""
    root = logging.getLogger()
    for target in [root, *root.handlers]:
        if not any(isinstance(f, RedactTokens) for f in target.filters):
            target.addFilter(RedactTokens())


def shared_state():
    """The state shared with the package (lifecycle.py has the same function)."""
    state = sys.modules.get(STATE_MODULE)
    if state is None:
        state = types.ModuleType(STATE_MODULE, "comfy-init companion: state shared by its files")
        sys.modules[STATE_MODULE] = state
    for name, value in (("import_failed", []), ("draining", False), ("fatal", None)):
        if not hasattr(state, name):
            setattr(state, name, value)
    return state


def write_fatal(line):
    """`<session>.fatal` = line + "\\n", the first time only. Failing, it logs one warning."""
    state = shared_state()
    if state.fatal is not None or not SESSION:
        return
    state.fatal = line
    try:
        path = SESSION + ".fatal"
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: comfy-init reads it as another user
            os.write(fd, (line + "\n").encode("ascii"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - ComfyUI dies as it would have
        logging.warning("comfy-init companion: cannot tell comfy-init why ComfyUI stops (%s)", e)


def comfyui_port():
    """The port ComfyUI was told to listen on: its parsed arguments when they are loaded, else
    the last --port in sys.argv, else ComfyUI's default."""
    port = getattr(getattr(sys.modules.get("comfy.cli_args"), "args", None), "port", None)
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    argv, found = sys.argv[1:], None
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--port="):
            found = arg.split("=", 1)[1]
    if found is not None and found.strip().isdigit() and 0 < int(found) < 65536:
        return int(found)
    return DEFAULT_PORT


def fatal_cause(exc):
    """The `.fatal` line for an uncaught exception, None when a restart may cure it."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"port {comfyui_port()}"
    if isinstance(exc, ModuleNotFoundError) and MODULE_NAME.fullmatch(exc.name or "") and len(exc.name) <= 200:
        return f"module {exc.name}"
    return None


class WatchLifecycle(logging.Filter):
    """On the root logger: ComfyUI's own lines (nodes.py, main.py) are logged there. Lets every
    record through, unchanged."""

    def filter(self, record):
        try:
            message = record.getMessage()
            if "ASSETS_STARTUP_FAILED" in message and record.levelno >= logging.ERROR:
                found = ASSETS_FAILED.match(message)
                if found:
                    write_fatal(f"assets {found.group(1)}")
            elif "(IMPORT FAILED)" in message:
                found = IMPORT_FAILED.fullmatch(message)
                if found:
                    name = os.path.basename(found.group(1).rstrip("/\\"))
                    failed = shared_state().import_failed
                    if name and name not in failed and len(failed) < MAX_NAMES:
                        failed.append(name)
        except Exception:  # noqa: BLE001 - never in the way of a log line
            pass
        return True


def watch_uncaught(previous):
    def hook(exc_type, exc, tb):
        try:
            line = fatal_cause(exc)
            if line:
                write_fatal(line)
        except Exception:  # noqa: BLE001 - the traceback must still be printed
            pass
        previous(exc_type, exc, tb)

    hook.comfy_init_companion = True
    return hook


def watch():
    """Idempotent: a re-run adds nothing."""
    shared_state()
    root = logging.getLogger()
    if not any(isinstance(f, WatchLifecycle) for f in root.filters):
        root.addFilter(WatchLifecycle())
    if not getattr(sys.excepthook, "comfy_init_companion", False):
        sys.excepthook = watch_uncaught(sys.excepthook)


try:
    install()
except Exception as e:  # noqa: BLE001 - never break ComfyUI's start
    logging.warning("comfy-init companion: cannot redact tokens from the log: %s", e)

try:
    watch()
except Exception as e:  # noqa: BLE001 - never break ComfyUI's start
    logging.warning("comfy-init companion: cannot watch for fatal errors and failed imports: %s", e)
