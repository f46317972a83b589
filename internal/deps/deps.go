package deps

import (
	_ "github.com/coreos/pkg/capnslog"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.uber.org/goleak"
	_ "golang.org/x/time/rate"
)
