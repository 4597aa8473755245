#!/usr/bin/env python3
"""comfy-init against tini, dumb-init and catatonit (and, for what only comfy-init does, against
the best a user would script). Run through bench/bench.sh, which installs the peers, compiles
bench/helper.c and calls:

    python3 bench/bench.py --bin BIN --helper HELPER --work DIR --out bench/results.md

Prints progress to stderr, the table to stdout, and writes the same table with the machine's
details to --out. Python 3 standard library only; needs root (unshare --pid).
"""

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "fake_comfyui.py")

# Iteration counts: modest, the whole run must stay well under 10 minutes on 2 cores.
SPAWN_RUNS = 500
SPAWN_WARMUP = 30
IDLE_SECONDS = 10
REAP_ORPHANS = 10_000
REAP_ROUNDS = 7
SIGNAL_ITERATIONS = 3000
SIGNAL_PER_ROUND = 50
STOP_ROUNDS = 200
TOKEN_ROUNDS = 5
DRAIN_ROUNDS = 3
PROMPT_SECONDS = 2.0
HEALTH_RUNS = 40
RSS_RUNS = 10
FLOOD_THREADS = 4
FLOOD_SECONDS = 6
KEY_REQUESTS = 400
INSTANCE_COUNTS = (1, 4)
REVOKE_ROUNDS = 5

T0 = time.monotonic()
PEERS = ["tini", "dumb-init", "catatonit"]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 302 from /login is the answer, not somewhere to go."""

    def redirect_request(self, *args, **kwargs):
        return None


NO_REDIRECT = urllib.request.build_opener(NoRedirect)


def progress(msg):
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# Everything started that may outlive a failure: (Popen, init pid or None), killed by die().
STARTED = []


def die(msg):
    progress(f"FAILED: {msg}")
    for p, pid in STARTED:
        if p.poll() is None:
            for target in ([pid] if pid else []) + [p.pid]:
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    sys.exit(1)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values):
    return statistics.median(values)


class pinned:
    """Runs a phase with this process, and so everything it starts, on CPU 0 alone. On a VM a
    wake-up that crosses to an idle vCPU costs tens of µs and lands at random (the scheduler's
    choice), which would swamp the microseconds an init's own path takes."""

    def __enter__(self):
        self.saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(self.saved)})

    def __exit__(self, *exc):
        os.sched_setaffinity(0, self.saved)


def token_in(comfy):
    """The token in ComfyUI's login/PASSWORD (its first line); "" while there is none."""
    try:
        with open(os.path.join(comfy, "login", "PASSWORD")) as f:
            return f.readline().strip()
    except OSError:
        return ""


def clean_env(extra=None):
    """The caller's environment minus our own settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("COMFY") or k.startswith("FAKE_") or k in ("RUST_LOG", "PUID", "PGID"))}
    env.update(extra or {})
    return env


class Bench:
    def __init__(self, args):
        self.bin = os.path.abspath(args.bin)
        self.helper = os.path.abspath(args.helper)
        self.work = os.path.abspath(args.work)
        self.out = args.out
        self.watchexec = args.watchexec
        self.tmp = os.path.join(self.work, "tmp")
        os.makedirs(self.tmp, exist_ok=True)
        # comfy-init makes its restart-marker folder in TMPDIR: keep it in our work folder.
        self.env = clean_env({
            "COMFY_INIT_GPU": "off",
            "COMFY_INIT_AUTH": "off",
            "COMFY_INIT_RESTART": "never",
            "COMFY_INIT_STOP_SIGNAL": "SIGTERM",
            "TMPDIR": self.tmp,
        })
        self.inits = {
            "tini": ["tini", "--"],
            "dumb-init": ["dumb-init"],
            "catatonit": ["catatonit", "--"],
            "comfy-init": [self.bin, "run", "--"],
        }
        self.fifo_n = 0
        self.rows = []  # (metric, unit, {column: value}, goal or None)
        self.notes = []

    # ----------------------------------------------------------------- plumbing ---

    def fifo(self):
        self.fifo_n += 1
        path = os.path.join(self.work, f"fifo{self.fifo_n}")
        os.mkfifo(path)
        return path

    def start_pid1(self, name, child_argv, stdout=subprocess.DEVNULL, env=None):
        """INIT as PID 1 of a fresh PID namespace. Returns (unshare Popen, the init's host pid)."""
        argv = ["unshare", "--pid", "--fork", "--mount-proc"] + self.inits[name] + child_argv
        p = subprocess.Popen(argv, env=env or self.env, stdin=subprocess.DEVNULL, stdout=stdout,
                             stderr=subprocess.DEVNULL)
        STARTED.append((p, None))
        path = f"/proc/{p.pid}/task/{p.pid}/children"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(path) as f:
                    pids = f.read().split()
                if pids:
                    STARTED[-1] = (p, int(pids[0]))
                    return p, int(pids[0])
            except FileNotFoundError:
                pass
            if p.poll() is not None:
                die(f"{name} exited ({p.returncode}) before starting: {argv}")
            time.sleep(0.001)
        die(f"no PID 1 under unshare for {name}")

    def wait_ready(self, fifo, timeout=5.0):
        """Opens the reader end and waits for the child's 8 ready bytes. Returns the fd."""
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < 8:
            left = deadline - time.monotonic()
            if left <= 0:
                os.close(fd)
                die(f"the child never got ready on {fifo}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 8 - len(got))
                except BlockingIOError:
                    continue
                if not chunk:
                    time.sleep(0.001)  # no writer yet
                    continue
                got += chunk
        return fd

    @staticmethod
    def stop(p, pid=None):
        """Ends a namespace (SIGKILL to its PID 1 ends everything in it) and waits."""
        for target in ([pid] if pid else []) + [p.pid]:
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            die(f"pid {p.pid} did not exit after SIGKILL")

    @staticmethod
    def proc_status(pid):
        out = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
        return out

    def add(self, metric, unit, values, goal=None):
        self.rows.append((metric, unit, values, goal))

    # ---------------------------------------------------------------- 1. spawn ---

    def spawn(self):
        progress(f"1/7 spawn overhead: {SPAWN_RUNS} interleaved rounds (random order) of INIT -- /bin/true")
        cmds = [("/bin/true", "/bin/true"),
                ("tini", "tini -- /bin/true"),
                ("dumb-init", "dumb-init /bin/true"),
                ("catatonit", "catatonit -- /bin/true"),
                ("comfy-init", f"{self.bin} run -- /bin/true")]
        # Not in the table: what starting each binary costs, with no child at all.
        bare = [("tini --version", "tini --version"), ("comfy-init --version", f"{self.bin} --version")]
        times = self.interleaved(cmds + bare, self.env)
        med = {n: median(times[n]) for n, _ in cmds}
        p95 = {n: pct(times[n], 95) for n, _ in cmds}
        self.notes.append("Binary start alone (no child), median: " + ", ".join(
            f"`{n}` {median(times[n]):.2f} ms" for n, _ in bare) + ".")
        med["floor"] = med.pop("/bin/true")
        p95["floor"] = p95.pop("/bin/true")
        self.add("1. spawn overhead `INIT -- /bin/true`, median", "ms", med, ("tini", "<="))
        self.add("1. spawn overhead, p95", "ms", p95, ("tini", "<="))
        instructions = self.callgrind_spawn(cmds[1:])
        if instructions:
            self.add("1. instructions per spawn, the init alone (callgrind: deterministic)", "count", instructions,
                     ("tini", "<="))

    def interleaved(self, cmds, env):
        """Milliseconds per run of each command: bench/helper.c runs them all once a round, in a new
        random order each round (drift of the machine falls on all alike), after a warm-up."""
        argv = [self.helper, "spawn"]
        for rounds, seed in ((SPAWN_WARMUP, 1), (SPAWN_RUNS, 2)):
            r = subprocess.run(argv + [str(rounds), str(seed)] + [c for _, c in cmds], env=env,
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                die(f"spawn rounds failed: {r.stderr.strip()}")
        times = {n: [] for n, _ in cmds}
        for index, ns in (line.split() for line in r.stdout.splitlines()):
            times[cmds[int(index)][0]].append(int(ns) / 1e6)
        return times

    def callgrind_spawn(self, cmds):
        """Instructions each init executes for `INIT -- /bin/true` (its child not traced): the same
        count on every run, whatever else the machine does, so this row does not drift."""
        if not shutil.which("valgrind"):
            self.notes.append("Instructions per spawn: valgrind not found, row left out.")
            return None
        counts = {}
        for name, cmd in cmds:
            out = os.path.join(self.work, f"callgrind-{name}.out")
            r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no"]
                               + cmd.split(), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                with open(out) as f:
                    total = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
            except (OSError, StopIteration, ValueError):
                total = None
            if r.returncode != 0 or total is None:
                self.notes.append(f"Instructions per spawn: callgrind failed for {name}, row left out.")
                return None
            counts[name] = total
        return counts

    # --------------------------------------------------- 2+3. memory, wake-ups ---

    def idle(self):
        progress(f"2-3/7 RSS and idle wake-ups: the four inits side by side, {IDLE_SECONDS} s with an idle child")
        running = {}
        for name in self.inits:
            fifo = self.fifo()
            p, pid = self.start_pid1(name, [self.helper, "child", fifo])
            running[name] = (p, pid, self.wait_ready(fifo))
        time.sleep(1.0)  # let start-up settle
        before = {n: self.proc_status(pid) for n, (_, pid, _) in running.items()}
        time.sleep(IDLE_SECONDS)
        after = {n: self.proc_status(pid) for n, (_, pid, _) in running.items()}

        def switches(s):
            return int(s["voluntary_ctxt_switches"]) + int(s["nonvoluntary_ctxt_switches"])

        rss = {n: int(after[n]["VmRSS"].split()[0]) for n in running}
        anon = {n: int(after[n]["RssAnon"].split()[0]) for n in running}
        wakeups = {n: switches(after[n]) - switches(before[n]) for n in running}
        threads = {n: after[n]["Threads"] for n in running}
        for n, (p, pid, fd) in running.items():
            os.close(fd)
            self.stop(p, pid)
        self.add("2. steady RSS, supervising an idle child (VmRSS)", "KiB", rss, ("tini", "<=1.2x"))
        self.add("2. of which anonymous (RssAnon: heap, stack, data; the rest is file-backed text)", "KiB", anon)
        self.add(f"3. idle wake-ups in {IDLE_SECONDS} s (voluntary+nonvoluntary ctxt switches)", "count", wakeups,
                 ("zero", "==0"))
        self.notes.append("Threads per init while idle: " + ", ".join(f"{n} {t}" for n, t in threads.items()) + ".")

    # -------------------------------------------------------------- 4. reaping ---

    def reaping(self):
        progress(f"4/7 reaping: {REAP_ORPHANS} orphaned zombies, {REAP_ROUNDS} rounds per init, init as PID 1")
        times = {n: [] for n in self.inits}
        fork_ms = []
        for rnd in range(REAP_ROUNDS):
            for name in self.inits:
                argv = ["unshare", "--pid", "--fork", "--mount-proc"] + self.inits[name] + \
                    [self.helper, "reap", str(REAP_ORPHANS)]
                r = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=120)
                m = re.search(r"reap_ms=([\d.]+) orphans_seen=(\d+) fork_ms=([\d.]+)", r.stdout)
                if r.returncode != 0 or not m:
                    die(f"reaping under {name}: exit {r.returncode}: {r.stdout.strip()} {r.stderr.strip()[-500:]}")
                times[name].append(float(m.group(1)))
                fork_ms.append(float(m.group(3)))
                progress(f"    round {rnd + 1} {name}: {m.group(1)} ms ({m.group(2)} zombies counted at the start)")
        self.add(f"4. reap {REAP_ORPHANS} orphaned zombies, median of {REAP_ROUNDS}", "ms",
                 {n: median(v) for n, v in times.items()}, ("tini", "<="))
        self.notes.append(
            f"Reaping: the helper forks {REAP_ORPHANS} children through an intermediate (which took "
            f"{median(fork_ms):.0f} ms median, not counted) that exits once they are all zombies; the clock starts when "
            "the intermediate is reaped and stops when the namespace's /proc (polled every ~1 ms) is back to its "
            "process count from before. Every round per init: "
            + "; ".join(f"{n} " + "/".join(f"{t:.0f}" for t in v) for n, v in times.items()) + " ms.")

    # ------------------------------------------------------ 5. signal latency ---

    def signal_latency(self):
        progress(f"5/7 signal forwarding: {SIGNAL_ITERATIONS} SIGUSR1, one at a time, kill(init) -> child's handler")
        with pinned():
            self._signal_latency()

    def _signal_latency(self):
        # Every init runs at once over its own child, and the child alone is the floor; one
        # helper run then signals them in turns (SIGNAL_PER_ROUND each, a new random order every
        # round), so that the machine's drift reaches all of them alike.
        names, targets, started = ["floor"], [], []
        fifo = self.fifo()
        direct = subprocess.Popen([self.helper, "child", fifo], stdin=subprocess.DEVNULL)
        STARTED.append((direct, None))
        targets += [str(direct.pid), fifo]
        for name in self.inits:
            fifo = self.fifo()
            p, pid = self.start_pid1(name, [self.helper, "child", fifo])
            started.append((p, pid))
            names.append(name)
            targets += [str(pid), fifo]
        rounds = SIGNAL_ITERATIONS // SIGNAL_PER_ROUND
        r = subprocess.run([self.helper, "send", str(rounds), str(SIGNAL_PER_ROUND), "5"] + targets,
                           capture_output=True, text=True, timeout=300)
        for p, pid in started:
            self.stop(p, pid)
        direct.kill()
        direct.wait()
        if r.returncode != 0:
            die(f"signal forwarding: {r.stderr.strip()}")
        lat = {n: [] for n in names}
        for line in r.stdout.splitlines():
            index, ns = line.split()
            lat[names[int(index)]].append(int(ns) / 1000)
        p50 = {n: median(v) for n, v in lat.items()}
        p99 = {n: pct(v, 99) for n, v in lat.items()}
        self.add("5. signal forwarding latency kill(init) -> child handler, p50", "µs", p50, ("tini", "<="))
        self.add("5. signal forwarding latency, p99", "µs", p99, ("tini", "<="))

    # -------------------------------------------------------- 6. stop latency ---

    def stop_latency(self):
        progress(f"6/7 stop latency: SIGTERM -> init exit, {STOP_ROUNDS} rounds per init (child dies on SIGTERM)")
        with pinned():
            self._stop_latency()

    def _stop_latency(self):
        times = {n: [] for n in self.inits}
        times["floor"] = []
        for _ in range(STOP_ROUNDS):
            # The floor: the child alone, SIGTERM to its exit.
            fifo = self.fifo()
            c = subprocess.Popen([self.helper, "child", fifo], stdin=subprocess.DEVNULL)
            STARTED.append((c, None))
            fd = self.wait_ready(fifo)
            pidfd = os.pidfd_open(c.pid)
            t0 = time.monotonic_ns()
            os.kill(c.pid, signal.SIGTERM)
            select.select([pidfd], [], [], 10)
            times["floor"].append((time.monotonic_ns() - t0) / 1e6)
            os.close(pidfd)
            os.close(fd)
            c.wait()
            os.unlink(fifo)
            order = list(self.inits)
            random.shuffle(order)  # interleaved, in a new order each round
            for name in order:
                fifo = self.fifo()
                p, pid = self.start_pid1(name, [self.helper, "child", fifo])
                fd = self.wait_ready(fifo)
                pidfd = os.pidfd_open(pid)
                t0 = time.monotonic_ns()
                os.kill(pid, signal.SIGTERM)
                r, _, _ = select.select([pidfd], [], [], 10)
                t1 = time.monotonic_ns()
                os.close(pidfd)
                os.close(fd)
                os.unlink(fifo)
                if not r:
                    self.stop(p, pid)
                    die(f"{name} did not exit within 10 s of SIGTERM")
                p.wait(timeout=10)
                times[name].append((t1 - t0) / 1e6)
        self.add("6. stop latency SIGTERM -> init exited, median", "ms",
                 {n: median(v) for n, v in times.items()}, ("tini", "<="))
        self.add("6. stop latency, p95", "ms", {n: pct(v, 95) for n, v in times.items()}, ("tini", "<="))

    # ------------------------------------------------------ 7. token change ---

    def workspace(self, tag):
        base = os.path.join(self.work, tag)
        comfy = os.path.join(base, "ComfyUI")
        envdir = os.path.join(base, "envdir")  # .env alone in its folder: a watcher sees nothing else there
        os.makedirs(comfy)
        os.makedirs(envdir)
        shutil.copy(FIXTURE, os.path.join(comfy, "main.py"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = clean_env({
            "COMFYUI_DIR": comfy,
            "COMFY_INIT_ENV_FILE": os.path.join(envdir, ".env"),
            "COMFYUI_PORT": str(port),
            "COMFY_INIT_GPU": "off",
            "FAKE_COMFYUI_EVENTS": os.path.join(base, "events"),
            "FAKE_COMFYUI_STOP_DELAY": "0",  # the same quick stop for comfy-init and the script
            "FAKE_COMFYUI_START_DELAY": "0",  # Python start-up only (the real ComfyUI takes 5-15 s)
            "COMFYUI_PYTHON": sys.executable,  # the interpreter itself, not a pyenv shim
            "TMPDIR": self.tmp,
        })
        return base, comfy, envdir, port, env

    @staticmethod
    def write_env(envdir, password):
        """What an editor does: a temp file, then rename over .env. Returns the time of the rename."""
        tmp = os.path.join(envdir, ".env.swp")
        with open(tmp, "w") as f:
            f.write(f"COMFYUI_USERNAME=bench\nCOMFYUI_PASSWORD={password}\n")
        os.rename(tmp, os.path.join(envdir, ".env"))
        return time.monotonic_ns()

    def stop_run(self, p, events):
        """Stops a `comfy-init run` (SIGTERM, SIGKILL after 15 s) and whatever stand-in is left."""
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.kill_standins(events)

    def kill_standins(self, events):
        """Whatever stand-in of this workspace still runs (after a failure): SIGKILL."""
        for line in self.starts(events):
            m = re.match(r"start pid=(\d+)", line)
            try:
                with open(f"/proc/{m.group(1)}/cmdline", "rb") as f:
                    if os.path.dirname(events).encode() in f.read():
                        os.kill(int(m.group(1)), signal.SIGKILL)
            except (OSError, AttributeError):
                pass

    @staticmethod
    def starts(events):
        try:
            with open(events) as f:
                return [line for line in f if line.startswith("start ")]
        except FileNotFoundError:
            return []

    def wait_starts(self, events, n, timeout, arrivals=None):
        """Polls the event log (every 2 ms) until it holds n `start` lines. `arrivals`, if given, gets
        (time seen, line) for every line that shows up meanwhile."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                with open(events) as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            now = time.monotonic_ns()
            all_lines = text.splitlines()
            if arrivals is not None:
                if seen is not None:
                    arrivals.extend((now, line) for line in all_lines[seen:])
                seen = len(all_lines)
            lines = [line for line in all_lines if line.startswith("start ")]
            if len(lines) >= n:
                return now, lines
            time.sleep(0.002)
        return None, self.starts(events)

    def token_change(self):
        progress(f"7/7 token change -> new child running: comfy-init, {TOKEN_ROUNDS} password edits")
        base, comfy, envdir, port, env = self.workspace("comfy")
        events = env["FAKE_COMFYUI_EVENTS"]
        env["RUST_LOG"] = "debug"
        env["COMFY_INIT_ON_TOKEN_CHANGE"] = "restart"  # this row measures the restart path
        self.write_env(envdir, "benchpass0")
        p = subprocess.Popen([self.bin, "run"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, bufsize=1)
        log = []  # (monotonic ns at arrival, line)

        def reader():
            for line in p.stderr:
                log.append((time.monotonic_ns(), line.rstrip("\n")))

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        try:
            if self.wait_starts(events, 1, 30)[0] is None:
                die("comfy-init run never started the stand-in: " + " | ".join(l for _, l in log[-10:]))
            time.sleep(1.0)
            detect, total, stop_part, start_part, reap_lag = [], [], [], [], []
            for i in range(1, TOKEN_ROUNDS + 1):
                old_token = token_in(comfy)
                seen = len(self.starts(events))
                mark = len(log)
                t0 = self.write_env(envdir, f"benchpass{i}")
                arrivals = []
                t_start, lines = self.wait_starts(events, seen + 1, 30, arrivals)
                if t_start is None:
                    die("no new start after a password change: " + " | ".join(l for _, l in log[mark:]))
                decided = next((t for t, l in log[mark:] if "the token changed" in l), None)
                spawned = next((t for t, l in log[mark:] if re.search(r"INFO\s+started ", l)), None)
                exited = next((t for t, l in arrivals if l.startswith("exit ")), None)
                noticed = next((t for t, l in log[mark:] if re.search(r"INFO\s+child \(pid \d+\) exited", l)), None)
                if exited and noticed:
                    reap_lag.append(max(0.0, (noticed - exited) / 1e6))
                new_token = token_in(comfy)
                if new_token == old_token or "token_len=60" not in lines[-1]:
                    die(f"the token did not change, or the new child did not read it: {lines[-1].strip()}")
                if decided is None or spawned is None:
                    die("no 'the token changed' / 'started' log line: " + " | ".join(l for _, l in log[mark:]))
                # A save that ended is acted on at once: comfy-init may log its decision before this
                # thread reads the clock after rename() returns; that is 0, not a negative time.
                detect.append(max(0.0, (decided - t0) / 1e6))
                stop_part.append((spawned - decided) / 1e6)
                start_part.append((t_start - spawned) / 1e6)
                total.append((t_start - t0) / 1e6)
                progress(f"    edit {i}: decision {detect[-1]:.0f} ms, new child running {total[-1]:.0f} ms")
                time.sleep(1.5)  # our own writes are re-checked after the debounce: let that pass
            extra = len(self.starts(events)) - (TOKEN_ROUNDS + 1)
            token = subprocess.run([self.bin, "token"], env=env, capture_output=True, text=True).stdout.strip()
            self.health(env, port, token)
        finally:
            self.stop_run(p, events)
            th.join(timeout=2)
        self.token = {"detect": detect, "total": total, "stop": stop_part, "start": start_part}
        self.notes.append(
            f"Token change (comfy-init, {TOKEN_ROUNDS} edits, medians): rename -> decision {median(detect):.0f} ms "
            f"(a rename is acted on at once; the credential service verifies and hashes, writes PASSWORD, then tells "
            f"PID 1, which decides: nothing is stopped before PASSWORD holds the new token; the cost is bcrypt, see "
            f"the `comfy-init sync` figures below); "
            f"decision -> new child spawned {median(stop_part):.0f} ms (the old stand-in stops on SIGINT); spawned -> "
            f"its `start` event {median(start_part):.0f} ms (Python start-up). Unasked extra restarts: {extra}. "
            f"From the old stand-in's `exit` event to comfy-init's 'child exited' line: median "
            f"{median(reap_lag) if reap_lag else float('nan'):.0f} ms, max {max(reap_lag, default=float('nan')):.0f} ms "
            f"(per edit: {', '.join(f'{x:.0f}' for x in reap_lag)}; event log polled every 2 ms).")
        self.bcrypt_sync(env, envdir)

    # ----------------------------------------------------------------- 9. gpu ---

    def gpu_preflight(self):
        """`comfy-init gpu` over the fake NVML with its PyTorch probe (ComfyUI's Python asked where
        torch is, version.py read) against `python3 -c "import torch"`, side by side."""
        progress("9/9 GPU preflight: comfy-init gpu (fake NVML + torch probe) vs python3 -c 'import torch'")
        base = os.path.join(self.work, "gpu")
        site = os.path.join(base, "site", "torch")
        os.makedirs(site)
        with open(os.path.join(site, "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(site, "version.py"), "w") as f:
            f.write("__version__ = '2.8.0+cu128'\ncuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n")
        lib = os.path.join(base, "libnvidia-ml-fake.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", lib, FIXTURE.replace("fake_comfyui.py", "fake_nvml.c")],
                       check=True)
        env = clean_env({"PYTHONPATH": os.path.join(base, "site"), "COMFY_INIT_NVML_LIB": lib,
                         "COMFYUI_PYTHON": sys.executable, "FAKE_NVML_GPUS": "NVIDIA GeForce RTX 5090:32:12.0",
                         "FAKE_NVML_DRIVER": "570.86", "FAKE_NVML_CUDA": "12080"})
        runs = {"comfy-init": [self.bin, "gpu"], "alt": [sys.executable, "-c", "import torch"]}
        times = {k: [] for k in runs}
        for _ in range(20):
            for name, argv in runs.items():  # interleaved
                t0 = time.monotonic_ns()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                times[name].append((time.monotonic_ns() - t0) / 1e6)
        self.gpu_times = {k: median(v) for k, v in times.items()}
        self.notes.append(
            f"GPU preflight (20 interleaved runs, medians): `comfy-init gpu` with the fake NVML and its PyTorch "
            f"probe {self.gpu_times['comfy-init']:.0f} ms, of which the probe is one `python -c` start-up "
            f"(find_spec, no import) and one read of torch/version.py; `python3 -c \"import torch\"` of the "
            f"stand-in torch package {self.gpu_times['alt']:.0f} ms. The real torch's import takes seconds "
            f"(it loads CUDA libraries), which the probe never pays.")

    def provision_second_start(self):
        """`comfy-init provision` over 5 x 1 GiB of models already present and verified: the first
        run hashes them once (and fills models/.comfy-init-provision.json), a second start must
        cost a stat per model, not a re-hash (goal: under 1 s)."""
        progress("14 provisioning: second start with 5 GB of verified models present (setup writes 5 GiB)")
        base = os.path.join(self.work, "provision")
        models = os.path.join(base, "ComfyUI", "models", "checkpoints")
        os.makedirs(models)
        names = [f"model-{i}.safetensors" for i in range(5)]
        files = [open(os.path.join(models, n), "wb") for n in names]
        digest = hashlib.sha256()
        for _ in range(64):  # 64 x 16 MiB = 1 GiB, the same random bytes in each file
            chunk = os.urandom(16 << 20)
            digest.update(chunk)
            for f in files:
                f.write(chunk)
        for f in files:
            f.close()
        manifest = os.path.join(base, "provision.toml")
        with open(manifest, "w") as f:
            for n in names:
                # Never asked: the files are there.
                f.write(f'[[model]]\nurl = "http://127.0.0.1:9/{n}"\ndir = "checkpoints"\n'
                        f'sha256 = "{digest.hexdigest()}"\n\n')
        env = clean_env({"COMFYUI_DIR": os.path.join(base, "ComfyUI"), "COMFY_INIT_PROVISION": manifest})
        argv = [self.bin, "provision"]

        def timed():
            t0 = time.monotonic_ns()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            return (time.monotonic_ns() - t0) / 1e6

        first = timed()
        second = [timed() for _ in range(20)]
        self.provision_times = {"first": first, "second": median(second)}
        self.notes.append(
            f"Provisioning (row 14): 5 models of 1 GiB each, present with their sha256 in the manifest. The first "
            f"`comfy-init provision` hashes them once ({first / 1000:.1f} s, the alternative column) and records "
            f"size, mtime, ctime and inode in models/.comfy-init-provision.json; every later start reads that and stats "
            f"each file (median of 20 runs: {median(second):.1f} ms), no byte of the models is read again.")

    # ------------------------------------------------------------- 8. reload ---

    @staticmethod
    def get(port, token):
        """(status, body) of GET /system_stats with this bearer token."""
        req = urllib.request.Request(f"http://127.0.0.1:{port}/system_stats",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
        except OSError:
            return 0, b""

    def token_reload(self):
        """Save -> the new token answers 200 AND the old one is refused, as an API client sees it,
        with the companion reloading in place and with COMFY_INIT_ON_TOKEN_CHANGE=restart."""
        self.reload = {}
        for mode in ("reload", "restart"):
            progress(f"8/8 token change seen by a client ({mode}): {TOKEN_ROUNDS} password edits")
            base, comfy, envdir, port, env = self.workspace(f"reload-{mode}")
            env["COMFY_INIT_ON_TOKEN_CHANGE"] = mode
            self.write_env(envdir, "benchpass0")
            p = subprocess.Popen([self.bin, "run"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times, same_pid = [], []
            try:
                deadline = time.monotonic() + 30
                while self.get(port, token_in(comfy))[0] != 200:
                    if time.monotonic() > deadline:
                        die(f"{mode}: ComfyUI never answered")
                    time.sleep(0.05)
                for i in range(1, TOKEN_ROUNDS + 1):
                    old = token_in(comfy)
                    before = json.loads(self.get(port, old)[1])["standin"]["pid"]
                    t0 = self.write_env(envdir, f"benchpass{i}")
                    deadline = time.monotonic() + 30
                    while True:
                        new = token_in(comfy)
                        if new != old and self.get(port, new)[0] == 200 and self.get(port, old)[0] in (401, 302):
                            break
                        if time.monotonic() > deadline:
                            die(f"{mode}: the new token never answered")
                        time.sleep(0.002)
                    times.append((time.monotonic_ns() - t0) / 1e6)
                    after = json.loads(self.get(port, new)[1])["standin"]["pid"]
                    same_pid.append(before == after)
                    progress(f"    edit {i}: {times[-1]:.0f} ms, ComfyUI pid {before} -> {after}")
                    time.sleep(1.0)
            finally:
                self.stop_run(p, env["FAKE_COMFYUI_EVENTS"])
            self.reload[mode] = {"times": times, "same_pid": same_pid}
        r, t = self.reload["reload"], self.reload["restart"]
        self.notes.append(
            f"Token change seen by an API client ({TOKEN_ROUNDS} edits each): save -> new token 200 and old "
            f"refused, median {median(r['times']):.0f} ms with the companion reloading in place (same ComfyUI pid "
            f"in {sum(r['same_pid'])} of {len(r['same_pid'])}), {median(t['times']):.0f} ms with "
            f"COMFY_INIT_ON_TOKEN_CHANGE=restart (same pid in {sum(t['same_pid'])}; the stand-in starts in "
            f"Python start-up time, where the real ComfyUI takes 5-15 s on a CPU and drops its queue and models). "
            f"Both include the 75 ms debounce and one bcrypt hash at cost 12.")

    # -------------------------------------- 11. stop with a running prompt ---

    @staticmethod
    def post_prompt(port, token, seconds):
        """POST /prompt with a stand-in prompt that runs `seconds`: its prompt_id."""
        body = json.dumps({"prompt": {"1": {"class_type": "StandinSleep", "inputs": {"seconds": seconds}}}})
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/prompt", data=body.encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["prompt_id"]

    def stop_with_prompt(self):
        """docker stop while a prompt runs: SIGTERM to the init -> the init exited, and whether the
        prompt completed. tini and dumb-init forward SIGTERM to the stand-in, which dies of it as
        ComfyUI does (no handler): the prompt is lost. comfy-init drains (COMFY_INIT_DRAIN_TIMEOUT)."""
        self.drain = {}
        for name in ("tini", "dumb-init", "comfy-init"):
            progress(f"11 stop with a running {PROMPT_SECONDS:.0f} s prompt: {name}, {DRAIN_ROUNDS} rounds")
            times, done = [], 0
            for i in range(DRAIN_ROUNDS):
                base, comfy, envdir, port, env = self.workspace(f"drain-{name}-{i}")
                events = env["FAKE_COMFYUI_EVENTS"]
                if name == "comfy-init":
                    self.write_env(envdir, "drainpass")
                    env["COMFY_INIT_DRAIN_TIMEOUT"] = "30s"
                    child = []
                else:
                    env["FAKE_COMFYUI_NO_AUTH"] = "1"
                    child = [sys.executable, os.path.join(comfy, "main.py"), "--port", str(port)]
                p, pid = self.start_pid1(name, child, env=env)
                token = ""
                try:
                    deadline = time.monotonic() + 30
                    while True:
                        if name == "comfy-init":
                            token = token_in(comfy)
                        if self.get(port, token)[0] == 200 and (name != "comfy-init" or self.companion_ready()):
                            break
                        if time.monotonic() > deadline:
                            die(f"stop with a prompt: {name} never served")
                        time.sleep(0.05)
                    prompt = self.post_prompt(port, token, PROMPT_SECONDS)
                    while f"prompt_started {prompt}" not in self.read(events):
                        time.sleep(0.01)
                    t0 = time.monotonic_ns()
                    os.kill(pid, signal.SIGTERM)
                    p.wait(timeout=60)
                    times.append((time.monotonic_ns() - t0) / 1e6)
                    done += f"prompt_done {prompt}" in self.read(events)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                    self.kill_standins(events)
            self.drain[name] = {"time": median(times), "done": done}

    def companion_ready(self):
        """comfy-init's companion announced itself (it drains only then)."""
        return any(n.endswith(".companion") for n in os.listdir(self.tmp))

    @staticmethod
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    # --------------------------------------------------- 13. N instances ---

    def fake_gpus(self):
        """The fake NVML (tests/fixtures/fake_nvml.c) and a fake PyTorch built for CUDA 12.8."""
        lib = os.path.join(self.tmp, "libnvidia-ml-fake.so")
        if not os.path.exists(lib):
            subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, os.path.join(REPO, "tests", "fixtures", "fake_nvml.c")],
                           check=True)
            site = os.path.join(self.tmp, "site", "torch")
            os.makedirs(site, exist_ok=True)
            open(os.path.join(site, "__init__.py"), "w").close()
            with open(os.path.join(site, "version.py"), "w") as f:
                f.write("__version__ = '2.8.0+cu128'\ndebug = False\ncuda = '12.8'\ngit_version = 'fake'\nhip = None\n")
        return lib, os.path.join(self.tmp, "site")

    def instances(self):
        """comfy-init over 1 ComfyUI and over 4 (COMFY_INIT_INSTANCES=per-gpu, four fake RTX cards):
        PID 1's RSS and wake-ups while they idle, and a password change until every instance
        answers the new token and refuses the old one."""
        lib, site = self.fake_gpus()
        self.inst = {}
        for n in INSTANCE_COUNTS:
            progress(f"13 {n} instance(s): idle {IDLE_SECONDS} s, then {TOKEN_ROUNDS} password changes")
            base, comfy, envdir, port, env = self.workspace(f"instances-{n}")
            env.update({"COMFY_INIT_GPU": "require", "COMFY_INIT_NVML_LIB": lib, "PYTHONPATH": site,
                        "FAKE_NVML_GPUS": ";".join(["NVIDIA GeForce RTX 4090:24:8.9"] * n),
                        "FAKE_NVML_DRIVER": "570.86", "FAKE_NVML_CUDA": "12080",
                        "COMFY_INIT_RUN_DIR": os.path.join(base, "run")})
            if n > 1:
                env["COMFY_INIT_INSTANCES"] = "per-gpu"
            ports = [port + i for i in range(n)]
            self.write_env(envdir, "instpass0")
            p = subprocess.Popen([self.bin, "run"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 60
                while not all(self.get(q, token_in(comfy))[0] == 200 for q in ports):
                    if time.monotonic() > deadline:
                        die(f"{n} instances: not every one answered")
                    time.sleep(0.1)
                time.sleep(2.0)  # the stand-ins' start-up settles
                before = self.proc_status(p.pid)
                time.sleep(IDLE_SECONDS)
                after = self.proc_status(p.pid)
                switches = lambda st: int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
                times = []
                for i in range(1, TOKEN_ROUNDS + 1):
                    old = token_in(comfy)
                    t0 = self.write_env(envdir, f"instpass{i}")
                    deadline = time.monotonic() + 30
                    while True:
                        new = token_in(comfy)
                        if new != old and all(self.get(q, new)[0] == 200 and self.get(q, old)[0] in (401, 302)
                                              for q in ports):
                            break
                        if time.monotonic() > deadline:
                            die(f"{n} instances: the new token never answered everywhere")
                        time.sleep(0.002)
                    times.append((time.monotonic_ns() - t0) / 1e6)
                    time.sleep(1.0)
            finally:
                self.stop_run(p, env["FAKE_COMFYUI_EVENTS"])
            self.inst[n] = {"rss": int(after["VmRSS"].split()[0]), "wakeups": switches(after) - switches(before),
                            "change": median(times)}

    # ------------------------------------------------------- 12. API keys ---

    def api_keys(self):
        """Authenticated GET /system_stats with an API key vs with the password's token, the two
        interleaved (the key is checked by the companion: a SHA-256 and a compare per key), and
        `comfy-init apikey revoke` -> the first 401 to that key."""
        progress(f"12 API keys: {KEY_REQUESTS} requests with a key and with the token, {REVOKE_ROUNDS} revokes")
        base, comfy, envdir, port, env = self.workspace("apikeys")
        self.write_env(envdir, "benchpass0")
        p = subprocess.Popen([self.bin, "run"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def cli(*args):
            out = subprocess.run([self.bin, "apikey", *args], env=env, capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                die(f"comfy-init apikey {' '.join(args)}: {out.stderr.strip()}")
            return out.stdout.strip()
        try:
            token = self.wait_token(comfy, port)
            key = cli("add", "bench")
            deadline = time.monotonic() + 10
            while self.get(port, key)[0] != 200:
                if time.monotonic() > deadline:
                    die("the new API key was never accepted")
                time.sleep(0.05)
            with_key, with_token = [], []
            for i in range(KEY_REQUESTS * 2):
                credential, out = (key, with_key) if i % 2 else (token, with_token)
                t0 = time.perf_counter()
                if self.get(port, credential)[0] != 200:
                    die("an authenticated request was refused")
                out.append((time.perf_counter() - t0) * 1000)
            revokes = []
            for i in range(REVOKE_ROUNDS):
                victim = cli("add", f"victim{i}")
                while self.get(port, victim)[0] != 200:
                    time.sleep(0.02)
                t0 = time.monotonic()
                cli("revoke", f"victim{i}")
                while self.get(port, victim)[0] != 401:
                    if time.monotonic() - t0 > 10:
                        die("a revoked key was never refused")
                    time.sleep(0.005)
                revokes.append((time.monotonic() - t0) * 1000)
        finally:
            self.stop_run(p, env["FAKE_COMFYUI_EVENTS"])
        self.keys = {"key": median(with_key), "token": median(with_token), "revoke": revokes}

    # ------------------------------------------------ 10. wrong-login flood ---

    def api_latencies(self, port, token, seconds):
        """Authenticated GET /system_stats every 20 ms for `seconds`: the latencies in ms."""
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            status, _ = self.get(port, token)
            if status == 200:
                out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
        return out

    def login_flood(self):
        """Authenticated /system_stats p50 while FLOOD_THREADS clients post wrong passwords to
        /login, over its p50 at rest: with the companion (throttle, bcrypt off the event loop) and
        with COMFY_INIT_COMPANION=off (the bare node checks every guess inside the loop)."""
        self.flood = {}
        for mode in ("on", "off"):
            progress(f"10 wrong-login flood, companion {mode}: {FLOOD_SECONDS} s at rest, {FLOOD_SECONDS} s flooded")
            base, comfy, envdir, port, env = self.workspace(f"flood-{mode}")
            env["COMFY_INIT_COMPANION"] = mode
            self.write_env(envdir, "benchpass0")
            p = subprocess.Popen([self.bin, "run"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stop, answers = threading.Event(), collections.Counter()

            def guess(n):
                i = 0
                while not stop.is_set():
                    i += 1
                    data = f"username=bench&password=wrong-{n}-{i}".encode()
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/login", data=data)
                    try:
                        with NO_REDIRECT.open(req, timeout=10) as r:
                            answers[r.status] += 1
                    except urllib.error.HTTPError as e:
                        answers[e.code] += 1
                    except OSError:
                        answers["error"] += 1
            try:
                token = self.wait_token(comfy, port)
                rest = self.api_latencies(port, token, FLOOD_SECONDS)
                guessers = [threading.Thread(target=guess, args=(n,)) for n in range(FLOOD_THREADS)]
                for g in guessers:
                    g.start()
                flooded = self.api_latencies(port, token, FLOOD_SECONDS)
                stop.set()
                for g in guessers:
                    g.join()
            finally:
                self.stop_run(p, env["FAKE_COMFYUI_EVENTS"])
            self.flood[mode] = {"rest": median(rest), "flooded": median(flooded), "max": max(flooded),
                                "answers": dict(answers)}
        on, off = self.flood["on"], self.flood["off"]
        self.notes.append(
            f"Wrong-login flood ({FLOOD_THREADS} client threads posting wrong passwords for {FLOOD_SECONDS} s, an "
            f"API client asking /system_stats with the token every 20 ms): with the companion p50 "
            f"{on['rest']:.1f} ms at rest, {on['flooded']:.1f} ms flooded (max {on['max']:.0f} ms), login answers "
            f"{on['answers']}; the bare node (COMFY_INIT_COMPANION=off) {off['rest']:.1f} ms at rest, "
            f"{off['flooded']:.1f} ms flooded (max {off['max']:.0f} ms), login answers {off['answers']}: every "
            f"guess runs bcrypt inside its event loop.")

    def wait_token(self, comfy, port):
        """The token in login/PASSWORD once ComfyUI answers it."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            token = token_in(comfy)
            if token and self.get(port, token)[0] == 200:
                return token
            time.sleep(0.05)
        die("ComfyUI never answered its token")

    def bcrypt_sync(self, env, envdir):
        """How much of the decision is bcrypt: `comfy-init sync` after a password edit does the same work."""
        runs = []
        for i in range(3):
            self.write_env(envdir, f"syncpass{i}")
            t0 = time.monotonic_ns()
            r = subprocess.run([self.bin, "sync"], env=env, capture_output=True, text=True)
            runs.append((time.monotonic_ns() - t0) / 1e6)
            if r.returncode != 0:
                die(f"comfy-init sync failed: {r.stderr.strip()}")
        one = []
        for _ in range(3):  # nothing changed: one bcrypt verification (it matches), no write
            t0 = time.monotonic_ns()
            r = subprocess.run([self.bin, "sync"], env=env, capture_output=True, text=True)
            one.append((time.monotonic_ns() - t0) / 1e6)
            if r.returncode != 0 or "in sync" not in r.stdout:
                die(f"comfy-init sync (unchanged) failed: {r.stdout.strip()} {r.stderr.strip()}")
        self.notes.append(
            f"bcrypt's share: `comfy-init sync` after a password edit (verify against the old hash, then hash: two "
            f"bcrypt operations at cost 12, no debounce) takes {median(runs):.0f} ms; with nothing to change (one "
            f"verification) {median(one):.0f} ms (medians of 3, process start included).")

    def token_change_watchexec(self):
        if not self.watchexec:
            self.notes.append(
                "watchexec: not found (install it with `cargo install watchexec-cli`, then rerun); "
                "the token-change row has no alternative figure.")
            return
        version = subprocess.run([self.watchexec, "--version"], capture_output=True,
                                 text=True).stdout.strip().splitlines()[0]
        # What a user would script: re-hash with `comfy-init sync` (the same bcrypt work as
        # comfy-init: verify, then hash), then exec ComfyUI. The naive form lets sync write the
        # token back into the watched .env, which makes watchexec restart once more; the careful
        # form runs sync on a copy. The careful one is the table's alternative.
        careful = self.watchexec_run("careful", "cp {env} {copy} && COMFY_INIT_ENV_FILE={copy} ")
        naive = self.watchexec_run("naive", "")
        self.token["watchexec"] = careful["total"]
        for label, r, form in (
                ("careful (table)", careful, "cp .env copy && COMFY_INIT_ENV_FILE=copy comfy-init sync"),
                ("naive", naive, "comfy-init sync")):
            self.notes.append(
                f"Token change, {version}, {label}: `watchexec --restart --shell=none --stop-signal SIGINT --watch "
                f"<.env's folder> -- sh -c '{form} && exec python3 main.py ...'`: median {median(r['total']):.0f} ms "
                f"(per edit: {', '.join(f'{x:.0f}' for x in r['total'])}); the command ran "
                f"{r['runs'] / TOKEN_ROUNDS:.1f} times per edit, {r['extra']} unasked extra `start` events.")

    def watchexec_run(self, tag, prefix):
        progress(f"7/7 token change -> new child running: watchexec -r ({tag} script), {TOKEN_ROUNDS} password edits")
        base, comfy, envdir, port, env = self.workspace(f"watchexec-{tag}")
        events = env["FAKE_COMFYUI_EVENTS"]
        runs = os.path.join(base, "runs")
        self.write_env(envdir, "benchpass0")
        script = (f"echo run >> {runs}; "
                  + prefix.format(env=os.path.join(envdir, ".env"), copy=os.path.join(base, "env.copy"))
                  + f"{self.bin} sync >/dev/null 2>&1 && "
                  f"exec {sys.executable} {comfy}/main.py --listen 127.0.0.1 --port {port}")
        argv = [self.watchexec, "--restart", "--shell=none", "--stop-signal", "SIGINT", "--watch", envdir, "--",
                "sh", "-c", script]
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)

        def count_runs():
            try:
                with open(runs) as f:
                    return f.read().count("run")
            except FileNotFoundError:
                return 0

        try:
            if self.wait_starts(events, 1, 30)[0] is None:
                die("watchexec never started the stand-in")
            time.sleep(1.5)
            runs_before = count_runs()
            total = []
            for i in range(1, TOKEN_ROUNDS + 1):
                seen = len(self.starts(events))
                t0 = self.write_env(envdir, f"benchpass{i}")
                t_start, lines = self.wait_starts(events, seen + 1, 30)
                if t_start is None:
                    die("watchexec: no new start after a password change")
                if "token_len=60" not in lines[-1]:
                    die(f"watchexec: the new child has no token: {lines[-1].strip()}")
                total.append((t_start - t0) / 1e6)
                progress(f"    edit {i}: new child running {total[-1]:.0f} ms")
                time.sleep(1.5)
            extra = len(self.starts(events)) - (TOKEN_ROUNDS + 1)
            n_runs = count_runs() - runs_before
        finally:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            self.kill_standins(events)
        return {"total": total, "extra": extra, "runs": n_runs}

    # -------------------------------------------------------- healthcheck ---

    def health(self, env, port, token):
        progress(f"7/7 healthcheck vs curl: hyperfine {HEALTH_RUNS} runs each, max RSS over {RSS_RUNS} runs")
        hc = [self.bin, "healthcheck"]
        curl = ["curl", "-fsS", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{port}/system_stats"]
        for argv in (hc, curl):
            r = subprocess.run(argv, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                die(f"{argv[0]} {argv[1]} is not healthy: {r.stdout.strip()} {r.stderr.strip()}")
        out = os.path.join(self.work, "health.json")
        curl_cmd = (f'curl -fsS -o /dev/null -H "Authorization: Bearer {token}" '
                    f"http://127.0.0.1:{port}/system_stats")
        r = subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", "5", "--runs", str(HEALTH_RUNS),
                            "--export-json", out, "--command-name", "comfy-init", f"{self.bin} healthcheck",
                            "--command-name", "curl", curl_cmd],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            die(f"hyperfine (healthcheck) failed: {r.stderr.strip()}")
        with open(out) as f:
            res = {x["command"]: x for x in json.load(f)["results"]}
        wall = {n: median(res[n]["times"]) * 1e3 for n in ("comfy-init", "curl")}
        rss = {}
        for name, argv in (("comfy-init", hc), ("curl", curl)):
            vals = []
            for _ in range(RSS_RUNS):
                r = subprocess.run(["/usr/bin/time", "-v"] + argv, env=env, capture_output=True, text=True)
                m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
                if r.returncode != 0 or not m:
                    die(f"/usr/bin/time -v {name}: {r.stderr.strip()[-300:]}")
                vals.append(int(m.group(1)))
            rss[name] = median(vals)
        self.health_res = {"wall": wall, "rss": rss}
        self.notes.append(
            "Healthcheck: `comfy-init healthcheck` makes 3 requests (with the token, then without, then with an "
            "empty ?token=, to prove auth is enforced); curl makes the one authorised request. Max RSS from "
            f"/usr/bin/time -v, median of {RSS_RUNS}.")

    # ----------------------------------------------------------------- report ---

    def versions(self):
        v = {}
        for pkg in ("tini", "dumb-init", "catatonit", "hyperfine", "curl"):
            r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
            v[pkg] = r.stdout.strip() or "?"
        v["comfy-init"] = subprocess.run([self.bin, "--version"], capture_output=True,
                                         text=True).stdout.strip().replace("comfy-init ", "")
        if self.watchexec:
            v["watchexec"] = subprocess.run([self.watchexec, "--version"], capture_output=True,
                                            text=True).stdout.strip().splitlines()[0].replace("watchexec ", "")
        return v

    def table(self):
        def fmt(x):
            if x is None:
                return "—"
            if isinstance(x, str):
                return x
            if x == 0:
                return "0"
            if abs(x) >= 100:
                return f"{x:.0f}"
            if abs(x) >= 10:
                return f"{x:.1f}"
            return f"{x:.2f}"

        head = ("| metric | unit | floor / alternative | tini | dumb-init | catatonit | comfy-init "
                "| comfy-init ÷ tini | comfy-init ÷ catatonit | comfy-init ÷ best | goal | met |")
        lines = [head, "|" + "---|" * 12]
        for metric, unit, vals, goal in self.rows:
            peers = {n: vals[n] for n in PEERS if n in vals}
            alt = vals.get("floor", vals.get("alt"))
            me = vals.get("comfy-init")
            if peers:
                best_name = min(peers, key=peers.get)
                best = peers[best_name]
            else:
                best_name, best = "alternative", alt
            if me is None or best is None:
                ratio = "—"
            elif best:
                ratio = f"{me / best:.2f} ({best_name})"
            else:
                ratio = "= (both 0)" if me == 0 else f"∞ ({best_name} 0)"
            goal_txt, met = "", ""
            if goal:
                ref, rule = goal
                if rule == "<=":
                    goal_txt, met = f"≤ {ref}", me <= vals[ref]
                elif rule == "<=1.2x":
                    goal_txt, met = f"≤ 1.2× {ref}", me <= 1.2 * vals[ref]
                elif rule == "==0":
                    goal_txt, met = "0", me == 0
                elif rule == "<100":
                    goal_txt, met = "< 100 ms", me < 100
                elif rule == "<300":
                    goal_txt, met = "≤ 300 ms", me <= 300
                elif rule == "<=1.5":
                    goal_txt, met = "≤ 1.5", me <= 1.5
                elif rule == "<=1.1":
                    goal_txt, met = "≤ 1.1", me <= 1.1
                elif rule == "<1000":
                    goal_txt, met = "< 1000 ms", me < 1000
                elif rule == "<=ms":
                    goal_txt, met = f"≤ {ref} ms", me <= float(ref)
                ref_val = {"<=": vals.get(ref), "<=1.2x": 1.2 * vals.get(ref, 0)}.get(rule)
                if met:
                    met = "yes"
                elif ref_val:
                    met = f"**no** (+{(me / ref_val - 1) * 100:.0f}%)"
                else:
                    met = "**no**"
            tini, cat = vals.get("tini"), vals.get("catatonit")
            to_tini = f"{me / tini:.2f}" if me is not None and tini else "—"
            to_cat = f"{me / cat:.2f}" if me is not None and cat else "—"
            lines.append(f"| {metric} | {unit} | {fmt(alt)} | {fmt(tini)} | {fmt(vals.get('dumb-init'))} "
                         f"| {fmt(cat)} | {fmt(me)} | {to_tini} | {to_cat} | {ratio} | {goal_txt} | {met} |")
        return "\n".join(lines)

    def finish_rows(self):
        t = getattr(self, "token", None)
        if t:
            self.add("7. token change: .env rename -> restart decision, after the new hash (comfy-init log), median",
                     "ms", {"comfy-init": median(t["detect"])}, ("300", "<300"))
            self.add("7. token change: .env rename -> new child running (`start` event), median", "ms",
                     {"comfy-init": median(t["total"]),
                      "alt": median(t["watchexec"]) if "watchexec" in t else None})
        r = getattr(self, "reload", None)
        if r:
            self.add("8. password change: save -> new token 200, old refused, median (alternative: restart)", "ms",
                     {"comfy-init": median(r["reload"]["times"]), "alt": median(r["restart"]["times"])},
                     ("300", "<300"))
        g = getattr(self, "gpu_times", None)
        if g:
            self.add("9. `comfy-init gpu` with the PyTorch probe (alternative: python3 -c 'import torch', "
                     "stand-in torch), median wall", "ms", {"comfy-init": g["comfy-init"], "alt": g["alt"]})
        pv = getattr(self, "provision_times", None)
        if pv:
            self.add("14. provisioning, second start, 5 GB verified present (alternative: the first start, which "
                     "hashes), median wall", "ms", {"comfy-init": pv["second"], "alt": pv["first"]}, ("1000", "<1000"))
        f = getattr(self, "flood", None)
        if f:
            ratio = {m: f[m]["flooded"] / f[m]["rest"] for m in f}
            self.add("10. authenticated API p50 during a wrong-login flood ÷ at rest (alternative: the bare node)",
                     "ratio", {"comfy-init": ratio["on"], "alt": ratio["off"]}, ("1.5", "<=1.5"))
        d = getattr(self, "drain", None)
        if d:
            self.add(f"11. stop with a running {PROMPT_SECONDS:.0f} s prompt: SIGTERM -> init exited, median",
                     "ms", {n: d[n]["time"] for n in d})
            self.add(f"11. prompts completed of {DRAIN_ROUNDS} stopped mid-run (comfy-init drains: "
                     "COMFY_INIT_DRAIN_TIMEOUT)", "count", {n: d[n]["done"] for n in d})
        k = getattr(self, "keys", None)
        if k:
            self.add("12. authenticated GET /system_stats with an API key ÷ with the password's token, p50 "
                     f"({k['key']:.2f} ms ÷ {k['token']:.2f} ms)", "ratio",
                     {"comfy-init": k["key"] / k["token"]}, ("1.1", "<=1.1"))
            self.add(f"12. `apikey revoke` -> first 401 to that key, median of {REVOKE_ROUNDS} (max "
                     f"{max(k['revoke']):.0f} ms)", "ms", {"comfy-init": median(k["revoke"])}, ("1000", "<1000"))
        inst = getattr(self, "inst", None)
        if inst:
            one, four = inst[INSTANCE_COUNTS[0]], inst[INSTANCE_COUNTS[-1]]
            self.add("13. PID 1's RSS over 4 ComfyUI instances (alternative: over 1)", "KiB",
                     {"comfy-init": four["rss"], "alt": one["rss"]})
            self.add(f"13. PID 1's wake-ups in {IDLE_SECONDS} s over 4 idle instances (alternative: over 1)", "count",
                     {"comfy-init": four["wakeups"], "alt": one["wakeups"]})
            self.add("13. password change -> every instance answers the new token, old refused, median: 4 instances "
                     f"(alternative: 1; goal: one + 50 ms = {one['change'] + 50:.0f} ms)", "ms",
                     {"comfy-init": four["change"], "alt": one["change"]}, (f"{one['change'] + 50:.0f}", "<=ms"))
        h = getattr(self, "health_res", None)
        if h:
            self.add("7. healthcheck (alternative: curl, one authorised request), median wall", "ms",
                     {"comfy-init": h["wall"]["comfy-init"], "alt": h["wall"]["curl"]})
            self.add("7. healthcheck max RSS (alternative: curl)", "KiB",
                     {"comfy-init": h["rss"]["comfy-init"], "alt": h["rss"]["curl"]})

    def report(self, elapsed):
        self.finish_rows()
        table = self.table()
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        v = self.versions()
        header = [
            "# comfy-init benchmark",
            "",
            f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"- kernel: {platform.release()} ({platform.machine()}), {os.cpu_count()} CPUs: {cpu}",
            "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- run: `make bench` ({elapsed:.0f} s for bench.py)",
            "",
            "comfy-init runs with `COMFY_INIT_GPU=off COMFY_INIT_AUTH=off COMFY_INIT_RESTART=never "
            "COMFY_INIT_STOP_SIGNAL=SIGTERM` except in rows 7 (credentials on). Rows 2-6 run each init as PID 1 of "
            "a fresh PID namespace (`unshare --pid --fork --mount-proc`) over bench/helper.c; row 1 runs them as "
            "plain processes. Lower is better everywhere. *floor / alternative*: `/bin/true` alone (1), the child "
            "signalled or stopped directly with no init (5, 6), the scripted alternative (7). *best*: the best of "
            "tini, dumb-init and catatonit (rows 1-6), the alternative (rows 7).",
            "",
        ]
        method = [
            "",
            "Method:",
            "",
            f"- 1: one interleaved run (bench/helper.c `spawn`): {SPAWN_WARMUP} warm-up rounds, then {SPAWN_RUNS} "
            "rounds, each running every command once in a new random order (posix_spawnp + waitpid, output to "
            "/dev/null).",
            f"- 2-3: the four inits run side by side, each over an idle child in pause(); /proc/PID/status read "
            f"1 s after start and {IDLE_SECONDS} s later.",
            "- 5-6: everything (sender, init, child) pinned to one CPU, see `pinned` in bench.py.",
            f"- 5: bench/helper.c: the sender takes CLOCK_MONOTONIC, kill(init, SIGUSR1), then waits for the "
            f"child's handler to write its own CLOCK_MONOTONIC to a FIFO; {SIGNAL_ITERATIONS} signals per init, "
            f"one at a time, interleaved: all inits run at once, and each round signals each of them "
            f"{SIGNAL_PER_ROUND} times in a new random order.",
            f"- 6: {STOP_ROUNDS} rounds, inits interleaved in a new random order each round; the child dies on SIGTERM (default action); the clock "
            "stops when the init's pidfd turns readable.",
            "",
            "Notes:",
            "",
        ] + [f"- {n}" for n in self.notes]
        text = "\n".join(header) + "\n" + table + "\n" + "\n".join(method) + "\n"
        print(table)
        with open(self.out, "w") as f:
            f.write(text)
        progress(f"written {self.out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--helper", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--watchexec", default="")
    ap.add_argument("--only", default="", help="comma list of phases (spawn,idle,reap,signal,stop,token,reload,gpu,flood,drain,apikeys,instances,provision)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("needs root (unshare --pid, /proc of other processes)")
    b = Bench(args)
    phases = {
        "spawn": b.spawn,
        "idle": b.idle,
        "reap": b.reaping,
        "signal": b.signal_latency,
        "stop": b.stop_latency,
        "token": lambda: (b.token_change(), b.token_change_watchexec()),
        "reload": b.token_reload,
        "gpu": b.gpu_preflight,
        "flood": b.login_flood,
        "drain": b.stop_with_prompt,
        "apikeys": b.api_keys,
        "instances": b.instances,
        "provision": b.provision_second_start,
    }
    only = [p for p in args.only.split(",") if p]
    for name, fn in phases.items():
        if not only or name in only:
            fn()
    b.report(time.monotonic() - T0)


if __name__ == "__main__":
    main()
