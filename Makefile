# The two commands a user needs: `make run` (a real local cluster through the
# whole suite) and `make test` (every test). Everything else is a step of
# those. ETCD=/path/to/etcd uses your own etcd binary instead of building one.

GO        ?= go
ETCD      ?=
BIN       := bin
GOFLAGS_STATIC := CGO_ENABLED=0

.PHONY: build etcd agent tester clean vet

build: etcd agent tester

# bin/etcd is the real etcd at the release pinned in tools/etcd/go.mod, or a
# copy of $(ETCD).
etcd: $(BIN)/etcd
$(BIN)/etcd: tools/etcd/go.mod tools/etcd/main.go
	@mkdir -p $(BIN)
ifneq ($(ETCD),)
	cp "$(ETCD)" $@
else
	cd tools/etcd && $(GOFLAGS_STATIC) $(GO) build -o ../../$@ .
endif

agent:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -o $(BIN)/etcd-agent ./cmd/etcd-agent

tester:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -o $(BIN)/etcd-tester ./cmd/etcd-tester

vet:
	gofmt -l . | grep . && exit 1 || true
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
