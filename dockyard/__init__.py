# dockyard: a Docker-compatible container platform.
#   linux/    thin syscall layer (ctypes), mount and netlink helpers
#   runtime/  the OCI runtime (dockyard-runc), usable as a library
#   image/    image formats, references, content store, snapshots, layers,
#             distribution client, archives
#   errdefs   the error kinds shared by every package
__version__ = "0.1.0"
