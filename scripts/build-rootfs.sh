#!/usr/bin/env bash
# The rootfs builder lives beside the Go code that embeds it (template builds run it for
# their `# vulcan:apt` stage): see internal/images/build-rootfs.sh.
exec bash "$(dirname "$0")/../internal/images/build-rootfs.sh" "$@"
