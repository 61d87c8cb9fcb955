# dockyard-shim: one per container, parent of its processes, owner of stdio.
#   main     command line, detaching (setsid, subreaper), the ready handshake
#   server   the event loop, JSON-lines RPC, process table, exit records
#   stdio    FIFOs, pipes, pty copying and the log sinks (file, json-file)
#   worker   the runtime worker: a forked child that runs the OCI runtime
#            (built-in in-process, or an external binary such as runc)
#   client   what dockyard-containerd uses: launch a shim, call it (sync/async)
# The shim imports only the standard library modules it needs, never grpc,
# and never the runtime itself (the worker does) to stay small.
