// Package testpki creates throwaway certificate authorities and
// certificates for tests, as PEM files in the test's temporary directory.
//
// Every key is ECDSA P-256 and every certificate is valid from an hour
// before it is made to an hour after.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a certificate authority and the directory its files are written
// to. Each New makes a CA that trusts nothing another New made.
type PKI struct {
	// CAFile is the CA's certificate, the file to trust.
	CAFile string

	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// New makes a certificate authority in a new temporary directory of t.
func New(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{dir: t.TempDir()}
	p.cert, p.key, p.CAFile, _ = issue(t, p.dir, "ca", &x509.Certificate{
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil, nil)
	return p
}

// Server issues a server certificate named name for the given addresses.
// A name may be issued once per PKI ("ca" is taken).
func (p *PKI) Server(t testing.TB, name string, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	_, _, certFile, keyFile = issue(t, p.dir, name, leaf(x509.ExtKeyUsageServerAuth, ips), p.cert, p.key)
	return certFile, keyFile
}

// Client issues a client certificate named name.
// A name may be issued once per PKI ("ca" is taken).
func (p *PKI) Client(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	_, _, certFile, keyFile = issue(t, p.dir, name, leaf(x509.ExtKeyUsageClientAuth, nil), p.cert, p.key)
	return certFile, keyFile
}

// SelfSigned makes a client certificate named name that signs itself, so
// no CA vouches for it.
func SelfSigned(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	_, _, certFile, keyFile = issue(t, t.TempDir(), name, leaf(x509.ExtKeyUsageClientAuth, nil), nil, nil)
	return certFile, keyFile
}

func leaf(usage x509.ExtKeyUsage, ips []net.IP) *x509.Certificate {
	return &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: ips,
	}
}

// issue completes tmpl, signs it with parentKey (itself when parent is
// nil) and writes dir/name.crt and dir/name.key, failing t if either
// exists already.
func issue(t testing.TB, dir, name string, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl.Subject = pkix.Name{CommonName: name}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	write(t, certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	write(t, keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return cert, key, certFile, keyFile
}

func write(t testing.TB, file string, block *pem.Block) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	_, err = f.Write(pem.EncodeToMemory(block))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
}
