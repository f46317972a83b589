// The wrapper module that builds a real etcd release (see main.go). Each
// release has its own module file, versions/vX.Y.Z.mod with its .sum, and
// is built with `go build -modfile=versions/vX.Y.Z.mod` (make etcd does
// it). This file only marks the module root: -modfile needs one, and a
// plain `go build` here fails instead of silently building some release.
module github.com/etcd-functional/tools/etcd

go 1.26.0
