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

missing=()
for p in "${need[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
