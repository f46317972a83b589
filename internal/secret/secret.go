// Package secret loads what the agent and the tester use to trust each
// other: the shared bearer token and the TLS configurations, from files
// given on the command line. Both sides load them the same way, here.
package secret

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ReadToken reads a bearer token from path: the file's content without
// surrounding white space. An empty path means no token.
func ReadToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("auth token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("auth token file %s is empty", path)
	}
	if strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("auth token file %s: the token must be one line", path)
	}
	return tok, nil
}

// ServerTLS returns the agent's TLS configuration: its certificate and key,
// and, if caFile is set, the CA that every client certificate must be
// signed by (clients without one are refused). It returns nil, nil when
// certFile and keyFile are both empty (plain TCP).
func ServerTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if caFile != "" {
			return nil, errors.New("trusted CA file given without a certificate and key: TLS needs -cert-file and -key-file")
		}
		return nil, nil
	}
	cert, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		if cfg.ClientCAs, err = loadPool(caFile); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientTLS returns the tester's TLS configuration for talking to agents:
// the CA that signed the agents' certificates and, optionally, a client
// certificate. It returns nil, nil when every file is empty (plain TCP).
func ClientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" && caFile == "" {
		return nil, nil
	}
	if caFile == "" {
		return nil, errors.New("TLS to agents needs the CA file that signed their certificates")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	var err error
	if cfg.RootCAs, err = loadPool(caFile); err != nil {
		return nil, err
	}
	if certFile != "" || keyFile != "" {
		cert, err := loadPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadPair(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, errors.New("TLS needs both a certificate file and a key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
	}
	return pool, nil
}
