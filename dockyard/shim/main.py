"""dockyard-shim: started by dockyard-containerd, one per container.

    dockyard-shim --namespace NS --id ID --bundle DIR --state-dir DIR
                  --address SOCK [--runtime builtin|/usr/sbin/runc]
                  [--runtime-root DIR]

The process the daemon starts forks the real shim and exits as soon as the
shim's socket listens, printing `ok <shim pid> <address>` (or `error <msg>`).
The shim is in its own session, a child subreaper, with stdio on
<state-dir>/shim.log: killing the daemon (even SIGKILL) leaves it and the
container running. Startup is cheap: only standard modules the shim needs.
"""

from __future__ import annotations

import os
import sys

USAGE = ("usage: dockyard-shim --namespace NS --id ID --bundle DIR --state-dir DIR "
         "--address SOCK [--runtime builtin|PATH] [--runtime-root DIR]")
OPTIONS = ("namespace", "id", "bundle", "state-dir", "address", "runtime", "runtime-root")


def parse_args(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {"runtime": "builtin"}
    i = 0
    while i < len(argv):
        key = argv[i]
        if key in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        name, eq, value = key.removeprefix("--").partition("=")
        if not key.startswith("--") or name not in OPTIONS:
            raise SystemExit(f"dockyard-shim: unknown option {key!r}\n{USAGE}")
        if not eq:
            i += 1
            if i >= len(argv):
                raise SystemExit(f"dockyard-shim: {key} needs a value")
            value = argv[i]
        args[name] = value
        i += 1
    missing = [o for o in ("namespace", "id", "bundle", "state-dir", "address") if o not in args]
    if missing:
        raise SystemExit(f"dockyard-shim: missing --{', --'.join(missing)}\n{USAGE}")
    args.setdefault("runtime-root", os.path.join(args["state-dir"], "runtime"))
    return args


def _set_subreaper() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(ready_w)
        message = b""
        while chunk := os.read(ready_r, 4096):
            message += chunk
        text = message.decode(errors="replace").strip() or "error shim exited during startup"
        print(text, flush=True)
        return 0 if text.startswith("ok ") else 1
    os.close(ready_r)
    try:
        shim = _become_shim(args)
    except BaseException as exc:  # noqa: BLE001 - tell the launcher, then go
        os.write(ready_w, f"error {type(exc).__name__}: {exc}".encode())
        os._exit(1)
    os.write(ready_w, f"ok {os.getpid()} {args['address']}\n".encode())
    os.close(ready_w)
    # The worker forks only now, so it never holds the launcher's pipe open.
    shim.start_worker()
    code = 0
    try:
        shim.loop.run()
    except BaseException:  # noqa: BLE001 - log it; the shim must still exit cleanly
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
    return 0


def _become_shim(args: dict[str, str]):
    from dockyard.shim import server

    os.setsid()
    _set_subreaper()
    state_dir = os.path.abspath(args["state-dir"])
    os.makedirs(state_dir, mode=0o711, exist_ok=True)
    os.chdir(state_dir)
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(os.path.join(state_dir, "shim.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    shim = server.Shim(namespace=args["namespace"], container_id=args["id"],
                       bundle=os.path.abspath(args["bundle"]), state_dir=state_dir,
                       runtime=args["runtime"], runtime_root=os.path.abspath(args["runtime-root"]),
                       address=args["address"])
    shim.listen()
    shim.write_state()
    return shim


if __name__ == "__main__":
    sys.exit(main())
