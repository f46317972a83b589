// Command etcd is the real etcd server at one release, chosen by the module
// file it is built with: versions/vX.Y.Z.mod (make etcd ETCD_VERSION=vX.Y.Z
// runs go build -modfile=versions/vX.Y.Z.mod). It exists so that the
// functional tester can build and test against a genuine etcd of any release
// from the Go module proxy alone: the server module's own go.mod carries
// replace directives, so `go install` of it is refused, but a module of our
// own that imports it builds fine. etcdmain.Main has the same signature in
// every release from v3.5 on, so one main.go serves them all.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
