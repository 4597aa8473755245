"""comfy-init companion: where ComfyUI-Login keeps its state, found by what it is.

ComfyUI imports custom nodes in no fixed order and under their folder's name (ComfyUI-Login,
comfyui-login, a fork...): the node is looked up by its module-level names and their types, the
cookie storage through the session middleware the node set up. Both are looked up when first
needed (the node may be imported after the companion) and kept: they live as long as ComfyUI.
"""

import sys
import types

NODE_ATTRIBUTES = ("TOKEN", "user_cache", "password_path", "secret_key_path", "get_or_refresh_key")


def holds_node_state(module):
    """A real module whose own namespace has the node's names, of the node's types. Looked up in
    the module's __dict__, never with hasattr: torch.ops and similar namespaces answer every
    attribute (they are in sys.modules of any ComfyUI)."""
    if not isinstance(module, types.ModuleType):
        return False
    names = vars(module)
    return (
        all(name in names for name in NODE_ATTRIBUTES)
        and isinstance(names["TOKEN"], str)
        and isinstance(names["user_cache"], dict)
        and isinstance(names["password_path"], str)
        and isinstance(names["get_or_refresh_key"], types.FunctionType)
    )


def login_node():
    """ComfyUI-Login's module (or a fork's) that DEFINES its state. Its package's `__init__.py`
    does `from .password import *`, so the package (imported first) holds copies of the same
    names: rebinding `TOKEN` there changes nothing its middleware reads. The defining module is
    the one its functions belong to."""
    for module in list(sys.modules.values()):
        if holds_node_state(module):
            defining = sys.modules.get(vars(module)["get_or_refresh_key"].__module__)
            return defining if holds_node_state(defining) else module
    raise RuntimeError("ComfyUI-Login is not loaded")


def event_loop():
    """ComfyUI's event loop (PromptServer.instance.loop, which ComfyUI's own send_sync feeds from
    other threads), when it runs; None otherwise. Looked up in sys.modules, never imported: a
    signal handler calls this."""
    try:
        loop = sys.modules["server"].PromptServer.instance.loop
        return loop if loop.is_running() else None
    except (KeyError, AttributeError):
        return None


def session_storage():
    """aiohttp_session's cookie storage, captured in the session middleware ComfyUI-Login set up."""
    import server  # ComfyUI's, present once ComfyUI imports custom nodes

    for middleware in server.PromptServer.instance.app.middlewares:
        for cell in getattr(middleware, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if hasattr(value, "_fernet"):
                return value
    raise RuntimeError("ComfyUI-Login's session storage was not found")
