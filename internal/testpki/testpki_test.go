package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
)

// TestCertificatesChainToTheirOwnCAOnly: certificates a PKI issued verify
// against its CA for their use and address, with the key written beside
// them; those of another PKI and self-signed ones do not.
func TestCertificatesChainToTheirOwnCAOnly(t *testing.T) {
	p, other := New(t), New(t)
	ip := net.ParseIP("127.0.0.1")
	server := load(t)(p.Server(t, "server", ip))
	client := load(t)(p.Client(t, "client"))
	foreign := load(t)(other.Client(t, "client"))
	rogue := load(t)(SelfSigned(t, "rogue"))

	roots := x509.NewCertPool()
	pemCA, err := os.ReadFile(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if !roots.AppendCertsFromPEM(pemCA) {
		t.Fatalf("%s holds no certificate", p.CAFile)
	}
	verify := func(c *x509.Certificate, usage x509.ExtKeyUsage, host string) error {
		_, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: host})
		return err
	}
	if err := verify(server, x509.ExtKeyUsageServerAuth, ip.String()); err != nil {
		t.Errorf("server certificate: %v", err)
	}
	if err := verify(server, x509.ExtKeyUsageServerAuth, "127.0.0.2"); err == nil {
		t.Error("server certificate verified for an address it was not issued for")
	}
	if err := verify(client, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if err := verify(client, x509.ExtKeyUsageServerAuth, ""); err == nil {
		t.Error("client certificate verified for server use")
	}
	if err := verify(foreign, x509.ExtKeyUsageClientAuth, ""); err == nil {
		t.Error("a certificate another PKI issued verified against this CA")
	}
	if err := verify(rogue, x509.ExtKeyUsageClientAuth, ""); err == nil {
		t.Error("a self-signed certificate verified against the CA")
	}
	if err := rogue.CheckSignature(rogue.SignatureAlgorithm, rogue.RawTBSCertificate, rogue.Signature); err != nil {
		t.Errorf("self-signed certificate does not sign itself: %v", err)
	}
}

// load returns a function that loads a certificate and key pair, failing t
// if the key is not the certificate's, and returns the certificate.
func load(t *testing.T) func(certFile, keyFile string) *x509.Certificate {
	return func(certFile, keyFile string) *x509.Certificate {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf
	}
}
