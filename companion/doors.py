"""comfy-init companion: close the doors ComfyUI-Login leaves open, from inside ComfyUI.

ComfyUI-Login's middleware (password.py, check_login_status) lets through every request whose
path is `/login` or ends in .js, .css, .css.map or .ico, whatever its method and whatever route
handles it. Meant for the frontend's files, it also opens ComfyUI's user-data API to anyone:
`POST /userdata/evil.js` writes, `POST /userdata/workflows%2Fsecret.json/move/stolen.js` then
`GET /userdata/stolen.js` reads any user file, `DELETE /userdata/x.js` deletes. Its POST /login
runs bcrypt inside aiohttp's event loop, without limit: each wrong guess stalls the whole server
for the hash's time (~0.2 s), so a loop of guesses freezes ComfyUI for everyone. And an
Authorization header that is not two words answers 500.

`guard` runs before every other middleware (it is inserted first) and, without touching the
node's files:
  * lets a suffix-exempt request through untouched only when it is a GET or HEAD of a file that a
    static route serves (ComfyUI's frontend, a node's web folder). Any other must show what the
    node asks on every other path: a logged-in session, or the token (a guest session: GET only);
  * counts wrong logins per client address: FREE_GUESSES free, then each further guess must wait
    a doubling delay (answered 429 with Retry-After, bcrypt not run, the answer held for up to a
    second so that a guessing loop costs the server little). The throttle is looked at before
    the form is read, and a form over MAX_FORM gets 413. The password is checked by CHECKERS
    threads of our own, so the event loop goes on serving; only a right one reaches the node's
    handler (which checks it once more, in the loop: one stall per successful login, none per
    guess);
  * answers 401 to an Authorization header that is not `<type> <value>`;
  * under COMFY_INIT_PASSWORD_TOKEN=off, refuses the password's token (below, TOKEN_OFF);
  * before all of that, checks comfy-init's API keys (api_keys.py: `Bearer cik_...` or
    `?token=cik_...`): a valid one goes on as the same request carrying the node's token (so the
    node and the rules above let it in), any other key is answered 401.
Each refusal is logged in one line (method, path, client address and why, never a secret), at
most once every LOG_EVERY seconds per address and kind, with the count of those not logged.

Guesses are counted per IPv4 address and per IPv6 /64 (one host has a whole /64). Behind a
reverse proxy every client has the proxy's address: the throttle then counts guesses for all of
them together. Many addresses guessing at once fill the checkers' queue: a login then waits or
gets 429 too. Either way a guesser slows web logins only, never API clients or sessions.
"""

import asyncio
import collections
import concurrent.futures
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import time

from aiohttp import web

from . import node as node_state

try:
    from . import api_keys
except Exception as e:  # noqa: BLE001 - the doors stay closed; a key is then refused by the node
    api_keys = None
    logging.warning("comfy-init companion: no API keys (%s)", e)

# What ComfyUI-Login lets through without a session or a token (password.py, newest upstream).
EXEMPT_PATH = "/login"
EXEMPT_SUFFIXES = (".css", ".css.map", ".js", ".ico")
LOGIN_PATH = "/login"  # /api/login too, but that one the node guards: only a session or the token reach it

FREE_GUESSES = 5
MAX_DELAY = 300.0  # seconds: the longest wait between two guesses from one address
FORGET_AFTER = 900.0  # seconds without a wrong guess, and an address starts afresh
MAX_ADDRESSES = 10000  # the oldest is forgotten first: memory stays bounded under any flood
CHECKERS = 2  # threads checking passwords, all addresses together: the CPU stays ComfyUI's
MAX_WAITING = 32  # guesses queued for them; past that, 429 (many addresses guessing at once)
MAX_FORM = 16 * 1024  # bytes of a login form; ComfyUI takes 100 MiB bodies, parsed in the loop
HOLD = 1.0  # seconds a refused guess is held before its 429: a guesser's loop slows to its pace
MAX_HELD = 64  # guesses held at once; past that, answered at once (a held one costs a socket)
LOG_EVERY = 10.0
# What `comfy-init healthcheck` asks for (a random name after it) to prove the door closed.
HEALTHCHECK_PROBE = "/userdata/comfy-init-probe-"
LOOPBACK = ("127.0.0.1", "::1")

log = logging.getLogger("comfy-init.doors")


class Throttle:
    """Wrong guesses per address, and when the next may be tried. Pure bookkeeping: the clock is
    passed in."""

    def __init__(self, free=FREE_GUESSES, max_delay=MAX_DELAY, forget_after=FORGET_AFTER, size=MAX_ADDRESSES):
        self.free, self.max_delay, self.forget_after, self.size = free, max_delay, forget_after, size
        self.wrong = collections.OrderedDict()  # address -> (wrong guesses, time of the last)

    def wait(self, address, now):
        """Seconds before `address` may guess again (0: now)."""
        count, last = self.wrong.get(address, (0, now))
        if now - last >= self.forget_after:
            self.wrong.pop(address, None)
            return 0.0
        if count < self.free:
            return 0.0
        delay = min(self.max_delay, 2.0 ** (count - self.free))
        return max(0.0, last + delay - now)

    def failed(self, address, now):
        count, last = self.wrong.pop(address, (0, now))
        if now - last >= self.forget_after:
            count = 0
        self.wrong[address] = (count + 1, now)
        while len(self.wrong) > self.size:
            self.wrong.popitem(last=False)
        return count + 1

    def succeeded(self, address):
        self.wrong.pop(address, None)


class Refusals:
    """One log line per address and kind every LOG_EVERY seconds, saying how many were refused."""

    def __init__(self):
        self.last = collections.OrderedDict()  # (address, kind) -> (time logged, refused since)

    def say(self, request, kind, why, now):
        if from_comfy_init(request) or (request.remote in LOOPBACK and request.path.startswith(HEALTHCHECK_PROBE)):
            return  # comfy-init healthcheck proving a door closed, every 30 s: not news
        key = (client(request), kind)
        logged, unsaid = self.last.get(key, (None, 0))
        if logged is not None and now - logged < LOG_EVERY:
            self.last[key] = (logged, unsaid + 1)
            return
        more = f" (and {unsaid} more since the last line)" if unsaid else ""
        log.warning(
            "comfy-init companion: refused %s %s from %s: %s%s",
            printable(request.method),
            printable(request.path),
            request.remote,
            why,
            more,
        )
        self.last.pop(key, None)
        self.last[key] = (now, 0)
        while len(self.last) > MAX_ADDRESSES:
            self.last.popitem(last=False)


THROTTLE = Throttle()
REFUSALS = Refusals()
CHECKING = set()  # clients whose guess is being checked now
WAITING = [0]  # guesses handed to the checkers and not answered yet
HELD = [0]  # refused guesses being held now
CHECKERS_POOL = []  # the checkers' threads, made at the first guess


def client(request):
    """Who guesses: an IPv4 address, or an IPv6 /64."""
    address = request.remote or "?"
    if ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    except ValueError:
        return address


def printable(text, limit=200):
    """A request's text for one log line: no control character can start a forged line."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])


def node_exempts(path):
    return path == EXEMPT_PATH or path.endswith(EXEMPT_SUFFIXES)


def serves_a_static_file(request):
    """A GET or HEAD that a static route answers: aiohttp resolved the route before middlewares
    run, and only a StaticResource describes itself with a `directory`."""
    if request.method not in ("GET", "HEAD"):
        return False
    resource = getattr(getattr(request.match_info, "route", None), "resource", None)
    try:
        return resource is not None and "directory" in resource.get_info()
    except Exception:  # noqa: BLE001 - not a resource we know: not static
        return False


def same(a, b):
    """Constant-time equality of two strings, False for an empty secret."""
    return bool(b) and hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def authorization_is_malformed(request):
    header = request.headers.get("Authorization")
    return header is not None and len(header.split()) != 2


def token_counts(node, request):
    """ComfyUI-Login looks at tokens only on requests from the --enable-cors-header origin."""
    origin = getattr(vars(node).get("args"), "enable_cors_header", None)
    return origin in (None, "*") or origin == request.headers.get("Origin")


FOUND = {}  # ComfyUI-Login's module and cookie storage, once found: they live as long as ComfyUI


def login_node():
    """ComfyUI-Login's module, None where it is not loaded. Looked up at the first request (every
    node is imported by then) and kept."""
    if "node" not in FOUND:
        try:
            FOUND["node"] = node_state.login_node()
        except RuntimeError:
            FOUND["node"] = None
    return FOUND["node"]


async def session_of(request):
    """The request's session, empty where the node's cookie storage cannot be found or the cookie
    cannot be read (then only a token gets in: closed, never open)."""
    if "storage" not in FOUND:
        try:
            FOUND["storage"] = node_state.session_storage()
        except RuntimeError:
            return {}
    try:
        return await FOUND["storage"].load_session(request)
    except Exception:  # noqa: BLE001 - a cookie that is not text, not ours: no session
        return {}


async def authorised(request):
    """What ComfyUI-Login asks of every path it does not exempt (a non-empty token only)."""
    session = await session_of(request)
    if session.get("logged_in"):
        return True
    if session.get("guest_mode"):
        return request.method in ("GET", "HEAD")
    node = login_node()
    if not token_counts(node, request):
        return False
    parts = request.headers.get("Authorization", "").split()
    if len(parts) == 2 and parts[0] == "Bearer" and same(parts[1], node.TOKEN):
        return True
    return same(request.query.get("token", ""), node.TOKEN)


def unauthorised(request, why):
    REFUSALS.say(request, "auth", why, time.monotonic())
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(status=302, headers={"Location": "/login"})
    return web.json_response({"error": "Authentication required."}, status=401)


async def too_many(request, seconds, why):
    """429 with Retry-After, after holding the answer up to HOLD: each request of a flood costs
    the event loop one answer a second per connection, not one per round trip."""
    REFUSALS.say(request, "login", f"{why}; next guess allowed in {max(1, math.ceil(seconds))} s", time.monotonic())
    if HELD[0] < MAX_HELD:
        HELD[0] += 1
        try:
            await asyncio.sleep(min(seconds, HOLD))
        finally:
            HELD[0] -= 1
        seconds -= HOLD
    seconds = max(0, math.ceil(seconds))  # 0: the hold was the whole wait
    text = f"Too many wrong passwords from your address: try again in {seconds} seconds.\n"
    return web.Response(status=429, text=text, headers={"Retry-After": str(seconds)})


async def checked_login(request, handler):
    """POST /login: a guess is checked off the event loop, throttled; only a right password (or
    what the node decides alone: guest mode, first-time setup, a malformed form) reaches it."""
    node = login_node()
    who = client(request)
    # Before the body is read: a throttled client costs no parsing.
    wait = THROTTLE.wait(who, time.monotonic())
    if wait > 0:
        return await too_many(request, wait, "too many wrong passwords")
    length = request.content_length
    if (length or 0) > MAX_FORM or (length is None and "Transfer-Encoding" in request.headers):
        REFUSALS.say(request, "login", f"a login form over {MAX_FORM} bytes", time.monotonic())
        return web.Response(status=413, text="A login form is small.\n")
    form = await request.post()  # aiohttp keeps it: the node's handler reads the same form
    password = form.get("password")
    guest = form.get("guest_mode") == "1" and os.path.exists(vars(node).get("guest_mode_path", "/nonexistent"))
    if guest or not isinstance(password, str) or not os.path.exists(node.password_path):
        return await handler(request)
    if who in CHECKING:
        return await too_many(request, 1, "another guess is being checked")
    if WAITING[0] >= MAX_WAITING:
        return await too_many(request, 1, "too many guesses being checked")
    _username, hashed = node.get_user_data()
    if not hashed:
        return await handler(request)
    right = await checked(who, node, password, hashed)
    if right is None:  # bcrypt refused the input (over 72 bytes, a NUL): the node answers it
        return await handler(request)
    if not right:
        count = THROTTLE.failed(who, time.monotonic())
        REFUSALS.say(request, "wrong", f"wrong password ({count} from this address)", time.monotonic())
        return web.Response(status=302, headers={"Location": "/login?wrong_password=1"})
    THROTTLE.succeeded(who)
    return await handler(request)


async def checked(who, node, password, hashed):
    """The password checked by the checkers' threads while the event loop goes on serving."""
    if not CHECKERS_POOL:
        CHECKERS_POOL.append(concurrent.futures.ThreadPoolExecutor(CHECKERS, "comfy-init-bcrypt"))
    CHECKING.add(who)
    WAITING[0] += 1
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(CHECKERS_POOL[0], check_password, node, password, hashed)
    finally:
        WAITING[0] -= 1
        CHECKING.discard(who)


def check_password(node, password, hashed):
    """The node's own bcrypt.checkpw, in a worker thread (it releases the GIL). None: the node
    would have raised (its answer, a 500, is left to it)."""
    try:
        return bool(node.bcrypt.checkpw(password.encode("utf-8"), hashed))
    except ValueError:
        return None


KEY_FAILED = []  # the API key check's failure, warned about once


def with_api_key(request):
    """(request, None): no API key, or a valid one (then the request as if it carried the token);
    (None, answer): refused. Any failure refuses (without this check ComfyUI-Login refuses a key
    too), with one warning."""
    keys = api_keys.presented(request) if api_keys is not None else []
    if not keys:
        return request, None
    node = login_node()
    try:
        for key in keys:
            why, name = api_keys.check(node, key, request.method)
            if why is not None:
                return None, refused_key(request, why if name is None else f"{why} '{printable(name, 64)}'")
        if not isinstance(node.TOKEN, str) or not node.TOKEN or len(node.TOKEN.split()) != 1:
            return None, refused_key(request, "ComfyUI-Login has no token to stand for an API key")
        return api_keys.as_token(request, node), None
    except Exception as e:  # noqa: BLE001 - closed, never open
        if not KEY_FAILED:
            KEY_FAILED.append(e)
            log.warning("comfy-init companion: cannot check API keys (%s); every API key is refused", type(e).__name__)
        return None, refused_key(request, "API keys cannot be checked")


def refused_key(request, why):
    REFUSALS.say(request, "apikey", why, time.monotonic())
    return web.json_response({"error": "invalid API key"}, status=401)


# comfy-init's own requests (its healthcheck and probes) carry the key PID 1 made at this start
# in SELF_HEADER; ComfyUI gets only its SHA-256. COMFY_INIT_PASSWORD_TOKEN=off: API keys are the
# only API credential, and any other credential a request presents (an Authorization that is not
# `Bearer cik_...`, a ?token= that is not a key: the password's token, or whatever the node may
# take for it, an empty one included) is refused, except on comfy-init's own requests. Web logins
# (a session cookie) are not affected.
TOKEN_OFF = os.environ.get("COMFY_INIT_PASSWORD_TOKEN") == "off"
SELF_DIGEST = os.environ.get("COMFY_INIT_SELF_KEY_SHA256", "")
SELF_HEADER = "X-Comfy-Init-Key"


def presents_other_than_a_key(request):
    """The request shows a credential that is not an API key (header or ?token=)."""
    header = request.headers.get("Authorization")
    if header is not None and not (header.startswith("Bearer cik_") and len(header.split()) == 2):
        return True
    return "token" in request.query and not request.query.get("token", "").startswith("cik_")


def from_comfy_init(request):
    key = request.headers.get(SELF_HEADER, "")
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return bool(key) and len(SELF_DIGEST) == 64 and hmac.compare_digest(digest, SELF_DIGEST)


# Several ComfyUI on one ComfyUI folder (COMFY_INIT_INSTANCES) share ComfyUI-Login's cookie key
# file, but each made or read it on its own (at import, at a reload): two that found none in the
# same moment sealed their sessions with different keys, and the file holds the last one written.
# A browser sends one cookie to every port of a host: each instance follows the file, so that a
# session made on one opens them all.
SHARED_KEY = os.environ.get("COMFY_INIT_INSTANCE") is not None
KEY_LOOK_EVERY = 1.0  # seconds
KEY_SEEN = {"at": None, "signature": None}


def follow_shared_key(node, now):
    if not SHARED_KEY or (KEY_SEEN["at"] is not None and now - KEY_SEEN["at"] < KEY_LOOK_EVERY):
        return
    KEY_SEEN["at"] = now
    try:
        path = vars(node)["secret_key_path"]
        st = os.stat(path)
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == KEY_SEEN["signature"]:
            return
        with open(path, "r", encoding="ascii") as f:
            key = f.read(256).split(",")[0]
        if len(key) != 44:  # not 32 bytes in urlsafe base64: being written, look again later
            return
        if vars(node).get("secret_key") != key:
            if "storage" not in FOUND:
                FOUND["storage"] = node_state.session_storage()
            storage = FOUND["storage"]
            storage._fernet = type(storage._fernet)(key)
            node.secret_key = key
        KEY_SEEN["signature"] = signature
    except Exception:  # noqa: BLE001 - no file yet, an odd node: sessions stay as they are
        return


async def guard(request, handler):
    if login_node() is None:  # ComfyUI-Login is not loaded: there is no auth to keep
        return await handler(request)
    follow_shared_key(login_node(), time.monotonic())
    if TOKEN_OFF and presents_other_than_a_key(request) and not from_comfy_init(request):
        return unauthorised(request, "the password's token is off (COMFY_INIT_PASSWORD_TOKEN=off): use an API key")
    request, answer = with_api_key(request)
    if answer is not None:
        return answer
    path = request.path
    if request.method == "POST" and path == LOGIN_PATH:
        return await checked_login(request, handler)
    exempt = node_exempts(path)
    if exempt and (path == EXEMPT_PATH or serves_a_static_file(request)):
        return await handler(request)
    if authorization_is_malformed(request):
        session = await session_of(request)
        if not (session.get("logged_in") or session.get("guest_mode")):
            return unauthorised(request, "malformed Authorization header (expected 'Bearer <token>')")
    if exempt and not await authorised(request):
        return unauthorised(request, "not a static file, and no session or token")
    return await handler(request)


def install():
    """First in ComfyUI's middlewares, before ComfyUI-Login's (aiohttp freezes the list only when
    the server starts, after every node is imported). Idempotent."""
    import server  # ComfyUI's

    middlewares = server.PromptServer.instance.app.middlewares
    if any(getattr(m, "__qualname__", None) == "guard" and getattr(m, "__module__", "").endswith("doors") for m in middlewares):
        return
    middlewares.insert(0, web.middleware(guard))
