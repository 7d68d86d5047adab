package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ingressHandle is the ingress qdisc's handle (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

type netlinkOps struct{}

func newNetlinkOps() netOps { return netlinkOps{} }

func (netlinkOps) in(path string, fn func(nsOps) error) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s", errNetNSGone, path)
	}
	err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn(nlNS{}) })
	var gone ns.NSPathNotExistErr
	if errors.As(err, &gone) {
		return fmt.Errorf("%w: %s", errNetNSGone, path)
	}
	return err
}

// nlNS acts in the namespace of the calling (locked) thread.
type nlNS struct{}

func toLink(l netlink.Link) link {
	a := l.Attrs()
	return link{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr.String(), MTU: a.MTU, Kind: l.Type()}
}

func (nlNS) Link(name string) (link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return link{}, fmt.Errorf("%s: %w", name, errLinkNotFound)
		}
		return link{}, err
	}
	return toLink(l), nil
}

func (o nlNS) CreateTAP(name string, mtu int) (link, error) {
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// No packet-info header (else the TAP shows `pi on` and VMMs misread frames);
		// one queue, persistent, so it outlives the fds used to create it.
		Flags:  netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE,
		Queues: 1,
	}
	err := netlink.LinkAdd(tap)
	// With Queues set netlink hands back the open queue fds: the device is persistent,
	// so close them, else the plugin process would hold the TAP busy until it exits.
	for _, f := range tap.Fds {
		f.Close()
	}
	if err != nil {
		return link{}, err
	}
	l, err := netlink.LinkByName(name)
	if err == nil && mtu > 0 {
		err = netlink.LinkSetMTU(l, mtu)
	}
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err == nil {
		l, err = netlink.LinkByName(name)
	}
	if err != nil {
		_ = o.DeleteLink(name)
		return link{}, err
	}
	return toLink(l), nil
}

func (nlNS) Redirect(from, to link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		// One key with mask 0 matches every frame.
		Sel:     &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}}},
		Actions: []netlink.Action{netlink.NewMirredAction(to.Index)},
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("u32 redirect filter on %s: %w", from.Name, err)
	}
	return nil
}

func (nlNS) Redirects(from, to link) (bool, error) {
	l, err := netlink.LinkByIndex(from.Index)
	if err != nil {
		return false, err
	}
	filters, err := netlink.FilterList(l, ingressHandle)
	if err != nil {
		return false, fmt.Errorf("filters on %s: %w", from.Name, err)
	}
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == to.Index {
				return true, nil
			}
		}
	}
	return false, nil
}

func (nlNS) ClearIngress(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}

func (nlNS) DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}
