# dockyard-containerd: a daemon speaking containerd 1.6's v1 gRPC API (ctr works unchanged).
#   main           command line, config, signals, pid file
#   server         grpc.aio server; registers services/<name>.register(server, context)
#   context        DaemonContext: stores, snapshotters, leases, events, tasks
#   metadata       namespaces + container records (SQLite)
#   exchange       events exchange (publish / subscribe with filters)
#   filters        containerd's filter syntax
#   grpcerrors     errdefs <-> gRPC status, namespace header
#   services/      one gRPC service per module (adapters only)
#   api/           generated stubs (proto/generate.py; never edit)
