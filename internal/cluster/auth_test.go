package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/cluster/natsserver"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// TestClusterNATSAuthAndTLS: nodes join a nats-server that requires TLS with client
// certificates and decentralized (JWT) credentials, given as --nats-creds, --nats-ca,
// --nats-cert and --nats-key would give them; they see each other and run workloads
// through the queue. A node short of any one of them is refused at Join, saying why.
func TestClusterNATSAuthAndTLS(t *testing.T) {
	dir := t.TempDir()
	pki := makePKI(t, dir)
	creds, auth := makeOperator(t, dir)
	conf := filepath.Join(dir, "nats.conf")
	tlsConf := fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n  timeout: 5\n}\n", pki.serverCert, pki.serverKey, pki.ca)
	if err := os.WriteFile(conf, []byte(auth+tlsConf), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := natsserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := natsserver.Start(context.Background(), clustertest.Binary(t), filepath.Join(dir, "js"), port, natsserver.Options{
		Config: conf, Client: []nats.Option{nats.UserCredentials(creds), nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)

	full := cluster.Config{URL: srv.URL, Creds: creds, CA: pki.ca, Cert: pki.clientCert, Key: pki.clientKey}
	for _, c := range []struct {
		name string
		edit func(*cluster.Config)
		want string
	}{
		{"no credentials", func(c *cluster.Config) { c.Creds = "" }, "authorization"},
		{"no client certificate", func(c *cluster.Config) { c.Cert, c.Key = "", "" }, "tls"},
		{"no CA", func(c *cluster.Config) { c.CA = "" }, "certificate"},
		{"a CA file without a certificate", func(c *cluster.Config) { c.CA = creds }, "no pem certificate"},
	} {
		cc := full
		cc.NodeID, cc.Advertise = "refused", "http://127.0.0.1:1"
		c.edit(&cc)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		n, err := cluster.Join(ctx, cc, cluster.Deps{})
		cancel()
		if err == nil {
			n.Close()
			t.Fatalf("%s: joined", c.name)
		}
		if !strings.Contains(strings.ToLower(err.Error()), c.want) {
			t.Errorf("%s: %v, want it to say %q", c.name, err, c.want)
		}
	}

	a := full
	a.NodeID = "tls-a"
	b := full
	b.NodeID = "tls-b"
	na := startNodeWith(t, a, sandbox.Config{MemBudgetMB: 1024}, 2)
	nb := startNodeWith(t, b, sandbox.Config{MemBudgetMB: 1024}, 2)
	waitNodes(t, na, 2)
	waitNodes(t, nb, 2)
	ctx := context.Background()
	for i := range 6 {
		w, err := na.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: fmt.Sprintf("print(%d)", i)})
		if err != nil || w.Status != model.StatusCompleted {
			t.Fatalf("workload %d through the TLS cluster: %+v %v", i, w, err)
		}
		if _, err := nb.c.Get(ctx, w.ID); err != nil {
			t.Fatalf("workload %d through the other node: %v", i, err)
		}
	}
}

type pkiFiles struct{ ca, serverCert, serverKey, clientCert, clientKey string }

// makePKI writes a CA, a server certificate for 127.0.0.1 and a client certificate.
func makePKI(t *testing.T, dir string) pkiFiles {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vulcan test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	f := pkiFiles{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, f.ca, "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cert, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cert, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return cert, keyFile
	}
	f.serverCert, f.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	f.clientCert, f.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	if _, err := tls.LoadX509KeyPair(f.clientCert, f.clientKey); err != nil {
		t.Fatal(err)
	}
	return f
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// makeOperator sets up decentralized auth: an operator, a system account, an account
// with JetStream, and a user of it whose credentials file it writes. It returns that
// file and the server configuration (a memory resolver preloaded with the accounts).
func makeOperator(t *testing.T, dir string) (creds, conf string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, _ := okp.PublicKey()
	ojwt, err := jwt.NewOperatorClaims(opub).Encode(okp)
	must(err)
	account := func(name string, js bool) (nkeys.KeyPair, string, string) {
		kp, err := nkeys.CreateAccount()
		must(err)
		pub, _ := kp.PublicKey()
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		tok, err := ac.Encode(okp)
		must(err)
		return kp, pub, tok
	}
	_, sysPub, sysJWT := account("SYS", false)
	akp, apub, ajwt := account("VULCAN", true)
	ukp, err := nkeys.CreateUser()
	must(err)
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "vulcan-node"
	ujwt, err := uc.Encode(akp)
	must(err)
	seed, err := ukp.Seed()
	must(err)
	file, err := jwt.FormatUserConfig(ujwt, seed)
	must(err)
	creds = filepath.Join(dir, "node.creds")
	must(os.WriteFile(creds, file, 0o600))
	conf = fmt.Sprintf("operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: %s\n  %s: %s\n}\n",
		ojwt, sysPub, sysPub, sysJWT, apub, ajwt)
	return creds, conf
}
