"""comfy-init companion: API keys (issue 25), checked in the doors middleware (doors.py).

Contract with comfy-init (which writes the file; this only reads it):
  * `<dirname(ComfyUI-Login's password_path)>/API_KEYS` (ComfyUI's login/API_KEYS), and, when
    $COMFYUI_API_KEYS_FILE is set, that file too (same format, e.g. a Kubernetes Secret): keys
    from both apply. Text, one key per line, fields separated by single spaces:
        <name> <sha256 hex, lowercase, of the whole key string> <created unix s> <expires unix s|-> <rw|ro>
    Empty lines and lines starting with `#` are ignored; a malformed line is ignored (one
    warning per file version naming its line number, never its content). A missing file: no
    keys. At most MAX_BYTES are read (a bigger file: no keys from it, one warning). login/API_KEYS
    is opened with O_NOFOLLOW (a symlink there: no keys from it, one warning); the
    $COMFYUI_API_KEYS_FILE path is the operator's and may be a symlink (Kubernetes mounts are).
  * A key: `cik_` + 64 lowercase hex characters. Presented as `Authorization: Bearer cik_...` or
    `?token=cik_...`. Unknown, malformed or expired (now >= expires): 401. An `ro` key on a method
    other than GET and HEAD: 401. A valid key: the request goes on as if it carried
    ComfyUI-Login's token.
  * When a key was last used is kept in `login/API_KEYS.used` (`<name> <unix s>` a line, the
    names of the keys that exist; written here, tmp file + rename, mode 0600), at most once every
    USED_EVERY seconds and only when a key was used since: `comfy-init apikey list` shows it. A
    request never waits on it.
  * A file is re-read when its (st_mtime_ns, st_size, st_ino) changes, looked at no more than
    every CHECK_EVERY seconds, on requests that carry a key: a deleted line stops its key within
    a second, without a restart. comfy-init should write it with tmp file + rename.
"""

import asyncio
import atexit
import errno
import hashlib
import hmac
import logging
import os
import re
import stat
import time

KEY = re.compile(r"cik_[0-9a-f]{64}")
DIGEST = re.compile(r"[0-9a-fA-F]{64}")
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what `comfy-init apikey` reads too (api_keys.rs)
PREFIX = "cik_"
FILE_NAME = "API_KEYS"
ENV_FILE = "COMFYUI_API_KEYS_FILE"
MAX_BYTES = 1024 * 1024
CHECK_EVERY = 0.25  # seconds: a revoked key is refused within this; a stat costs microseconds
READ_ONLY_METHODS = ("GET", "HEAD")
USED_FILE = "API_KEYS.used"
USED_EVERY = 5.0  # seconds between two writes of USED_FILE, at most

log = logging.getLogger("comfy-init.api-keys")


class KeyFile:
    """One file's keys, re-read when its signature changes."""

    def __init__(self, path, follow):
        self.path, self.follow = path, follow
        self.signature = None  # what the keys were read from; "missing" / an error text otherwise
        self.keys = []  # (name, digest bytes, expires or None, mode)
        self.checked = None  # monotonic time of the last look

    def current(self, now):
        if self.checked is not None and now - self.checked < CHECK_EVERY:
            return self.keys
        self.checked = now
        try:
            st = os.stat(self.path) if self.follow else os.lstat(self.path)
        except FileNotFoundError:
            self.signature, self.keys = "missing", []
            return self.keys
        except OSError as e:
            self.refuse(f"stat:{e.errno}", f"cannot look at it ({e.strerror})")
            return self.keys
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self.signature:
            return self.keys
        if stat.S_ISLNK(st.st_mode):
            self.refuse(("symlink",) + signature, "it is a symbolic link")
            return self.keys
        try:
            self.keys = self.read()
            self.signature = signature
        except (OSError, ValueError) as e:
            self.refuse(("error",) + signature, str(e))
        return self.keys

    def refuse(self, signature, why):
        """No keys from this file; one warning per cause and version."""
        self.keys = []
        if signature != self.signature:
            log.warning("comfy-init companion: no API keys from %s: %s", self.path, why)
        self.signature = signature

    def read(self):
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if self.follow else os.O_NOFOLLOW)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return []
        except OSError as e:
            if not self.follow and e.errno == errno.ELOOP:  # ELOOP: a symlink swapped in since the lstat
                raise OSError("it is a symbolic link") from None
            raise OSError(f"cannot open it ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")
            chunks, size = [], 0
            while size <= MAX_BYTES:
                chunk = os.read(fd, MAX_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > MAX_BYTES:
            raise ValueError(f"over {MAX_BYTES} bytes")
        return self.parse(b"".join(chunks).decode("utf-8", "replace"))

    def parse(self, text):
        keys, bad = [], []
        for number, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(" ")
            if (
                len(fields) != 5
                or not NAME.fullmatch(fields[0])
                or not DIGEST.fullmatch(fields[1])
                or not fields[2].isascii()
                or not fields[2].isdigit()
                or not (fields[3] == "-" or (fields[3].isascii() and fields[3].isdigit()))
                or fields[4] not in ("rw", "ro")
            ):
                bad.append(number)
                continue
            expires = None if fields[3] == "-" else int(fields[3])
            keys.append((fields[0], bytes.fromhex(fields[1].lower()), expires, fields[4]))
        if bad:
            shown = ", ".join(str(n) for n in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            log.warning("comfy-init companion: ignored malformed API key line(s) %s of %s", shown, self.path)
        return keys


FILES = {}  # path -> KeyFile


def files(node):
    paths = [(os.path.join(os.path.dirname(node.password_path), FILE_NAME), False)]
    extra = os.environ.get(ENV_FILE)
    if extra:
        paths.append((extra, True))
    found = []
    for path, follow in paths:
        if path not in FILES:
            FILES[path] = KeyFile(path, follow)
        found.append(FILES[path])
    return found


def presented(request):
    """The API keys a request carries (header, then ?token=), as strings: [] for none."""
    keys = []
    parts = request.headers.get("Authorization", "").split(" ")
    if len(parts) == 2 and parts[0] == "Bearer" and parts[1].startswith(PREFIX):
        keys.append(parts[1])
    token = request.query.get("token")
    if isinstance(token, str) and token.startswith(PREFIX):
        keys.append(token)
    return keys


def check(node, key, method, now=None):
    """(None, name) when the key lets this method in, else (why, name or None) to refuse."""
    if not KEY.fullmatch(key):
        return "malformed API key", None
    digest = hashlib.sha256(key.encode("ascii")).digest()
    wall = time.time() if now is None else now
    monotonic = time.monotonic()
    found = None
    for keyfile in files(node):
        for entry in keyfile.current(monotonic):
            if hmac.compare_digest(digest, entry[1]) and found is None:
                found = entry  # no early exit: every entry is compared
    if found is None:
        return "unknown API key", None
    name, _digest, expires, mode = found
    if expires is not None and wall >= expires:
        return "expired API key", name
    if mode == "ro" and method not in READ_ONLY_METHODS:
        return f"read-only API key used for {method}", name
    LAST_USED.used(node, name, int(wall))
    return None, name


class LastUsed:
    """When each key was last used, in memory; written to USED_FILE in batches, by a worker
    thread (never in the event loop: a slow disk must not stall requests)."""

    def __init__(self):
        self.pending = {}  # name -> unix s, not written yet
        self.path = None
        self.scheduled = False
        self.warned = False

    def used(self, node, name, when):
        self.path = os.path.join(os.path.dirname(node.password_path), USED_FILE)
        self.pending[name] = when
        if self.scheduled:
            return
        self.scheduled = True
        try:
            loop = asyncio.get_running_loop()
            loop.call_later(USED_EVERY, lambda: loop.run_in_executor(None, self.write, self.take()))
        except RuntimeError:  # no event loop here (a test): write now
            self.write(self.take())

    def take(self):
        """What to write, taken in the event loop's thread (where `used` adds to it)."""
        self.scheduled = False
        pending, self.pending = self.pending, {}
        return pending

    def write(self, pending):
        if not pending or self.path is None:
            return
        try:
            known = {entry[0] for keyfile in list(FILES.values()) for entry in list(keyfile.keys)}
            times = {n: t for n, t in read_used(self.path).items() if n in known}
            for name, when in pending.items():
                times[name] = max(when, times.get(name, 0))
            data = "".join(f"{n} {t}\n" for n, t in sorted(times.items())).encode("utf-8")
            tmp = os.path.join(os.path.dirname(self.path), f".{USED_FILE}.tmp-{os.getpid()}")
            try:
                os.unlink(tmp)  # whatever was left there (a file, a FIFO, a link): never opened
            except FileNotFoundError:
                pass
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            if not self.warned:
                self.warned = True
                log.warning("comfy-init companion: cannot write %s (%s); 'last used' is not kept", self.path, e.strerror)


def read_used(path):
    """{name: unix s} from USED_FILE; {} for a missing, linked, unreadable or oversized one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        return {}
    times = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        fields = line.split(" ")
        if len(fields) == 2 and NAME.fullmatch(fields[0]) and fields[1].isascii() and fields[1].isdigit():
            times[fields[0]] = int(fields[1])
    return times


LAST_USED = LastUsed()
atexit.register(lambda: LAST_USED.write(LAST_USED.take()))  # what a stop would lose: USED_EVERY seconds at most


def as_token(request, node):
    """The request as if it carried ComfyUI-Login's token: its Authorization header replaced, and
    ?token= taken out of its URL (where aiohttp's rel_url is there to do it)."""
    headers = [(k, v) for k, v in request.headers.items() if k.lower() != "authorization"]
    headers.append(("Authorization", f"Bearer {node.TOKEN}"))
    changes = {"headers": headers}
    rel_url = getattr(request, "rel_url", None)
    if rel_url is not None and "token" in request.query:
        changes["rel_url"] = rel_url.with_query([(k, v) for k, v in request.query.items() if k != "token"])
    return request.clone(**changes)
