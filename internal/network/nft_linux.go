package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// nft applies the policy in one namespace through netlink. Each call opens its own
// connection (bound to the namespace by fd) and commits one batch, so a change is atomic.
type nft struct {
	netnsPath string // "" = the caller's namespace
	table     string // the name of both tables (Names.Table)
}

func (n nft) conn() (*nftables.Conn, func(), error) {
	if n.netnsPath == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	f, err := os.Open(n.netnsPath)
	if err != nil {
		return nil, nil, err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return c, func() { f.Close() }, nil
}

func nfFamily(f family) nftables.TableFamily {
	if f == famBridge {
		return nftables.TableFamilyBridge
	}
	return nftables.TableFamilyINet
}

func (n nft) tbl(f family) *nftables.Table {
	return &nftables.Table{Name: n.table, Family: nfFamily(f)}
}

func (n nft) chainRef(f family, name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: n.tbl(f)}
}

// reset deletes this instance's tables (whatever a crashed run left in them) and creates them
// again with the base chains and rules.
func (n nft) reset(base []rule) error {
	c, done, err := n.conn()
	if err != nil {
		return err
	}
	defer done()
	n.deleteTables(c)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: delete tables: %w", err)
	}
	for _, f := range []family{famInet, famBridge} {
		c.AddTable(n.tbl(f))
	}
	for _, cs := range chains {
		hook := map[string]*nftables.ChainHook{
			"input": nftables.ChainHookInput, "forward": nftables.ChainHookForward,
			"prerouting": nftables.ChainHookPrerouting, "postrouting": nftables.ChainHookPostrouting,
		}[cs.hook]
		typ := nftables.ChainTypeFilter
		if cs.nat {
			typ = nftables.ChainTypeNAT
		}
		policy := nftables.ChainPolicyAccept
		c.AddChain(&nftables.Chain{Name: cs.name, Table: n.tbl(cs.family), Hooknum: hook,
			Priority: nftables.ChainPriorityRef(nftables.ChainPriority(cs.priority)), Type: typ, Policy: &policy})
	}
	for _, r := range base {
		if err := n.add(c, r, nil); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: create tables: %w", err)
	}
	return nil
}

// deleteTables queues the deletion of this instance's tables that exist, and says how
// many. Tables of other names (other servers', anyone's) are never touched.
func (n nft) deleteTables(c *nftables.Conn) int {
	tables, err := c.ListTables()
	if err != nil {
		return 0
	}
	k := 0
	for _, t := range tables {
		if t.Name == n.table && (t.Family == nftables.TableFamilyINet || t.Family == nftables.TableFamilyBridge) {
			c.DelTable(t)
			k++
		}
	}
	return k
}

// drop removes this instance's tables and says how many there were.
func (n nft) drop() (int, error) {
	c, done, err := n.conn()
	if err != nil {
		return 0, err
	}
	defer done()
	k := n.deleteTables(c)
	return k, c.Flush()
}

// addVM installs a VM's rules in one batch, with its chain and its DNS set when they
// are used (chain and set are named after the VM, so removeVM finds them).
func (n nft) addVM(rs []rule, set string) error {
	c, done, err := n.conn()
	if err != nil {
		return err
	}
	defer done()
	made := map[string]bool{}
	for _, cs := range chains {
		made[string(cs.family)+" "+cs.name] = true
	}
	for _, r := range rs {
		if k := string(r.family) + " " + r.chain; !made[k] {
			c.AddChain(&nftables.Chain{Name: r.chain, Table: n.tbl(r.family)})
			made[k] = true
		}
	}
	sets := map[string]*nftables.Set{}
	if set != "" {
		s := n.dnsSetRef(set)
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("nft: set %s: %w", set, err)
		}
		sets[set] = s
	}
	// Head rules are inserted one by one at the front: in reverse, they keep their order.
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].head {
			if err := n.add(c, rs[i], sets); err != nil {
				return err
			}
		}
	}
	for _, r := range rs {
		if !r.head {
			if err := n.add(c, r, sets); err != nil {
				return err
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: add rules: %w", err)
	}
	return nil
}

// dnsSetRef is a VM's set of addresses the DNS gate answered: IPv4 addresses, each with
// its own timeout.
func (n nft) dnsSetRef(name string) *nftables.Set {
	return &nftables.Set{Table: n.tbl(famInet), Name: name, KeyType: nftables.TypeIPAddr, HasTimeout: true}
}

// addAddrs puts addresses in a VM's DNS set for ttl, replacing the timeout of those
// already there: add (a no-op for a present element), delete, add again, in one batch,
// so the address is never missing and an element the kernel is expiring cannot make
// the batch fail.
func (n nft) addAddrs(set string, addrs []net.IP, ttl time.Duration) error {
	if len(addrs) == 0 {
		return nil
	}
	c, done, err := n.conn()
	if err != nil {
		return err
	}
	defer done()
	s := n.dnsSetRef(set)
	var plain, timed []nftables.SetElement
	for _, a := range addrs {
		ip := a.To4()
		if ip == nil {
			continue
		}
		plain = append(plain, nftables.SetElement{Key: ip})
		timed = append(timed, nftables.SetElement{Key: ip, Timeout: ttl})
	}
	for _, step := range []func() error{
		func() error { return c.SetAddElements(s, plain) },
		func() error { return c.SetDeleteElements(s, plain) },
		func() error { return c.SetAddElements(s, timed) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: set %s: %w", set, err)
	}
	return nil
}

// setAddrs lists the addresses in a set (tests and diagnostics).
func (n nft) setAddrs(set string) ([]nftables.SetElement, error) {
	c, done, err := n.conn()
	if err != nil {
		return nil, err
	}
	defer done()
	return c.GetSetElements(n.dnsSetRef(set))
}

func (n nft) add(c *nftables.Conn, r rule, sets map[string]*nftables.Set) error {
	exprs, err := compile(r, sets)
	if err != nil {
		return fmt.Errorf("nft: %s: %w", r, err)
	}
	nr := &nftables.Rule{Table: n.tbl(r.family), Chain: n.chainRef(r.family, r.chain), Exprs: exprs}
	if cm := r.comment(); cm != "" {
		nr.UserData = userdata.AppendString(nil, userdata.TypeComment, cm)
	}
	if r.head {
		c.InsertRule(nr)
	} else {
		c.AddRule(nr)
	}
	return nil
}

// rulesOf lists the per-VM rules in Vulcan's chains, by VM id ("" lists every tagged
// rule), as "family chain: comment" strings and the rules themselves.
func (n nft) rulesOf(vmID string) ([]*nftables.Rule, error) {
	c, done, err := n.conn()
	if err != nil {
		return nil, err
	}
	defer done()
	return n.tagged(c, vmID)
}

func (n nft) tagged(c *nftables.Conn, vmID string) ([]*nftables.Rule, error) {
	var out []*nftables.Rule
	for _, cs := range chains {
		rs, err := c.GetRules(n.tbl(cs.family), n.chainRef(cs.family, cs.name))
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("nft: list %s %s: %w", cs.family, cs.name, err)
		}
		for _, r := range rs {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			if !strings.HasPrefix(cm, vmTagPrefix) {
				continue
			}
			if vmID == "" || cm == vmTagPrefix+vmID {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// removeVM deletes exactly the rules tagged with vmID, then its chain and its DNS set;
// none is success.
func (n nft) removeVM(vmID string) error {
	c, done, err := n.conn()
	if err != nil {
		return err
	}
	defer done()
	rs, err := n.tagged(c, vmID)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := c.DelRule(r); err != nil {
			return err
		}
	}
	if len(rs) > 0 {
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nft: delete rules of %s: %w", vmID, err)
		}
	}
	// The jump is gone: the chain (with its rules) and then the set it used can go.
	k := 0
	if chs, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet); err == nil {
		for _, ch := range chs {
			if ch.Table.Name == n.table && ch.Name == vmChain(vmID) {
				c.FlushChain(ch)
				c.DelChain(ch)
				k++
			}
		}
	}
	if sets, err := c.GetSets(n.tbl(famInet)); err == nil {
		for _, s := range sets {
			if s.Name == dnsSet(vmID) {
				c.DelSet(s)
				k++
			}
		}
	}
	if k == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: delete chain and set of %s: %w", vmID, err)
	}
	return nil
}

// compile turns a rule into nftables expressions.
func compile(r rule, sets map[string]*nftables.Set) ([]expr.Any, error) {
	var out []expr.Any
	op := func(neg bool) expr.CmpOp {
		if neg {
			return expr.CmpOpNeq
		}
		return expr.CmpOpEq
	}
	for _, m := range r.matches {
		switch m.kind {
		case mIIF, mOIF:
			key := expr.MetaKeyIIFNAME
			if m.kind == mOIF {
				key = expr.MetaKeyOIFNAME
			}
			out = append(out,
				&expr.Meta{Key: key, Register: 1},
				&expr.Cmp{Op: op(m.neg), Register: 1, Data: ifname(m.value)})
		case mIPv4:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)})
		case mIPv6:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IPV6)})
		case mSaddr, mDaddr, mDaddrSet:
			off := uint32(12)
			if m.kind != mSaddr {
				off = 16
			}
			if r.family == famInet {
				// inet sees IPv6 too: match IPv4 first, as nft does for `ip saddr`.
				out = append(out,
					&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}})
			}
			load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}
			if m.kind == mDaddrSet {
				s := sets[m.value]
				if s == nil {
					return nil, fmt.Errorf("set %q is not in the batch", m.value)
				}
				out = append(out, load, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: m.neg})
				continue
			}
			ip, mask, err := addrOrPrefix(m.value)
			if err != nil {
				return nil, err
			}
			if ones, _ := mask.Size(); ones == 0 {
				if m.neg {
					return nil, fmt.Errorf("%s matches nothing", m.value)
				}
				continue // 0.0.0.0/0: every IPv4 packet, which the protocol match above says
			}
			out = append(out, load)
			if ones, _ := mask.Size(); ones < 32 {
				out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: []byte(mask), Xor: []byte{0, 0, 0, 0}})
			}
			out = append(out, &expr.Cmp{Op: op(m.neg), Register: 1, Data: ip})
		case mL4:
			proto, port, err := l4(m.value)
			if err != nil {
				return nil, err
			}
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)})
		case mCtEstRel:
			out = append(out,
				&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
					Xor:  binaryutil.NativeEndian.PutUint32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)})
		default:
			return nil, fmt.Errorf("unknown match %d", m.kind)
		}
	}
	switch r.verdict {
	case vAccept:
		out = append(out, &expr.Verdict{Kind: expr.VerdictAccept})
	case vDrop:
		out = append(out, &expr.Verdict{Kind: expr.VerdictDrop})
	case vMasquerade:
		out = append(out, &expr.Masq{})
	case vJump:
		if r.target == "" {
			return nil, errors.New("jump without a target chain")
		}
		out = append(out, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.target})
	default:
		return nil, fmt.Errorf("unknown verdict %q", r.verdict)
	}
	return out, nil
}

// addrOrPrefix reads "a.b.c.d" (a /32) or "a.b.c.d/n" with no bits past its mask.
func addrOrPrefix(v string) (net.IP, net.IPMask, error) {
	if !strings.Contains(v, "/") {
		ip := net.ParseIP(v).To4()
		if ip == nil {
			return nil, nil, fmt.Errorf("not an IPv4 address: %q", v)
		}
		return ip, net.CIDRMask(32, 32), nil
	}
	ip, n, err := net.ParseCIDR(v)
	if err != nil || ip.To4() == nil || !ip.Equal(n.IP) {
		return nil, nil, fmt.Errorf("not an IPv4 network: %q", v)
	}
	return n.IP.To4(), n.Mask, nil
}

// l4 reads "udp/53" or "tcp/53".
func l4(v string) (byte, uint16, error) {
	proto, port, _ := strings.Cut(v, "/")
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return 0, 0, fmt.Errorf("bad port in %q", v)
	}
	switch proto {
	case "udp":
		return unix.IPPROTO_UDP, uint16(p), nil
	case "tcp":
		return unix.IPPROTO_TCP, uint16(p), nil
	}
	return 0, 0, fmt.Errorf("unknown protocol in %q", v)
}

// ifname is an interface name as the kernel compares it: NUL-padded to IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
