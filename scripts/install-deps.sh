#!/usr/bin/env bash
# Installs the Debian 12 packages Vulcan needs to build its guest images, boot VMs and run
# its tests, when they are missing. As root it installs them; otherwise it prints the
# command to run. The one list: .ci/run and the Makefile both call this script.
set -euo pipefail

need=(
  qemu-system-x86                                   # the QEMU VMM (microvm machine)
  mmdebstrap arch-test e2fsprogs ca-certificates    # rootfs images without loop mounts
  linux-source-6.1 flex bison bc libelf-dev libssl-dev dwarves xz-utils build-essential  # guest kernel
  iproute2 nftables util-linux                      # per-VM networking (ip, nft, nsenter)
  nodejs                                            # npm ci of the dashboard's xterm.js (make dashboard-vendor)
)
# Debian's npm is its own package; NodeSource's nodejs ships npm inside and conflicts with it.
command -v npm >/dev/null || need+=(npm)
if [ "${1:-}" = "--test" ]; then
  need+=(chromium                                   # browser tests of the dashboard
         python3)                                   # the agent's tests run the host's runtimes (and nodejs)
fi

# The cluster's tests start a real nats-server with JetStream: the release built from the
# Go module proxy (Debian's package is 2.9), into /usr/local/bin (or $NATS_GOBIN).
NATS_VERSION=v2.15.3
nats_server() {
  [ "${1:-}" = "--test" ] || return 0
  local bin="${NATS_GOBIN:-/usr/local/bin}"
  if "$bin/nats-server" --version 2>/dev/null | grep -q "${NATS_VERSION#v}"; then
    return 0
  fi
  if [ ! -w "$bin" ]; then
    echo "nats-server $NATS_VERSION missing: GOBIN=$bin go install github.com/nats-io/nats-server/v2@$NATS_VERSION" >&2
    return 1
  fi
  echo "building nats-server $NATS_VERSION"
  PATH=/usr/local/go/bin:$PATH GOBIN="$bin" go install "github.com/nats-io/nats-server/v2@$NATS_VERSION"
}

missing=()
for p in "${need[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  nats_server "${1:-}"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "missing packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
nats_server "${1:-}"
