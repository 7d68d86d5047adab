#!/usr/bin/env bash
# Builds a runtime's root filesystem image with no loop mount: mmdebstrap (Debian bookworm,
# essential packages + the runtime, merged /usr, no docs) → a tree with the static agent at
# /usr/local/bin/vulcan-guest → ext4 with `mkfs.ext4 -d`. Writes IMAGES_DIR/rootfs-RUNTIME.ext4
# and its manifest IMAGES_DIR/rootfs-RUNTIME.json.
#
# The Debian tree is cached under $VULCAN_CACHE_DIR/rootfs/<key> (key = SHA-256 of this
# script, the runtime and the suite), so a new agent only costs the agent copy and mkfs.
#
# A template build's apt stage runs it with VULCAN_ROOTFS_EXTRA (more Debian packages,
# comma-separated, part of the cache key) and VULCAN_ROOTFS_NAME (the output's name in
# place of the runtime's).
#
# usage: scripts/build-rootfs.sh python|node|go|base AGENT_BINARY IMAGES_DIR
set -euo pipefail

runtime=${1:?usage: build-rootfs.sh RUNTIME AGENT IMAGES_DIR}
agent=${2:?usage: build-rootfs.sh RUNTIME AGENT IMAGES_DIR}
images_dir=${3:?usage: build-rootfs.sh RUNTIME AGENT IMAGES_DIR}
cache=${VULCAN_CACHE_DIR:-$( [ "$(id -u)" = 0 ] && echo /var/cache/vulcan || echo "$HOME/.cache/vulcan")}
suite=bookworm
mirror=${VULCAN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${VULCAN_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
# The Go toolchain comes from the Go module proxy as a module (no other download).
go_toolchain=${VULCAN_GO_TOOLCHAIN:-go1.26.8}

case "$runtime" in
  python) packages=python3 ;;
  node)   packages=nodejs ;;
  go)     packages=ca-certificates ;;
  # The sandbox template E2B users expect: a shell with the usual tools, python3 (also as
  # python), nodejs + npm, git, curl, sudo without a password for user, tput.
  base)   packages=bash,coreutils,python3,python-is-python3,nodejs,npm,git,curl,ca-certificates,sudo,ncurses-bin,procps,less ;;
  # The code interpreter: Python's data stack from Debian, node for JavaScript contexts,
  # and Vulcan's interpreter service (images/code-interpreter, copied in below).
  code-interpreter) packages=bash,python3,python-is-python3,python3-numpy,python3-pandas,python3-matplotlib,nodejs,procps ;;
  *) echo "build-rootfs: unknown runtime '$runtime' (want python, node, go, base or code-interpreter)" >&2; exit 2 ;;
esac
extra_packages=${VULCAN_ROOTFS_EXTRA:-}
name=${VULCAN_ROOTFS_NAME:-$runtime}
case "$extra_packages" in *[!a-z0-9+.,-]*) echo "build-rootfs: bad VULCAN_ROOTFS_EXTRA '$extra_packages'" >&2; exit 2 ;; esac
case "$name" in *[!a-z0-9_-]*|"") echo "build-rootfs: bad VULCAN_ROOTFS_NAME '$name'" >&2; exit 2 ;; esac
[ -n "$extra_packages" ] && packages="$packages,$extra_packages"
[ -x "$agent" ] || { echo "build-rootfs: agent binary $agent missing; run: make build" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "build-rootfs: mmdebstrap missing; run: apt-get install mmdebstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-rootfs: must run as root (mmdebstrap root mode, file ownership)" >&2; exit 1; }

extra=""
[ "$runtime" = go ] && extra=$go_toolchain
key=$( { sha256sum "$0" | cut -d' ' -f1; echo "$runtime $suite $mirror $extra"; [ -z "$extra_packages" ] || echo "extra $extra_packages"; } | sha256sum | cut -c1-16)
base=$cache/rootfs/$runtime-$key
mkdir -p "$cache/rootfs" "$images_dir"
exec 9>"$cache/rootfs/.lock-$runtime"
flock 9

if [ ! -f "$base/.complete" ]; then
  start=$(date +%s)
  rm -rf "$base"
  tree=$base/tree
  mkdir -p "$base"
  gohooks=()
  if [ "$runtime" = go ]; then
    # The toolchain module's zip unpacks to a GOROOT (module zips carry no exec bits: restore
    # them); copy it in without docs and tests.
    gomod=$(mktemp -d)
    goroot=$(cd "$gomod" && GOFLAGS=-modcacherw GOMODCACHE="$cache/gomodcache" go mod download -json "golang.org/toolchain@v0.0.1-$go_toolchain.linux-amd64" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    rm -rf "$gomod"
    [ -f "$goroot/bin/go" ] || { echo "build-rootfs: Go toolchain $go_toolchain not found in the module proxy" >&2; exit 1; }
    gohooks=(
      --customize-hook="mkdir -p \"\$1/usr/local/go\" && cp -a $goroot/. \"\$1/usr/local/go/\" && rm -rf \"\$1\"/usr/local/go/{test,doc,api,misc,lib/wasm} && find \"\$1/usr/local/go/src\" -type d -name testdata -prune -exec rm -rf {} + && chmod -R u+w,a+rX \"\$1/usr/local/go\" && chmod 0755 \"\$1\"/usr/local/go/bin/* \"\$1\"/usr/local/go/pkg/tool/linux_amd64/*"
      # Prewarm the build cache the way the agent builds (same GOROOT, GOCACHE, flags), so a
      # hello world does not compile the standard library inside the VM.
      --customize-hook="mkdir -p \"\$1/tmp/warm\" && printf 'module main\n\ngo 1.26\n' > \"\$1/tmp/warm/go.mod\" && printf 'package main\n\nimport (\n\t\"bufio\"\n\t\"encoding/json\"\n\t\"fmt\"\n\t\"io\"\n\t\"math\"\n\t\"net/http\"\n\t\"os\"\n\t\"sort\"\n\t\"strconv\"\n\t\"strings\"\n\t\"sync\"\n\t\"time\"\n)\n\nvar _ = []any{bufio.NewReader, json.Marshal, io.Copy, math.Pi, http.Get, sort.Ints, strconv.Itoa, strings.Fields, sync.Mutex{}, time.Now}\n\nfunc main() { fmt.Println(os.Args) }\n' > \"\$1/tmp/warm/main.go\" && chroot \"\$1\" env -i PATH=/usr/local/go/bin:/usr/bin:/bin HOME=/root GOROOT=/usr/local/go GOCACHE=/var/cache/go-build GOPATH=/tmp/gopath GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod CGO_ENABLED=0 sh -c 'cd /tmp/warm && go build -o /tmp/warm/hello . && /tmp/warm/hello' && rm -rf \"\$1/tmp/warm\" \"\$1/tmp/gopath\" && chown -R 1000:1000 \"\$1/var/cache/go-build\""
      --customize-hook="ln -sf /usr/local/go/bin/go \"\$1/usr/local/bin/go\" && ln -sf /usr/local/go/bin/gofmt \"\$1/usr/local/bin/gofmt\""
    )
  fi
  aptopts=()
  # The data stack's Recommends (scipy, sympy, LLVM...) would triple the image.
  [ "$runtime" = code-interpreter ] && aptopts=(--aptopt='Apt::Install-Recommends "false"')
  basehooks=()
  if [ "$runtime" = base ]; then
    basehooks=(
      --customize-hook='printf "user ALL=(ALL:ALL) NOPASSWD: ALL\n" > "$1/etc/sudoers.d/user" && chmod 0440 "$1/etc/sudoers.d/user"'
    )
  fi
  echo "build-rootfs: mmdebstrap $runtime (key $key)"
  mmdebstrap --mode=root --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='echo "user:x:1000:1000:user:/home/user:/bin/bash" >> "$1/etc/passwd"' \
    --customize-hook='echo "user:x:1000:" >> "$1/etc/group"' \
    --customize-hook='echo "user:!:19000:0:99999:7:::" >> "$1/etc/shadow" && chmod 0640 "$1/etc/shadow"' \
    --customize-hook='mkdir -p "$1/home/user" "$1/etc/vulcan" && chown 1000:1000 "$1/home/user" && chmod 0750 "$1/home/user"' \
    --customize-hook='echo vulcan > "$1/etc/hostname"; printf "127.0.0.1 localhost vulcan\n::1 localhost\n" > "$1/etc/hosts"; : > "$1/etc/resolv.conf"' \
    "${gohooks[@]}" \
    "${basehooks[@]}" \
    "${aptopts[@]}" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/usr/share/doc/*/changelog*' \
    "$suite" "$tree" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main"

  case "$runtime" in
    python) version=$(chroot "$tree" python3 -c 'import platform; print(platform.python_version())') ;;
    node)   version=$(chroot "$tree" node --version | sed 's/^v//') ;;
    go)     version=$(head -n1 "$tree/usr/local/go/VERSION" | sed "s/^go//") ;;
    base)   version=debian-$(cut -d. -f1 "$tree/etc/debian_version") ;;
    code-interpreter) version=$(chroot "$tree" python3 -c 'import platform; print(platform.python_version())') ;;
  esac
  printf '{"%s":"%s"}\n' "$runtime" "$version" > "$tree/etc/vulcan/runtimes.json"
  echo "$(( $(date +%s) - start ))" > "$base/build_seconds"
  touch "$base/.complete"
fi

# Every build from here on is cheap: agent in, manifest in, mkfs.
start=$(date +%s)
tree=$base/tree
install -m 0755 "$agent" "$tree/usr/local/bin/vulcan-guest"
if [ "$runtime" = code-interpreter ]; then
  src=$(cd "$(dirname "$0")/../../images/code-interpreter" && pwd)
  install -d -m 0755 "$tree/usr/local/lib/vulcan-interpreter"
  install -m 0644 "$src/server.py" "$src/worker.py" "$src/worker.js" "$tree/usr/local/lib/vulcan-interpreter/"
  # matplotlib's font cache, built once here rather than in every sandbox's first plot.
  chroot "$tree" env -i HOME=/home/user MPLCONFIGDIR=/etc/matplotlib-cache MPLBACKEND=Agg python3 -c 'import matplotlib.pyplot as p; p.figure(); p.close("all")' >/dev/null 2>&1 || true
  chown -R 1000:1000 "$tree/etc/matplotlib-cache" 2>/dev/null || true
fi
agent_sha=$(sha256sum "$agent" | cut -d' ' -f1)
agent_version=$("$agent" --version 2>/dev/null | head -n1 || true)
runtime_version=$(sed -n 's/.*"[a-z-]*":"\([^"]*\)".*/\1/p' "$tree/etc/vulcan/runtimes.json")
printf '{"runtime":"%s","runtime_version":"%s","agent_version":"%s","agent_sha256":"%s","suite":"%s","key":"%s"}\n' \
  "$runtime" "$runtime_version" "$agent_version" "$agent_sha" "$suite" "$key" > "$tree/etc/vulcan/image.json"

used_kb=$(du -sk "$tree" | cut -f1)
# Room for the ext4 metadata plus a little: the image is attached read-only, writes go to
# the agent's overlay, so no free space is needed beyond that.
size_mb=$(( used_kb * 115 / 100 / 1024 + 32 ))
out=$images_dir/rootfs-$name.ext4
tmp=$(mktemp "$images_dir/.rootfs-$name.XXXXXX")
mkfs.ext4 -q -F -d "$tree" -L "vulcan-${name:0:9}" -O ^has_journal -m 0 -E root_owner=0:0 "$tmp" "${size_mb}M"
image_sha=$(sha256sum "$tmp" | cut -d' ' -f1)
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
printf '{"kind":"rootfs","runtime":"%s","runtime_version":"%s","agent_version":"%s","agent_sha256":"%s","suite":"%s","key":"%s","size_bytes":%s,"used_bytes":%s,"sha256":"%s","debian_build_seconds":%s,"image_build_seconds":%s,"built_at":"%s"}\n' \
  "$runtime" "$runtime_version" "$agent_version" "$agent_sha" "$suite" "$key" "$(stat -c %s "$out")" "$((used_kb * 1024))" \
  "$image_sha" "$(cat "$base/build_seconds")" "$(( $(date +%s) - start ))" "$(date -u +%FT%TZ)" > "$images_dir/rootfs-$name.json.tmp"
mv -f "$images_dir/rootfs-$name.json.tmp" "$images_dir/rootfs-$name.json"
echo "build-rootfs: $out ($(( $(stat -c %s "$out") / 1024 / 1024 )) MiB, $runtime $runtime_version)"
