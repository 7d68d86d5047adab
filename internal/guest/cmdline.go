package guest

import (
	"strings"
)

// KernelArgs are the vulcan.* kernel command line parameters (see doc.go).
type KernelArgs struct {
	Listen   string // vulcan.listen=
	Oneshot  bool   // vulcan.oneshot= (default true)
	Hostname string // vulcan.hostname= (default "vulcan")
}

// ParseCmdline reads the parameters the agent honours from a kernel
// command line (the contents of /proc/cmdline).
func ParseCmdline(cmdline string) KernelArgs {
	k := KernelArgs{Oneshot: true, Hostname: "vulcan"}
	for _, f := range strings.Fields(cmdline) {
		key, val, _ := strings.Cut(f, "=")
		switch key {
		case "vulcan.listen":
			k.Listen = val
		case "vulcan.oneshot":
			k.Oneshot = val != "0" && val != "false" && val != "no"
		case "vulcan.hostname":
			if val != "" {
				k.Hostname = val
			}
		}
	}
	return k
}
