// Command etcd is the real etcd server at the release pinned in this
// module's go.mod. It exists so that the functional tester can build and test
// against a genuine etcd from the Go module proxy alone: the server module's
// own go.mod carries replace directives, so `go install` of it is refused,
// but a module of our own that imports it builds fine.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
