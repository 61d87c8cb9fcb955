# Kernel concerns of the runtime, one module each: namespaces, rootfs
# (mounts, devices, pivot_root, masked/read-only paths), tty, capabilities,
# seccomp, rlimits, cgroups/ (v1 and v2 behind one CgroupManager), and
# cgwarm (starts the kernel's cgroup-attach grace period early).
