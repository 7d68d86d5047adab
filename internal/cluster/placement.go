package cluster

import (
	"slices"
	"strings"
)

// Need is what a new sandbox asks of its node.
type Need struct {
	Template string
	MemMB    int
	CPUs     int
}

// Place orders the live nodes that can take a sandbox, best first: the most free memory
// among those that have its template, ties broken by a warm pool or snapshot of it, then
// by the fewest sandboxes, then by id. Empty: no capacity anywhere.
func (n *Node) Place(need Need) []NodeInfo {
	var fit []NodeInfo
	for _, info := range n.Nodes() {
		c := info.Capacity
		if !info.Alive || !c.CanSandbox || c.Sandboxes >= c.MaxSandboxes || c.MemFreeMB < need.MemMB || c.CPUFree < need.CPUs {
			continue
		}
		if need.Template != "" && !slices.Contains(c.Templates, need.Template) {
			continue
		}
		fit = append(fit, info)
	}
	slices.SortStableFunc(fit, func(a, b NodeInfo) int {
		if a.MemFreeMB != b.MemFreeMB {
			return b.MemFreeMB - a.MemFreeMB
		}
		aw, bw := slices.Contains(a.Warm, need.Template), slices.Contains(b.Warm, need.Template)
		if aw != bw {
			if aw {
				return -1
			}
			return 1
		}
		if a.Sandboxes != b.Sandboxes {
			return a.Sandboxes - b.Sandboxes
		}
		return strings.Compare(a.ID, b.ID)
	})
	return fit
}

// AnyHas reports whether some live node has the template.
func (n *Node) AnyHas(template string) bool {
	for _, info := range n.Nodes() {
		if info.Alive && slices.Contains(info.Templates, template) {
			return true
		}
	}
	return false
}

// AnyCanSandbox reports whether some live node can boot sandboxes at all.
func (n *Node) AnyCanSandbox() bool {
	for _, info := range n.Nodes() {
		if info.Alive && info.CanSandbox {
			return true
		}
	}
	return false
}

// ResumeTarget picks the node where a paused sandbox whose node is gone should resume:
// this one when it has the sandbox's template, else the live node with the template and
// the most room (or, none having room, any live node with it). When no live node
// announces the template this node is as good as any (and says why if it cannot).
func (n *Node) ResumeTarget(id string) NodeInfo {
	self := NodeInfo{ID: n.cfg.NodeID, URL: n.cfg.Advertise, Alive: true, Self: true}
	n.mu.Lock()
	c, ok := n.records[sandboxKey(id)]
	n.mu.Unlock()
	if !ok || c.rec.SandboxSpec == nil || c.rec.SandboxSpec.Template == "" {
		return self
	}
	spec := c.rec.SandboxSpec
	template := string(spec.Template)
	fits := n.Place(Need{Template: template, MemMB: spec.Resources.MemMB, CPUs: spec.Resources.CPUs})
	for _, f := range fits {
		if f.Self {
			return f
		}
	}
	if len(fits) > 0 {
		return fits[0]
	}
	var with []NodeInfo
	for _, info := range n.Nodes() {
		if info.Alive && info.CanSandbox && slices.Contains(info.Templates, template) {
			if info.Self {
				return info
			}
			with = append(with, info)
		}
	}
	if len(with) > 0 {
		return with[0]
	}
	return self
}
