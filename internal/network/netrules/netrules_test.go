package netrules

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/model"
)

func TestCheckEntries(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
		deny          bool
	}{
		{in: "203.0.113.0/24", want: "203.0.113.0/24"},
		{in: "203.0.113.7", want: "203.0.113.7/32"},
		{in: "10.1.2.0/24", want: "10.1.2.0/24"}, // an explicit private range may be allowed
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},     // Fixed ranges inside it stay closed
		{in: "Example.COM.", want: "example.com"},
		{in: "*.PyPI.org", want: "*.pypi.org"},
		{in: "_acme.example.com", want: "_acme.example.com"},
		{in: "169.254.169.254", err: "link-local"},
		{in: "127.0.0.1", err: "loopback"},
		{in: "224.0.0.0/8", err: "multicast"},
		{in: "169.254.169.254", deny: true, want: "169.254.169.254/32"},
		{in: "203.0.113.1/24", err: "did you mean 203.0.113.0/24"},
		{in: "2001:db8::/32", err: "no IPv6"},
		{in: "10.0.0.0/33", err: "not a CIDR"},
		{in: "1.2.3", err: "not an IP address"},
		{in: "1.2.3.4.5", err: "not an IP address"},
		{in: "", err: "empty"},
		{in: "localhost", err: "two labels"},
		{in: "*", err: "wildcard"},
		{in: "*.", err: "wildcard"},
		{in: "a.*.com", err: "wildcard"},
		{in: "*foo.com", err: "wildcard"},
		{in: "**.foo.com", err: "wildcard"},
		{in: "foo..com", err: "1-63"},
		{in: "-a.com", err: "'-'"},
		{in: "a b.com", err: "only letters"},
		{in: "exa\u00e9mple.com", err: "only letters"},
		{in: "example.123", err: "all digits"},
		{in: strings.Repeat("a", 64) + ".com", err: "1-63"},
		{in: strings.Repeat(strings.Repeat("a", 62)+"b.", 3) + strings.Repeat("c", 63), err: "at most 253"},
		{in: strings.Repeat("a", 256), err: "at most 255"},
	} {
		list := &model.NetworkRules{Allow: []string{tc.in}}
		if tc.deny {
			list = &model.NetworkRules{Deny: []string{tc.in}}
		}
		got, err := Check(model.NetworkEgress, list)
		if tc.err != "" {
			var fe *model.FieldError
			if !errors.As(err, &fe) || !strings.Contains(fe.Reason, tc.err) {
				t.Errorf("%q: err %v, want a field error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		e := got.Allow
		if tc.deny {
			e = got.Deny
		}
		if len(e) != 1 || e[0] != tc.want {
			t.Errorf("%q: normalised to %v, want %s", tc.in, e, tc.want)
		}
	}
}

func TestCheckFieldsAndCaps(t *testing.T) {
	field := func(p model.NetworkPolicy, r *model.NetworkRules) string {
		_, err := Check(p, r)
		var fe *model.FieldError
		if !errors.As(err, &fe) {
			return fmt.Sprint(err)
		}
		return fe.Field
	}
	many := make([]string, MaxEntries+1)
	for i := range many {
		many[i] = fmt.Sprintf("h%d.example.com", i)
	}
	for want, got := range map[string]string{
		"network_rules":          field(model.NetworkHost, &model.NetworkRules{Allow: []string{"example.com"}}),
		"network_rules.allow":    field(model.NetworkEgress, &model.NetworkRules{Allow: many}),
		"network_rules.deny":     field(model.NetworkEgress, &model.NetworkRules{Deny: many}),
		"network_rules.deny[1]":  field(model.NetworkEgress, &model.NetworkRules{Deny: []string{"a.com", "b..com"}}),
		"network_rules.allow[0]": field(model.NetworkEgress, &model.NetworkRules{Allow: []string{"x"}}),
	} {
		if got != want {
			t.Errorf("field %q, want %q", got, want)
		}
	}
	if _, err := Check(model.NetworkNone, &model.NetworkRules{Allow: []string{"a.com"}}); err == nil {
		t.Error("rules accepted with network none")
	}
	// No entry is no rule, whatever the policy; MaxEntries entries pass; duplicates merge.
	if r, err := Check(model.NetworkNone, &model.NetworkRules{}); r != nil || err != nil {
		t.Errorf("empty rules: %v %v", r, err)
	}
	if _, err := Check(model.NetworkEgress, &model.NetworkRules{Allow: many[:MaxEntries]}); err != nil {
		t.Error(err)
	}
	r, err := Check(model.NetworkEgress, &model.NetworkRules{Allow: []string{"A.com", "a.com.", "1.2.3.4", "1.2.3.4/32"}})
	if err != nil || strings.Join(r.Allow, ",") != "a.com,1.2.3.4/32" {
		t.Errorf("dedup: %v %v", r, err)
	}
}

func TestNameAllowed(t *testing.T) {
	parse := func(allow, deny []string) Rules {
		r, err := Parse(&model.NetworkRules{Allow: allow, Deny: deny})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	open := parse(nil, []string{"bad.example.com", "*.tracker.test"})
	list := parse([]string{"pypi.org", "*.pythonhosted.org", "*.example.com", "203.0.113.0/24"}, []string{"bad.example.com"})
	cidrOnly := parse([]string{"203.0.113.0/24"}, nil)
	for _, tc := range []struct {
		r    Rules
		name string
		want bool
	}{
		{open, "anything.test.", true},
		{open, "BAD.example.com.", false},
		{open, "x.tracker.test", false},
		{open, "tracker.test", true}, // *.suffix is below the suffix only
		{list, "pypi.org.", true},
		{list, "www.pypi.org", false}, // exact is exact
		{list, "files.pythonhosted.org", true},
		{list, "a.b.pythonhosted.org", true},
		{list, "pythonhosted.org", false},
		{list, "evilpythonhosted.org", false},
		{list, "good.example.com", true},
		{list, "bad.example.com", false}, // deny beats allow
		{list, "other.test", false},
		{cidrOnly, "example.com", false}, // an allow list of CIDRs resolves no name
	} {
		if got := tc.r.NameAllowed(tc.name); got != tc.want {
			t.Errorf("%+v %q: %v, want %v", tc.r, tc.name, got, tc.want)
		}
	}
	if !list.AllowList() || !list.HasNames() || open.AllowList() || !cidrOnly.AllowList() || cidrOnly.HasNames() || !(Rules{}).Empty() {
		t.Error("AllowList/HasNames/Empty")
	}
}
