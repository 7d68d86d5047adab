package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// fakeOps records what the plugin asks for, in one namespace with the devices in links.
type fakeOps struct {
	netns  string
	links  map[string]link
	calls  []string
	failOn string // a call name that fails
	redirs map[[2]string]bool
}

func newFake() *fakeOps {
	return &fakeOps{netns: "/run/netns/vulcan-wl1", links: map[string]link{
		"eth0": {Name: "eth0", Index: 2, MAC: "02:00:00:00:00:05", MTU: 1500, Kind: "veth"},
	}, redirs: map[[2]string]bool{}}
}

func (f *fakeOps) in(path string, fn func(nsOps) error) error {
	if path != f.netns {
		return fmt.Errorf("%w: %s", errNetNSGone, path)
	}
	return fn(f)
}

func (f *fakeOps) call(c string) error {
	f.calls = append(f.calls, c)
	if f.failOn != "" && strings.HasPrefix(c, f.failOn) {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeOps) Link(name string) (link, error) {
	l, ok := f.links[name]
	if !ok {
		return link{}, errLinkNotFound
	}
	return l, nil
}

func (f *fakeOps) CreateTAP(name string, mtu int) (link, error) {
	if err := f.call(fmt.Sprintf("create %s mtu %d", name, mtu)); err != nil {
		return link{}, err
	}
	l := link{Name: name, Index: 3, MAC: "cc:cc:cc:cc:cc:cc", MTU: mtu, Kind: "tuntap"}
	f.links[name] = l
	return l, nil
}

func (f *fakeOps) Redirect(from, to link) error {
	if err := f.call("redirect " + from.Name + " " + to.Name); err != nil {
		return err
	}
	f.redirs[[2]string{from.Name, to.Name}] = true
	return nil
}

func (f *fakeOps) Redirects(from, to link) (bool, error) {
	return f.redirs[[2]string{from.Name, to.Name}], nil
}

func (f *fakeOps) ClearIngress(name string) error {
	for k := range f.redirs {
		if k[0] == name {
			delete(f.redirs, k)
		}
	}
	return f.call("clear " + name)
}

func (f *fakeOps) DeleteLink(name string) error {
	delete(f.links, name)
	for k := range f.redirs {
		if k[0] == name {
			delete(f.redirs, k)
		}
	}
	return f.call("delete " + name)
}

// bridgeResult is what the bridge plugin hands on: bridge, host veth, container veth.
const bridgeResult = `{"cniVersion":"1.1.0",
 "interfaces":[{"name":"vulcan0","mac":"aa:aa:aa:aa:aa:aa"},{"name":"veth0a1b2c3d","mac":"bb:bb:bb:bb:bb:bb"},
  {"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/run/netns/vulcan-wl1"}],
 "ips":[{"interface":2,"address":"10.213.0.5/24","gateway":"10.213.0.1"}],
 "routes":[{"dst":"0.0.0.0/0","gw":"10.213.0.1"}]}`

func args(prev string) *skel.CmdArgs {
	conf := `{"cniVersion":"1.1.0","name":"vulcan","type":"vulcan-cni-tap"`
	if prev != "" {
		conf += `,"prevResult":` + prev
	}
	return &skel.CmdArgs{ContainerID: "wl1", Netns: "/run/netns/vulcan-wl1", IfName: "eth0", StdinData: []byte(conf + "}")}
}

func TestAddShapesResultLikeTCRedirectTap(t *testing.T) {
	f := newFake()
	p := &plugin{ops: f}
	a := args(bridgeResult)
	conf, err := parseConf(a.StdinData)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.add(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(f.calls, "; "), "delete tap0; create tap0 mtu 1500; redirect eth0 tap0; redirect tap0 eth0"; got != want {
		t.Errorf("calls %q, want %q", got, want)
	}
	b, _ := json.Marshal(res)
	want := `{"cniVersion":"1.1.0","interfaces":[{"mac":"aa:aa:aa:aa:aa:aa","name":"vulcan0"},{"mac":"bb:bb:bb:bb:bb:bb","name":"veth0a1b2c3d"},` +
		`{"mac":"02:00:00:00:00:05","name":"eth0","sandbox":"/run/netns/vulcan-wl1"},` +
		`{"mac":"cc:cc:cc:cc:cc:cc","mtu":1500,"name":"tap0","sandbox":"/run/netns/vulcan-wl1"},` +
		`{"mac":"02:00:00:00:00:05","mtu":1500,"name":"tap0","sandbox":"wl1"}],` +
		`"ips":[{"address":"10.213.0.5/24","gateway":"10.213.0.1","interface":4}],"routes":[{"dst":"0.0.0.0/0","gw":"10.213.0.1"}]}`
	if string(b) != want {
		t.Errorf("result\n%s\nwant\n%s", b, want)
	}
	// prevResult itself is left alone.
	if ip := conf.PrevResult.(*current.Result).IPs[0]; *ip.Interface != 2 {
		t.Errorf("prevResult modified: interface %d", *ip.Interface)
	}
	// CHECK passes on what ADD made, with ADD's result as prevResult.
	if err := p.cmdCheck(args(string(b))); err != nil {
		t.Errorf("check: %v", err)
	}
	f.redirs = map[[2]string]bool{{"eth0", "tap0"}: true}
	if err := p.cmdCheck(args(string(b))); err == nil || !strings.Contains(err.Error(), "no redirect from tap0 to eth0") {
		t.Errorf("check with a redirect missing: %v", err)
	}
}

func TestAddFailureLeavesNothing(t *testing.T) {
	for _, fail := range []string{"redirect eth0", "redirect tap0"} {
		f := newFake()
		f.failOn = fail
		p := &plugin{ops: f}
		a := args(bridgeResult)
		conf, _ := parseConf(a.StdinData)
		if _, err := p.add(a, conf); err == nil {
			t.Fatalf("%s: add succeeded", fail)
		}
		if _, ok := f.links["tap0"]; ok || len(f.redirs) != 0 {
			t.Errorf("%s: left tap %v redirects %v (calls %v)", fail, f.links, f.redirs, f.calls)
		}
	}
}

func TestAddNeedsChaining(t *testing.T) {
	p := &plugin{ops: newFake()}
	a := args("")
	conf, _ := parseConf(a.StdinData)
	if _, err := p.add(a, conf); err == nil || !strings.Contains(err.Error(), "chained") {
		t.Errorf("add without prevResult: %v", err)
	}
	// A result whose IP is not on the container interface cannot be shaped.
	a = args(strings.Replace(bridgeResult, `"interface":2`, `"interface":1`, 1))
	conf, _ = parseConf(a.StdinData)
	if _, err := p.add(a, conf); err == nil {
		t.Error("shaped a result with no IP on eth0")
	}
}

func TestDelIsIdempotent(t *testing.T) {
	f := newFake()
	p := &plugin{ops: f}
	f.links["tap0"] = link{Name: "tap0", Kind: "tuntap"}
	for i := range 2 {
		if err := p.cmdDel(args("")); err != nil {
			t.Fatalf("del %d: %v", i, err)
		}
	}
	if _, ok := f.links["tap0"]; ok {
		t.Error("tap0 not deleted")
	}
	gone := args("")
	gone.Netns = "/run/netns/gone"
	if err := p.cmdDel(gone); err != nil {
		t.Errorf("del with the namespace gone: %v", err)
	}
	gone.Netns = ""
	if err := p.cmdDel(gone); err != nil {
		t.Errorf("del without a namespace: %v", err)
	}
}

func TestParseConf(t *testing.T) {
	for _, bad := range []string{`{`, `{"tapName":"../../x"}`, `{"tapName":"a-name-longer-than-15"}`} {
		if _, err := parseConf([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	c, err := parseConf([]byte(`{"cniVersion":"1.1.0","tapName":"vmtap"}`))
	if err != nil || c.TAPName != "vmtap" {
		t.Errorf("%+v %v", c, err)
	}
}

func FuzzParseConf(f *testing.F) {
	f.Add([]byte(args(bridgeResult).StdinData))
	f.Add([]byte(`{"tapName":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConf(b)
		if err == nil && validIfName(c.TAPName) != nil {
			t.Fatalf("accepted tap name %q", c.TAPName)
		}
	})
}
