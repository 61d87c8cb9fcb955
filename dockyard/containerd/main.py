"""dockyard-containerd: the containerd-compatible daemon's command line.

    dockyard-containerd [--config FILE] [--address SOCK] [--root DIR] [--state DIR]
                        [--log-level L]

A TOML config may set `root`, `state`, `[grpc] address` and `[debug] level`, as
containerd's config.toml does; flags win over the file. Ready means the socket is
bound and answers (clients poll Version). SIGTERM/SIGINT stop the daemon in order;
task shims keep running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from dockyard import errdefs

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dockyard-containerd",
                                description="containerd-compatible runtime daemon")
    p.add_argument("-c", "--config", help="TOML config file")
    p.add_argument("-a", "--address", help="gRPC unix socket (default <state>/containerd.sock)")
    p.add_argument("--root", help="persistent state directory")
    p.add_argument("--state", help="runtime state directory")
    p.add_argument("-l", "--log-level", choices=LOG_LEVELS, help="log level (default info)")
    return p.parse_args(argv)


def load_config(path: str | None) -> dict:
    if not path:
        return {}
    import tomllib  # only with --config: keeps start-up lean

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise errdefs.NotFound(f"config file {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise errdefs.InvalidArgument(f"config file {path}: {exc}") from exc


def _level(name: str) -> int:
    return {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
            "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
            "fatal": logging.CRITICAL, "panic": logging.CRITICAL}[name]


def write_pidfile(state: Path) -> Path:
    path = state / "containerd.pid"
    tmp = path.with_name(f".containerd.pid.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


async def _serve(root: str, state: str, address: str | None) -> None:
    from dockyard.containerd.context import DaemonContext
    from dockyard.containerd.server import Daemon

    context = DaemonContext.create(root, state, address)
    daemon = Daemon(context)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    pidfile = write_pidfile(context.state)
    try:
        await daemon.run()
    finally:
        try:
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except errdefs.DockyardError as exc:
        print(f"dockyard-containerd: {exc}", file=sys.stderr)
        return 1
    from dockyard.containerd.context import DEFAULT_ROOT, DEFAULT_STATE

    level = args.log_level or config.get("debug", {}).get("level") or "info"
    logging.basicConfig(
        level=_level(level) if level in LOG_LEVELS else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if level != "trace":
        # grpc's own debug lines (one per RPC) drown ours; trace shows them
        logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    root = args.root or config.get("root") or DEFAULT_ROOT
    state = args.state or config.get("state") or DEFAULT_STATE
    address = args.address or config.get("grpc", {}).get("address")
    try:
        asyncio.run(_serve(root, state, address))
    except errdefs.DockyardError as exc:
        logging.getLogger("dockyard.containerd").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
