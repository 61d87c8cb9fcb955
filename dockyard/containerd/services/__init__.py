# gRPC adapters of dockyard-containerd, one module per containerd service; each exposes
# register(server, context). They convert protobuf <-> domain types and let
# grpcerrors.rpc map errdefs errors; the work happens in context's stores.
#   version namespaces containers leases events introspection health   (core)
#   content images snapshots diff transfer                              (images)
#   tasks                                                               (tasks)
