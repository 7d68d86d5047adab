package cluster

import (
	"slices"
	"testing"
	"time"
)

func TestPlaceOrder(t *testing.T) {
	now := time.Now()
	n := &Node{cfg: Config{NodeID: "self", NodeTTL: 5 * time.Second}, nodes: map[string]*seenNode{}}
	add := func(id string, seen time.Time, c Capacity) {
		c.CanSandbox, c.MaxSandboxes, c.CPUFree = true, 10, 8
		if c.Templates == nil {
			c.Templates = []string{"python", "node"}
		}
		n.nodes[id] = &seenNode{info: NodeInfo{ID: id, Capacity: c}, at: seen}
	}
	add("roomy", now, Capacity{MemFreeMB: 8000})
	add("warm", now, Capacity{MemFreeMB: 4000, Warm: []string{"python"}})
	add("cold", now, Capacity{MemFreeMB: 4000, Sandboxes: 1})
	add("cold-busier", now, Capacity{MemFreeMB: 4000, Sandboxes: 3})
	add("b-tie", now, Capacity{MemFreeMB: 2000})
	add("a-tie", now, Capacity{MemFreeMB: 2000})
	add("no-python", now, Capacity{MemFreeMB: 9000, Templates: []string{"node"}})
	add("lapsed", now.Add(-6*time.Second), Capacity{MemFreeMB: 9999})
	add("full", now, Capacity{MemFreeMB: 9000, Sandboxes: 10})
	add("small", now, Capacity{MemFreeMB: 100})
	n.nodes["no-vms"] = &seenNode{info: NodeInfo{ID: "no-vms", Capacity: Capacity{MemFreeMB: 9999, Templates: []string{"python"}}}, at: now}

	ids := func(infos []NodeInfo) []string {
		var out []string
		for _, i := range infos {
			out = append(out, i.ID)
		}
		return out
	}
	got := ids(n.Place(Need{Template: "python", MemMB: 256, CPUs: 1}))
	want := []string{"roomy", "warm", "cold", "cold-busier", "a-tie", "b-tie"}
	if !slices.Equal(got, want) {
		t.Fatalf("python placement %v, want %v", got, want)
	}
	if got := ids(n.Place(Need{Template: "node", MemMB: 8500})); !slices.Equal(got, []string{"no-python"}) {
		t.Fatalf("8.5 GB node placement %v, want only no-python", got)
	}
	if got := n.Place(Need{Template: "python", MemMB: 20000}); len(got) != 0 {
		t.Fatalf("placed a sandbox no node has room for: %v", ids(got))
	}
	if !n.AnyHas("node") || n.AnyHas("go") || !n.AnyCanSandbox() {
		t.Fatal("AnyHas / AnyCanSandbox")
	}
}
