"""dockyard-runc: the runc-compatible command line over runtime.container.

Commands, flags, exit statuses and error output follow runc's: errors go
to stderr (or --log) as logrus-style text or JSON lines, exit status 1.
"""

from __future__ import annotations

import _signal as signal  # not signal.py: its enums (and `enum`) cost ~4 ms
import gc
import os
import sys
import time

from dockyard import __version__, errdefs
from dockyard.runtime import fastjson

SPEC_VERSION = "1.0.2"


class _Log:
    def __init__(self, path: str | None, fmt: str) -> None:
        self.path = path
        self.fmt = fmt

    def write(self, level: str, msg: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            line = fastjson.dumps({"level": level, "msg": msg, "time": now})
        else:
            line = f'time="{now}" level={level} msg={fastjson.dumps(msg)}'
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if not self.path or level == "error":
            sys.stderr.write(line + "\n")


def _parse_signal(value: str) -> int:
    value = value.upper()
    if value.isdigit():
        return int(value)
    name = value if value.startswith("SIG") else "SIG" + value
    try:
        from signal import Signals
        return int(Signals[name])
    except KeyError:
        raise errdefs.InvalidArgument(f"unknown signal {value!r}") from None


class _Args:
    """What the fast parser fills in: the attributes argparse would set."""

    def __init__(self, **values) -> None:
        self.__dict__.update(values)


_GLOBAL_VALUES = {"--root": "root", "--log": "log", "--log-format": "log_format",
                  "--rootless": "rootless", "--criu": "criu"}
_GLOBAL_FLAGS = {"--debug": "debug", "--systemd-cgroup": "systemd_cgroup"}
_CREATE_VALUES = {"--bundle": "bundle", "-b": "bundle", "--pid-file": "pid_file",
                  "--console-socket": "console_socket", "--preserve-fds": "preserve_fds"}
_CREATE_FLAGS = {"--no-pivot": "no_pivot", "--no-new-keyring": "no_new_keyring"}
_FAST = {
    "create": (_CREATE_VALUES, _CREATE_FLAGS, {"bundle": ".", "pid_file": None,
               "console_socket": None, "preserve_fds": 0, "no_pivot": False,
               "no_new_keyring": False}),
    "run": (_CREATE_VALUES, {**_CREATE_FLAGS, "--detach": "detach", "-d": "detach",
                             "--keep": "keep"},
            {"bundle": ".", "pid_file": None, "console_socket": None, "preserve_fds": 0,
             "no_pivot": False, "no_new_keyring": False, "detach": False, "keep": False}),
    "start": ({}, {}, {}),
    "state": ({}, {}, {}),
    "delete": ({}, {"--force": "force", "-f": "force"}, {"force": False}),
}


def _fast_parse(argv: list[str]) -> _Args | None:
    """Parse the hot commands (create, run, start, state, delete) without argparse.

    argparse and building its parser cost about a fifth of `run`'s wall time.
    Anything unusual (help, abbreviations, bad values, unknown flags) returns
    None and goes to argparse, which owns the error messages.
    """
    values: dict = {"version": False, "root": "/run/dockyard-runc", "log": None,
                    "log_format": "text", "debug": False, "systemd_cgroup": False,
                    "rootless": "auto", "criu": None, "command": None}
    table_values, table_flags = _GLOBAL_VALUES, _GLOBAL_FLAGS
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            if name in table_values:
                if not eq:
                    if i >= len(argv) or argv[i].startswith("-"):
                        return None
                    value = argv[i]
                    i += 1
                values[table_values[name]] = value
            elif name in table_flags and not eq:
                values[table_flags[name]] = True
            else:
                return None
        elif values["command"] is None:
            if arg not in _FAST:
                return None
            values["command"] = arg
            table_values, table_flags, defaults = _FAST[arg]
            values.update(defaults)
        else:
            positional.append(arg)
    if values["command"] is None or len(positional) != 1:
        return None
    if values["log_format"] not in ("text", "json"):
        return None
    if "preserve_fds" in values and not isinstance(values["preserve_fds"], int):
        try:
            values["preserve_fds"] = int(values["preserve_fds"])
        except ValueError:
            return None
    values["id"] = positional[0]
    return _Args(**values)


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="dockyard-runc", description="OCI runtime (runc-compatible)")
    p.add_argument("--version", "-v", action="store_true")
    p.add_argument("--root", default="/run/dockyard-runc")
    p.add_argument("--log", default=None)
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--rootless", default="auto")
    p.add_argument("--criu", default=None)
    sub = p.add_subparsers(dest="command")

    def container_cmd(name: str, **kw):
        c = sub.add_parser(name, **kw)
        c.add_argument("id")
        return c

    for name in ("create", "run"):
        c = container_cmd(name)
        c.add_argument("--bundle", "-b", default=".")
        c.add_argument("--pid-file", default=None)
        c.add_argument("--console-socket", default=None)
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        c.add_argument("--preserve-fds", type=int, default=0)
        if name == "run":
            c.add_argument("--detach", "-d", action="store_true")
            c.add_argument("--keep", action="store_true")
    container_cmd("start")
    c = container_cmd("state")
    c = container_cmd("kill")
    c.add_argument("signal", nargs="?", default="SIGTERM")
    c.add_argument("--all", "-a", action="store_true")
    c = container_cmd("delete")
    c.add_argument("--force", "-f", action="store_true")
    container_cmd("pause")
    container_cmd("resume")
    c = container_cmd("ps")
    c.add_argument("--format", "-f", default="table", choices=["table", "json"])
    c.add_argument("ps_args", nargs=argparse.REMAINDER)
    c = container_cmd("events")
    c.add_argument("--stats", action="store_true")
    c.add_argument("--interval", default="5s")
    c = container_cmd("exec")
    c.add_argument("--process", "-p", default=None)
    c.add_argument("--tty", "-t", action="store_true")
    c.add_argument("--env", "-e", action="append", default=[])
    c.add_argument("--cwd", default=None)
    c.add_argument("--user", "-u", default=None)
    c.add_argument("--additional-gids", "-g", action="append", default=[])
    c.add_argument("--cap", "-c", action="append", default=[])
    c.add_argument("--no-new-privs", action="store_true", default=None)
    c.add_argument("--detach", "-d", action="store_true")
    c.add_argument("--pid-file", default=None)
    c.add_argument("--console-socket", default=None)
    c.add_argument("--preserve-fds", type=int, default=0)
    c.add_argument("exec_args", nargs=argparse.REMAINDER, metavar="COMMAND")
    c = sub.add_parser("list")
    c.add_argument("--format", "-f", default="table", choices=["table", "json"])
    c.add_argument("--quiet", "-q", action="store_true")
    sub.add_parser("features")
    c = sub.add_parser("spec")
    c.add_argument("--bundle", "-b", default=".")
    c.add_argument("--rootless", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """dockyard-runc: the exit status for argv, or, run as the program (no
    argv), the process ends here with it."""
    # A command is a short burst of imports and small objects that leaves
    # next to no cyclic garbage; the collector's passes over them cost ~1 ms
    # of `run`. Waits that last as long as a container turn it back on.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        status = _main(argv)
    finally:
        if gc_was_enabled:
            gc.enable()
    if argv is None:
        # The interpreter's teardown (a last collection, then freeing every
        # object) costs ~3 ms of `run` and leaves nothing behind that the
        # kernel does not: flush our output and go.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
    return status


def _main(argv: list[str] | None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = _fast_parse(argv) or _parser().parse_args(argv)
    if args.command in ("create", "run", "exec"):
        # Before the heavy imports: see cgwarm's docstring.
        from dockyard.runtime.linux import cgwarm
        cgwarm.start()
    log = _Log(args.log, args.log_format)
    if args.version:
        print(f"dockyard-runc version {__version__}\nspec: {SPEC_VERSION}")
        return 0
    if not args.command:
        _parser().print_help()
        return 0
    if args.systemd_cgroup:
        log.write("error", "the systemd cgroup driver is not supported; use cgroupfs paths")
        return 1
    try:
        return _dispatch(args, log) or 0
    except errdefs.DockyardError as exc:
        prefix = f"runc {args.command} failed: " if args.command in ("create", "run") else ""
        log.write("error", prefix + str(exc))
        return 1
    except OSError as exc:
        log.write("error", f"{args.command}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args, log: _Log) -> int:

    from dockyard.runtime.container import Runtime

    runtime = Runtime(args.root)
    cmd = args.command
    if cmd == "create":
        _, warnings = runtime.create(args.id, args.bundle, _create_options(args))
        for w in warnings:
            log.write("warning", w)
        return 0
    if cmd == "run":
        return _run(runtime, args, log)
    if cmd == "start":
        runtime.start(args.id)
        return 0
    if cmd == "state":
        print(fastjson.dumps(runtime.state(args.id), indent=2))
        return 0
    if cmd == "kill":
        runtime.kill(args.id, _parse_signal(args.signal), all_processes=args.all)
        return 0
    if cmd == "delete":
        runtime.delete(args.id, force=args.force)
        return 0
    if cmd == "pause":
        runtime.pause(args.id)
        return 0
    if cmd == "resume":
        runtime.resume(args.id)
        return 0
    if cmd == "ps":
        return _ps(runtime, args)
    if cmd == "events":
        if not args.stats:
            raise errdefs.NotImplementedFeature(
                "events: only --stats (one-shot) is supported; use `events --stats ID`")
        print(fastjson.dumps(runtime.stats(args.id)))
        return 0
    if cmd == "exec":
        return _exec(runtime, args)
    if cmd == "list":
        return _list(runtime, args)
    if cmd == "features":
        from dockyard.runtime.features import features
        print(fastjson.dumps(features(), indent=4))
        return 0
    if cmd == "spec":
        from dockyard.runtime.specgen import default_spec
        path = os.path.join(args.bundle, "config.json")
        if os.path.exists(path):
            raise errdefs.AlreadyExists(f"File {path} exists. Remove it first")
        with open(path, "w") as f:
            f.write(fastjson.dumps(default_spec(terminal=True), indent=4))
        return 0
    raise errdefs.InvalidArgument(f"unknown command {cmd!r}")


def _create_options(args):
    from dockyard.runtime.container import CreateOptions
    return CreateOptions(console_socket=args.console_socket, pid_file=args.pid_file,
                         preserve_fds=args.preserve_fds, no_pivot=args.no_pivot)


def _run(runtime, args, log: _Log) -> int:
    """create + start, then (unless --detach) wait, forwarding signals, and delete."""
    from dockyard.linux import syscalls as sc

    # The init is our child; anything it leaves orphaned comes back to us too.
    sc.set_child_subreaper()
    options = _create_options(args)
    relay = None
    spec_terminal = _bundle_wants_terminal(args.bundle)
    if spec_terminal and not args.console_socket:
        if args.detach:
            raise errdefs.InvalidArgument(
                "cannot allocate tty if runc will detach without setting console socket")
        # Only here: the relay's imports (tempfile, shutil, termios) are dear.
        from dockyard.runtime import console as consolemod
        relay = consolemod.ConsoleRelay()
        options.console_socket = relay.path
    try:
        pid, warnings = runtime.create(args.id, args.bundle, options)
        for w in warnings:
            log.write("warning", w)
        if relay is not None:
            relay.accept()
        runtime.start(args.id)
        if args.detach:
            return 0
        status = _wait_forwarding(pid, relay)
    finally:
        if relay is not None:
            relay.close()
    if not args.keep:
        try:
            runtime.delete(args.id, force=True)
        except errdefs.NotFound:
            pass
    return status


def _bundle_wants_terminal(bundle: str) -> bool:
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            return bool((fastjson.loads(f.read()).get("process") or {}).get("terminal"))
    except (OSError, ValueError):
        return False


def _wait_forwarding(pid: int, relay=None) -> int:
    """Wait for pid, forwarding catchable signals to it; return a shell-style status."""
    gc.enable()  # see main
    forwarded = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                 signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH]

    def forward(signum, _frame):
        if signum == signal.SIGWINCH and relay is not None:
            relay.resize_from_stdin()
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in forwarded:
        signal.signal(sig, forward)
    if relay is not None:
        relay.copy_until_exit(pid)
    while True:
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if wpid == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def _exec(runtime, args) -> int:

    from dockyard.runtime.container import load_hooks  # noqa: F401 - warm import
    from dockyard.runtime.execute import ExecOptions, exec_process, process_for_exec
    from dockyard.runtime.spec import Process, parse_spec

    cs = runtime.load(args.id)
    if args.process:
        try:
            with open(args.process) as f:
                process = Process.from_oci(fastjson.loads(f.read()))
        except (OSError, ValueError) as exc:
            raise errdefs.InvalidArgument(f"--process {args.process}: {exc}") from exc
    else:
        command = list(args.exec_args or [])
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            raise errdefs.InvalidArgument("exec: no command given; usage: exec ID COMMAND [ARGS]")
        base = parse_spec(cs.config, cs.bundle).process
        process = process_for_exec(base, command, env=args.env, cwd=args.cwd, user=args.user,
                                   terminal=args.tty, caps=args.cap,
                                   no_new_privs=args.no_new_privs)
        if args.additional_gids:
            from dockyard.record import replace
            process = replace(process, user=replace(process.user, additional_gids=tuple(
                int(g) for g in args.additional_gids)))
    from dockyard.linux import syscalls as sc
    from dockyard.runtime import console as consolemod

    sc.set_child_subreaper()
    relay = None
    options = ExecOptions(console_socket=args.console_socket, pid_file=args.pid_file,
                          preserve_fds=args.preserve_fds)
    if process.terminal and not args.console_socket:
        if args.detach:
            raise errdefs.InvalidArgument(
                "cannot allocate tty if runc will detach without setting console socket")
        relay = consolemod.ConsoleRelay()
        options.console_socket = relay.path
    try:
        pid = exec_process(runtime, args.id, process, options)
        if relay is not None:
            relay.accept()
        if args.detach:
            return 0
        return _wait_forwarding(pid, relay)
    finally:
        if relay is not None:
            relay.close()


def _ps(runtime, args) -> int:
    pids = runtime.pids(args.id)
    if args.format == "json":
        print(fastjson.dumps(pids))
        return 0
    import subprocess
    ps_args = args.ps_args or ["-ef"]
    out = subprocess.run(["ps", *ps_args], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    if not lines:
        sys.stderr.write(out.stderr)
        return 1
    header = lines[0]
    try:
        pid_col = header.split().index("PID")
    except ValueError:
        raise errdefs.InvalidArgument("ps: couldn't find PID field in ps output") from None
    print(header)
    wanted = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > pid_col and fields[pid_col].isdigit() and int(fields[pid_col]) in wanted:
            print(line)
    return 0


def _list(runtime, args) -> int:
    states = runtime.list()
    if args.quiet:
        for s in states:
            print(s["id"])
        return 0
    if args.format == "json":
        print(fastjson.dumps(states))
        return 0
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
             for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
