"""comfy-init companion: ComfyUI's production lifecycle, seen and steered from inside (issue 24).

Contract with comfy-init (PID 1):
  * Drain: DRAIN_SIGNAL (SIGRTMIN+8, __init__.py installs the handler before it writes
    `<session>.companion`) puts ComfyUI in drain mode, one way (there is no undrain): every
    `POST /prompt` and `POST /api/prompt` that ComfyUI-Login lets through is answered
        503, header `Retry-After: 30`,
        {"error": {"type": "draining", "message": "ComfyUI is stopping: no new prompts (comfy-init drain)"}}
    before ComfyUI's handler runs: nothing is queued. Auth comes first: a request ComfyUI-Login
    refuses still gets its 401 (or 302), never the 503 (the drain middleware is moved, when the
    server starts, to the end of app.middlewares: inside ComfyUI-Login's, which a node imported
    after this one appends). Everything else works as before (GET /queue, /history, /ws,
    POST /interrupt...): the running prompt finishes and the pending ones still run. One log
    line when the drain starts:
        comfy-init companion: draining: new prompts are refused (503) while the queue empties
  * Status: `GET /comfy-init/status` (ComfyUI also serves it as `/api/comfy-init/status`), with
    the auth of any other route (ComfyUI-Login's token or session; doors.py's rules), answers
    200 {"companion": 1, "draining": bool, "import_failed": ["<custom node folder name>", ...],
         "queue_running": n, "queue_pending": n}
    import_failed: collected by prestartup_script.py from ComfyUI's `(IMPORT FAILED)` lines.
    The queue: ComfyUI's PromptServer.instance.prompt_queue (get_current_queue_volatile, else
    get_current_queue), 0 and 0 where it cannot be read.

Installed at import; a failure logs one warning and leaves ComfyUI as it was. Standard library
plus aiohttp, which ComfyUI serves with.
"""

import logging
import sys
import types

from aiohttp import web

STATE_MODULE = "comfy_init_state"  # shared with prestartup_script.py, which is no part of this package
PROMPT_PATHS = ("/prompt", "/api/prompt")
STATUS_PATH = "/comfy-init/status"
RETRY_AFTER = 30  # seconds
DRAINING = {"error": {"type": "draining", "message": "ComfyUI is stopping: no new prompts (comfy-init drain)"}}
STATUS_VERSION = 1

log = logging.getLogger("comfy-init.lifecycle")


def shared_state():
    """The state shared with prestartup_script.py (which has the same function): whichever runs
    first makes it."""
    state = sys.modules.get(STATE_MODULE)
    if state is None:
        state = types.ModuleType(STATE_MODULE, "comfy-init companion: state shared by its files")
        sys.modules[STATE_MODULE] = state
    for name, value in (("import_failed", []), ("draining", False), ("fatal", None)):
        if not hasattr(state, name):
            setattr(state, name, value)
    return state


def start_draining():
    """The drain signal's work, run in ComfyUI's event loop: a flag and one log line."""
    state = shared_state()
    if state.draining:
        return
    state.draining = True
    logging.info("comfy-init companion: draining: new prompts are refused (503) while the queue empties")


async def drain(request, handler):
    if request.method == "POST" and request.path in PROMPT_PATHS and shared_state().draining:
        return web.json_response(DRAINING, status=503, headers={"Retry-After": str(RETRY_AFTER)})
    return await handler(request)


def queue_counts():
    """(running, pending) in ComfyUI's prompt queue; (0, 0) where it cannot be read."""
    try:
        import server  # ComfyUI's

        queue = server.PromptServer.instance.prompt_queue
        for name in ("get_current_queue_volatile", "get_current_queue"):
            read = getattr(queue, name, None)
            if callable(read):
                running, pending = read()[:2]
                return len(running), len(pending)
    except Exception as e:  # noqa: BLE001 - an answer without the queue beats none
        log.debug("comfy-init companion: cannot read the prompt queue (%s)", e)
    return 0, 0


async def status(_request):
    state = shared_state()
    running, pending = queue_counts()
    return web.json_response({
        "companion": STATUS_VERSION,
        "draining": bool(state.draining),
        "import_failed": [str(name) for name in state.import_failed],
        "queue_running": running,
        "queue_pending": pending,
    })


def is_drain(middleware):
    return getattr(middleware, "__qualname__", None) == "drain" and getattr(middleware, "__module__", "").endswith("lifecycle")


async def drain_innermost(app):
    """app.on_startup, once every node is imported and before aiohttp freezes the middlewares:
    the drain goes last, inside ComfyUI-Login's check wherever that one was appended."""
    try:
        middlewares = app.middlewares
        ours = [m for m in middlewares if is_drain(m)]
        for m in ours:
            middlewares.remove(m)
        middlewares.append(ours[0] if ours else web.middleware(drain))
    except Exception as e:  # noqa: BLE001 - the drain stays where it was put at import
        logging.warning("comfy-init companion: cannot put the drain after ComfyUI-Login's check (%s); "
                        "while draining, a refused POST /prompt may get 503 instead of 401", e)


def install():
    """Once, at import: the drain last in the middlewares for now (ComfyUI-Login may come later:
    it is moved when the server starts), and the status route."""
    import server  # ComfyUI's

    instance = server.PromptServer.instance
    app = instance.app
    if not any(is_drain(m) for m in app.middlewares):
        app.middlewares.append(web.middleware(drain))
    try:
        if drain_innermost not in app.on_startup:
            app.on_startup.append(drain_innermost)
    except Exception as e:  # noqa: BLE001 - the drain works, only its place with auth may not
        logging.warning("comfy-init companion: cannot order the drain after ComfyUI-Login's check (%s)", e)
    instance.routes.get(STATUS_PATH)(status)
