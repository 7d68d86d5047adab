#!/usr/bin/env bash
# Installs the dashboard's third-party browser code (xterm.js and its fit addon, pinned by
# internal/dashboard/package-lock.json) with `npm ci` in a cache dir outside the tree, and
# copies the few dist files the page loads into internal/dashboard/static/assets/vendor/
# (gitignored; go:embed picks them up). Nothing third-party is ever committed. Re-runs are
# cheap: npm runs again only when the lock file changes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/internal/dashboard
out=$src/static/assets/vendor
cache=${VULCAN_CACHE_DIR:-$HOME/.cache/vulcan}/dashboard-npm

if ! command -v npm >/dev/null; then
  echo "dashboard-vendor: npm is missing (the dashboard's terminal needs xterm.js from npm);" >&2
  echo "  install nodejs and npm: make deps (or apt-get install nodejs npm)" >&2
  exit 1
fi

mkdir -p "$cache"
want=$(sha256sum "$src/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$cache/.lock-sha256" 2>/dev/null)" != "$want" ] || [ ! -d "$cache/node_modules/@xterm/xterm" ]; then
  cp "$src/package.json" "$src/package-lock.json" "$cache/"
  # --prefer-offline: npm's own cache serves a re-install without the network.
  (cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error)
  echo "$want" >"$cache/.lock-sha256"
fi

nm=$cache/node_modules/@xterm
tmp=$(mktemp -d "$cache/out.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The source-map comments are dropped: the maps are not embedded, and a browser asking
# for one would log a 404.
strip() { sed '/^\/\/# sourceMappingURL=/d' "$1" >"$2"; }
strip "$nm/xterm/lib/xterm.mjs" "$tmp/xterm.mjs"
strip "$nm/addon-fit/lib/addon-fit.mjs" "$tmp/addon-fit.mjs"
cp "$nm/xterm/css/xterm.css" "$tmp/xterm.css"
# MIT: the notices travel with the copies (the dashboard links them).
cp "$nm/xterm/LICENSE" "$tmp/xterm.LICENSE.txt"
cp "$nm/addon-fit/LICENSE" "$tmp/addon-fit.LICENSE.txt"
mkdir -p "$out"
for f in "$tmp"/*; do
  cmp -s "$f" "$out/$(basename "$f")" || cp "$f" "$out/"
done
echo "dashboard-vendor: xterm $(node -p "require('$nm/xterm/package.json').version" 2>/dev/null || echo '?') in ${out#"$root"/}"
