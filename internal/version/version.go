// Package version carries the build's version, set by the linker from git.
package version

// Version is overwritten at link time with -X (see the Makefile).
var Version = "dev"
