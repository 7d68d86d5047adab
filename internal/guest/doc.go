// Package guest is vulcan-guest, the agent that runs as PID 1 in every
// Vulcan microVM, speaking internal/protocol to the host.
//
// # Sessions
//
// A session is one stream: the agent sends hello at once, then serves
// exec messages one at a time (output..., exit), honours cancel for the
// running exec and shutdown at any time. A session ends when the host
// closes the stream or sends a malformed frame; a running exec is then
// killed. With oneshot the agent powers off after the first exit has been
// sent. On vsock and unix sockets each connection is a session; a
// virtio-serial port is not connection-oriented, so the agent keeps it open
// and starts a new session (a new hello, written once the host reconnects)
// whenever the host side disconnects.
//
// # Sandbox sessions
//
// Hello announces Session. When the host answers with TypeSession instead of an
// exec, the connection becomes a yamux session (protocol/session.go, mux.go) and
// every stream one operation (session.go). It ends when the host goes away; the VM
// keeps running and the next connection can start another. Processes belong to the
// agent, not to the session: a new session lists and attaches to the last one's.
//
// Processes (process.go): argv, or a shell line with `/bin/bash -l -c` (`/bin/sh -c`
// without bash); env on top of PATH, HOME, USER, LOGNAME, LANG (and TERM on a PTY);
// cwd absolute or relative to the home; "user" (--uid/--gid, no supplementary
// groups, home Config.UserHome, /home/user, the uid's passwd home or --work-root) or
// "root"; their own process group (a PTY process its own session), which signals,
// the timeout and the end of the process kill as a whole. Output goes through the
// exec pumps (same lines, caps and no-loss drain) to every stream watching: the one
// that started it and up to 15 attached later, each from its attach on; Seq is per
// process. A stream that goes away is dropped and the process runs on. A PTY's
// output is stream "pty": each read as it arrives, split at newlines, the bytes
// after the last one Partial. process.stdin with CloseStdin on a PTY sends ^D.
//
// Files (files.go): paths absolute or relative to the requesting user's home. As
// "user" every system call runs on a throw-away OS thread with that user's
// fsuid/fsgid and no supplementary groups (fsuser_linux.go), so the kernel grants
// exactly what uid 1000 has, symlinks included; as root everything is allowed. A
// write goes to a temporary file beside the target, renamed over it.
//
// # Flags (cmd/vulcan-guest)
//
//	--listen vsock:PORT | serial:NAME | serial:/dev/PATH | unix:PATH
//	--oneshot           power off after the first workload (default: true as PID 1)
//	--uid, --gid        who runs user code when the agent is root (1000:1000)
//	--work-root         parent of the per-exec work dirs ($TMPDIR or /tmp)
//	--runtimes-file     runtime versions for hello (/etc/vulcan/runtimes.json)
//	--gocache           GOCACHE when writable by --uid (/var/cache/go-build)
//	--output-limit      default output cap in bytes (1 MiB)
//	-v, --version
//
// # Kernel arguments (read from /proc/cmdline when PID 1; flags win)
//
//	vulcan.listen=SPEC    as --listen. Default: vsock:1024 when /dev/vsock
//	                      exists (Firecracker), else serial:vulcan.agent (QEMU)
//	vulcan.oneshot=0|1    default 1
//	vulcan.hostname=NAME  default "vulcan"
//	ro                    the kernel mounts / read-only; the agent notices
//	                      (statfs) and stacks a tmpfs overlay on it
//
// # PID 1
//
// When / is read-only (the shared base image), a tmpfs is mounted on /tmp,
// an overlay (lower /, upper and work on that tmpfs) assembled in
// /tmp/merged, moved onto / and chrooted into, so everything, notably the
// prewarmed /var/cache/go-build and /home, is writable copy-on-write. Then
// /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /run and /tmp are
// mounted, the hostname set and lo brought up. Ctrl-Alt-Del becomes SIGINT
// and powers off. Every child, orphans included, is reaped by one SIGCHLD
// loop that also hands the workload's status to the agent (see proc.go).
// Power off kills everything, syncs, remounts / read-only and calls
// reboot(RESTART), which the VMMs (reboot=t, -no-reboot) turn into an exit.
// The image should make /var/cache/go-build writable by uid 1000.
//
// # Workloads
//
// Each exec gets a fresh work dir, owned by the workload's user and removed
// afterwards. Code is written to the entrypoint, or the archive extracted
// (see package archive for the refusal rules and limits). python runs
// `python3 ENTRY`, node `node ENTRY`; go builds the entrypoint's package
// (adding `module main` when there is no go.mod) with GOTOOLCHAIN=local,
// GOPROXY=off, GOFLAGS=-mod=mod, CGO_ENABLED=0, then runs the binary. The
// timeout covers the build. Environment: PATH (fixed, see defaultPath),
// HOME, LANG=C.UTF-8, TMPDIR, then Exec.Env on top. The program runs in its
// own process group as --uid/--gid with no supplementary groups; when it
// exits, times out or is cancelled the whole group is killed with SIGKILL,
// and output still held open by an escaped process is read for at most
// 200 ms more. Output is split into lines of at most 64 KiB (longer lines
// become chunks cut on UTF-8 boundaries) and numbered across both streams;
// past the limit it is discarded while the program keeps running, and
// Exit.Truncated is set. A signal death reports Code 128+signo and the
// signal's name ("killed").
package guest
