package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

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
		if err := n.add(c, r); err != nil {
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

// addVM installs rules in one batch.
func (n nft) addVM(rs []rule) error {
	c, done, err := n.conn()
	if err != nil {
		return err
	}
	defer done()
	for _, r := range rs {
		if err := n.add(c, r); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: add rules: %w", err)
	}
	return nil
}

func (n nft) add(c *nftables.Conn, r rule) error {
	exprs, err := compile(r)
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

// removeVM deletes exactly the rules tagged with vmID; none is success.
func (n nft) removeVM(vmID string) error {
	c, done, err := n.conn()
	if err != nil {
		return err
	}
	defer done()
	rs, err := n.tagged(c, vmID)
	if err != nil || len(rs) == 0 {
		return err
	}
	for _, r := range rs {
		if err := c.DelRule(r); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: delete rules of %s: %w", vmID, err)
	}
	return nil
}

// compile turns a rule into nftables expressions.
func compile(r rule) ([]expr.Any, error) {
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
		case mSaddr, mDaddr:
			ip := net.ParseIP(m.value).To4()
			if ip == nil {
				return nil, fmt.Errorf("not an IPv4 address: %q", m.value)
			}
			off := uint32(12)
			if m.kind == mDaddr {
				off = 16
			}
			if r.family == famInet {
				// inet sees IPv6 too: match IPv4 first, as nft does for `ip saddr`.
				out = append(out,
					&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}})
			}
			out = append(out,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
				&expr.Cmp{Op: op(m.neg), Register: 1, Data: ip})
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
	default:
		return nil, fmt.Errorf("unknown verdict %q", r.verdict)
	}
	return out, nil
}

// ifname is an interface name as the kernel compares it: NUL-padded to IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
