// Package cell confines a VMM process, after Firecracker's jailer model, for QEMU as well.
// A guest that escapes into its VMM should land in a cell, not on the host:
//
//   - an unprivileged uid/gid of its own (UIDBase + the VM's CID), no capabilities (the
//     bounding set is dropped too), no_new_privs;
//   - its own mount namespace whose root is an empty read-only tmpfs holding only what the
//     VMM needs, at the host paths its command line names: /usr (the binary and its
//     libraries), the kernel and rootfs (read-only), the VM's state dir (read-only: the
//     agent socket is its own), its scratch disk (read-write), and /dev/null, /dev/urandom,
//     /dev/net/tun and /dev/kvm only when used;
//   - the VM's cgroup (memory, CPU quota, pids, io weight where the controller exists);
//   - for a network, its netns; the TAP is opened as root before the privilege drop and
//     passed to the VMM as fd 3, since an unprivileged process cannot attach a root-owned
//     TAP by name.
//
// Go cannot pivot_root between fork and exec, so the setup is a re-exec: the backend starts
// /proc/self/exe (the vulcan binary, or a test binary: any binary that links this package)
// with the cell's spec in the environment; this package's init sees it, builds the cell on
// its locked main thread and execs the VMM (same pid, so the pid file, the process group
// and the startup reclaim keep working). It never returns to the program's main.
//
// Seccomp is the VMM's own: QEMU's -sandbox, Firecracker's built-in filters.
package cell
