package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultTAPName is the TAP device's name inside the VM's namespace. Each VM has its own
// namespace, so the name needs no uniqueness.
const DefaultTAPName = "tap0"

// netConf is this plugin's configuration in the conflist.
type netConf struct {
	types.PluginConf
	// TAPName names the TAP device (default tap0).
	TAPName string `json:"tapName,omitempty"`
}

func parseConf(stdin []byte) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if conf.TAPName == "" {
		conf.TAPName = DefaultTAPName
	}
	if err := validIfName(conf.TAPName); err != nil {
		return nil, fmt.Errorf("tapName: %w", err)
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("parse prevResult: %w", err)
		}
	}
	return conf, nil
}

func validIfName(n string) error {
	if n == "" || len(n) > 15 || strings.ContainsAny(n, "/ \t\n:") || n == "." || n == ".." {
		return fmt.Errorf("%q is not a valid interface name", n)
	}
	return nil
}

// link is what the plugin needs to know of a network device.
type link struct {
	Name  string
	Index int
	MAC   string
	MTU   int
	Kind  string // "tuntap", "veth", ...
}

// errLinkNotFound is returned by netOps when a device does not exist.
var errLinkNotFound = errors.New("link not found")

// errNetNSGone is returned by netOps.in when the namespace no longer exists.
var errNetNSGone = errors.New("network namespace does not exist")

// netOps is every privileged operation the plugin makes. The real one (netlink, Linux)
// acts inside the namespace that in entered; tests substitute a recorder.
type netOps interface {
	// in runs fn inside the network namespace at path.
	in(netnsPath string, fn func(nsOps) error) error
}

// nsOps are the device operations inside one namespace.
type nsOps interface {
	Link(name string) (link, error)
	// CreateTAP makes a persistent TAP device (no packet info header), sets its MTU and
	// brings it up; the creating file descriptors are closed.
	CreateTAP(name string, mtu int) (link, error)
	// Redirect sends every frame arriving on from out of to: an ingress qdisc on from
	// and a match-all u32 filter with a mirred egress redirect action.
	Redirect(from, to link) error
	// Redirects reports whether from's ingress redirects every frame to to.
	Redirects(from, to link) (bool, error)
	// ClearIngress removes from's ingress qdisc (and its filters); a missing qdisc or
	// device is success.
	ClearIngress(name string) error
	// DeleteLink removes a device; a missing one is success.
	DeleteLink(name string) error
}

type plugin struct {
	ops netOps
}

func (p *plugin) cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	res, err := p.add(args, conf)
	if err != nil {
		return err
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// add creates the TAP and the redirects and returns the shaped result. On error nothing
// it made is left behind.
func (p *plugin) add(args *skel.CmdArgs, conf *netConf) (*current.Result, error) {
	if conf.PrevResult == nil {
		return nil, fmt.Errorf("vulcan-cni-tap must be chained after a plugin that creates %s (no prevResult)", args.IfName)
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, fmt.Errorf("convert prevResult: %w", err)
	}
	var res *current.Result
	err = p.ops.in(args.Netns, func(o nsOps) (err error) {
		veth, err := o.Link(args.IfName)
		if err != nil {
			return fmt.Errorf("container interface %s: %w", args.IfName, err)
		}
		// Delete before create: an ADD after a failed DEL must not trip over leftovers.
		if err := o.DeleteLink(conf.TAPName); err != nil {
			return fmt.Errorf("remove stale %s: %w", conf.TAPName, err)
		}
		tap, err := o.CreateTAP(conf.TAPName, veth.MTU)
		if err != nil {
			return fmt.Errorf("create TAP %s: %w", conf.TAPName, err)
		}
		defer func() {
			if err != nil {
				_ = o.ClearIngress(veth.Name)
				_ = o.DeleteLink(tap.Name)
			}
		}()
		if err := o.Redirect(veth, tap); err != nil {
			return fmt.Errorf("redirect %s → %s: %w", veth.Name, tap.Name, err)
		}
		if err := o.Redirect(tap, veth); err != nil {
			return fmt.Errorf("redirect %s → %s: %w", tap.Name, veth.Name, err)
		}
		res, err = shapeResult(prev, args, veth, tap)
		return err
	})
	return res, err
}

// shapeResult is prev plus the TAP (sandbox: the netns path) and the VM's
// pseudo-interface (the TAP's name, sandbox: the container id, the veth's MAC); the IPs
// that belonged to the container's veth now belong to the pseudo-interface. This is the
// shape firecracker-go-sdk's cni/vmconf reads.
func shapeResult(prev *current.Result, args *skel.CmdArgs, veth, tap link) (*current.Result, error) {
	res := *prev // prev stays untouched: copy what changes
	res.Interfaces = append([]*current.Interface(nil), prev.Interfaces...)
	res.IPs = nil
	for _, ip := range prev.IPs {
		c := *ip
		res.IPs = append(res.IPs, &c)
	}
	vethIdx := -1
	for i, iface := range res.Interfaces {
		if iface.Name == args.IfName && iface.Sandbox == args.Netns {
			vethIdx = i
		}
	}
	if vethIdx < 0 {
		return nil, fmt.Errorf("prevResult has no interface %s in %s", args.IfName, args.Netns)
	}
	res.Interfaces = append(res.Interfaces,
		&current.Interface{Name: tap.Name, Mac: tap.MAC, Mtu: tap.MTU, Sandbox: args.Netns},
		&current.Interface{Name: tap.Name, Mac: veth.MAC, Mtu: veth.MTU, Sandbox: args.ContainerID},
	)
	vm := len(res.Interfaces) - 1
	moved := 0
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface == vethIdx {
			ip.Interface = current.Int(vm)
			moved++
		}
	}
	if moved == 0 {
		return nil, fmt.Errorf("prevResult has no IP on %s", args.IfName)
	}
	return &res, nil
}

// cmdDel removes the TAP and the veth's redirect. A namespace or device that is already
// gone is success, so DEL can be repeated.
func (p *plugin) cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return nil
	}
	err = p.ops.in(args.Netns, func(o nsOps) error {
		if err := o.ClearIngress(args.IfName); err != nil {
			return fmt.Errorf("clear %s ingress: %w", args.IfName, err)
		}
		if err := o.DeleteLink(conf.TAPName); err != nil {
			return fmt.Errorf("delete %s: %w", conf.TAPName, err)
		}
		return nil
	})
	if errors.Is(err, errNetNSGone) {
		return nil
	}
	return err
}

// cmdCheck verifies the TAP exists and both redirects are in place.
func (p *plugin) cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("CHECK needs prevResult")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	found := false
	for _, iface := range prev.Interfaces {
		if iface.Name == conf.TAPName && iface.Sandbox == args.Netns {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("prevResult lists no TAP %s in %s", conf.TAPName, args.Netns)
	}
	return p.ops.in(args.Netns, func(o nsOps) error {
		veth, err := o.Link(args.IfName)
		if err != nil {
			return fmt.Errorf("%s: %w", args.IfName, err)
		}
		tap, err := o.Link(conf.TAPName)
		if err != nil {
			return fmt.Errorf("%s: %w", conf.TAPName, err)
		}
		if tap.Kind != "tuntap" {
			return fmt.Errorf("%s is a %s device, not a TAP", tap.Name, tap.Kind)
		}
		for _, pair := range [][2]link{{veth, tap}, {tap, veth}} {
			ok, err := o.Redirects(pair[0], pair[1])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no redirect from %s to %s", pair[0].Name, pair[1].Name)
			}
		}
		return nil
	})
}

// cmdGC has nothing to collect: the TAP lives inside the VM's namespace and goes with it.
func (p *plugin) cmdGC(args *skel.CmdArgs) error {
	_, err := parseConf(args.StdinData)
	return err
}

// cmdStatus: the plugin is ready whenever it can run.
func (p *plugin) cmdStatus(args *skel.CmdArgs) error {
	_, err := parseConf(args.StdinData)
	return err
}
