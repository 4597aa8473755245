"""comfy-init companion, run by ComfyUI before it imports any custom node: keep the bearer token
out of ComfyUI's log.

ComfyUI-Login logs `For direct API calls, use token=<hash>` when it is imported, and ComfyUI keeps
its log for `/internal/logs`: the token, a permanent API credential, would land in `docker logs`
and in a page any guest may read. The filter installed here, before any node is imported,
replaces every bcrypt hash in every log record. The token is a bcrypt hash and no other bcrypt
hash belongs in a log, so nothing here needs to know the token: it holds across reloads.

Part of comfy-init (installed by it at start, version-matched); standard library only. A failure
logs one warning and leaves ComfyUI as it was.
"""

import logging
import re

REDACTED = "<token redacted by comfy-init>"
# A bcrypt hash, plain or URL-encoded (`?token=` in an access log line).
HASHES = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}|%242[aby]%24\d\d%24[./A-Za-z0-9]{53}")


class RedactTokens(logging.Filter):
    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format is not ours to judge
            return True
        if HASHES.search(message):
            record.msg = HASHES.sub(REDACTED, message)
            record.args = None
        return True


def install():
    """On the root logger (records logged on it) and on each of its handlers (records that
    propagate from any logger). Idempotent: a re-run adds nothing."""
    root = logging.getLogger()
    for target in [root, *root.handlers]:
        if not any(isinstance(f, RedactTokens) for f in target.filters):
            target.addFilter(RedactTokens())


try:
    install()
except Exception as e:  # noqa: BLE001 - never break ComfyUI's start
    logging.warning("comfy-init companion: cannot redact tokens from the log: %s", e)
