#!/usr/bin/env bash
# Installs the official E2B SDK that internal/e2b's tests drive (pinned by
# internal/e2b/testdata/sdk/package-lock.json) with `npm ci` in a cache dir outside the
# tree, and prints that dir. Nothing third-party is committed. Re-runs are cheap: npm runs
# again only when the lock file changes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/internal/e2b/testdata/sdk
cache=${VULCAN_CACHE_DIR:-$HOME/.cache/vulcan}/e2b-sdk

if ! command -v npm >/dev/null; then
  echo "e2b-sdk: npm is missing (the E2B compatibility tests run the official SDK on node);" >&2
  echo "  install nodejs and npm: make deps (or apt-get install nodejs npm)" >&2
  exit 1
fi
mkdir -p "$cache"
want=$(sha256sum "$src/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$cache/.lock-sha256" 2>/dev/null)" != "$want" ] || [ ! -f "$cache/node_modules/e2b/package.json" ]; then
  cp "$src/package.json" "$src/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error) >&2
  echo "$want" >"$cache/.lock-sha256"
fi
echo "$cache"
