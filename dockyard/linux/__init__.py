# Thin layer over the kernel: ctypes bindings for the syscalls Python's os
# module lacks (mount, pivot_root, unshare, setns, prctl, capset, ...),
# mount-table helpers. No policy lives here.
