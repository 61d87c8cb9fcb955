# The OCI runtime (dockyard-runc), usable as a library by the shim.
#   spec        config.json -> frozen dataclasses, validated
#   specgen     a default config (Docker-like) for `dockyard-runc spec` and tests
#   state       the state directory, state.json, derived status
#   container   create/start/state/kill/delete/pause/resume/ps/events
#   exec        joining a running container with a new process
#   init        the forked container init and the exec'd process setup
#   hooks       OCI lifecycle hooks
#   linux/      one module per kernel concern (namespaces, rootfs, tty,
#               capabilities, seccomp, rlimits, cgroups/)
#   cli         the runc-compatible command line
