# The two commands a user needs: `make run` (a real local cluster through the
# whole suite) and `make test` (every test). Everything else is a step of
# those. ETCD_VERSION=v3.6.16 builds and tests that etcd release instead of
# the newest; ETCD=/path/to/etcd uses your own etcd binary instead of
# building one.

GO        ?= go
ETCD      ?=
# The etcd release to build from the Go module proxy: any vX.Y.Z with a
# module file under tools/etcd/versions/ (make etcd-pin makes one).
ETCD_VERSION ?= v3.7.3
ifeq ($(shell echo '$(ETCD_VERSION)' | grep -Ex 'v3\.[0-9]+\.[0-9]+'),)
$(error ETCD_VERSION=$(ETCD_VERSION): want an etcd v3 release as vX.Y.Z, e.g. v3.6.16)
endif
BIN       := bin
GOFLAGS_STATIC := CGO_ENABLED=0

.PHONY: build etcd etcd-pin etcd-releases run-releases agent tester localrun run test unit fuzz e2e docker-e2e check-clean clean vet

build: etcd agent tester localrun

# ARGS go to etcd-tester, e.g. make run ARGS='-cases SIGKILL_LEADER -limit 3'.
# The report lands in $(REPORT). A run holds its NAME (namespaces, bridge,
# rules) and its REPORT while it lives: a second run at the same time needs
# both of its own, e.g. make run NAME=run2 REPORT=report2.
NAME   ?= etcdrun
REPORT ?= report
ARGS   ?=
run: build
	$(BIN)/etcd-localrun -net-name $(NAME) -report-dir $(REPORT) -- $(ARGS)

# One round of the suite on each release with a known bug (README: What it
# found), each under its own name and report dir; every one of them is
# expected to fail, for its bug. Minutes per release, so not in make test
# (which keeps a short proof of each).
RELEASE_RUNS ?= v3.6.16 v3.5.15 v3.6.8
run-releases: agent tester localrun $(patsubst %,$(BIN)/etcd-%,$(RELEASE_RUNS))
	@for v in $(RELEASE_RUNS); do \
		$(BIN)/etcd-localrun -etcd $(BIN)/etcd-$$v -net-name rel$$(echo $$v | tr -dc 0-9) -report-dir report-$$v -- -limit 1 $(ARGS); \
		echo "run-releases: etcd $$v: exit status $$? (report in report-$$v/)"; \
	done

# Every test: vet, the unit and integration tests with the race detector,
# the fuzz targets briefly, a short end-to-end run through `make run`'s
# path, and a short ./test where a Docker engine answers.
test: build vet unit fuzz e2e docker-e2e

# One package at a time: several real etcd clusters at once on two cores
# starve each other and turn timing into noise. The short proofs on real
# releases (the suite must fail v3.6.16 and v3.5.15 for their bugs, the
# FAILPOINTS cases must run on a failpoint build) need those builds: each
# is built once and kept in bin/.
TEST_ETCDS := $(BIN)/etcd-v3.6.16 $(BIN)/etcd-v3.5.15 $(BIN)/etcd-v3.7.3-failpoints
unit: $(TEST_ETCDS)
	$(GO) test -race -count=1 -p 1 -timeout 30m ./...

FUZZTIME ?= 10s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzValidateArgs$$' -fuzztime $(FUZZTIME) ./agent/
	$(GO) test -run '^$$' -fuzz '^FuzzServerCodec$$' -fuzztime $(FUZZTIME) ./agent/

# A few cases of every family, one round, then proof that nothing is left.
# Its name and report dir are its own, so it can run beside a `make run`.
E2E_CASES ?= SIGTERM_ONE_FOLLOWER,SIGKILL_LEADER,SIGSTOP_ONE_FOLLOWER,BLACKHOLE_PEER_PORT_TX_RX_LEADER,DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER,SIGQUIT_AND_REMOVE_ONE_FOLLOWER,NO_FAIL_WITH_STRESS
E2E_NAME   ?= etcde2e
E2E_REPORT ?= report-e2e
e2e: build
	$(BIN)/etcd-localrun -net-name $(E2E_NAME) -report-dir $(E2E_REPORT) -- -cases $(E2E_CASES) -limit 1
	$(MAKE) --no-print-directory check-clean

docker-e2e: build
	@if timeout 10 docker info >/dev/null 2>&1; then \
		./test -cases SIGKILL_ONE_FOLLOWER,BLACKHOLE_PEER_PORT_TX_RX_ONE_FOLLOWER; \
	else \
		echo "docker-e2e: skipped: no Docker engine answers"; \
	fi

# Fails if a run or test left a namespace, a rule or a process of ours
# behind; what belongs to a run still going beside it is not a leftover.
check-clean:
	@tools/check-clean $(BIN)

# FAILPOINTS=1 makes bin/etcd a build of $(ETCD_VERSION) with gofail
# failpoints (bin/etcd-vX.Y.Z-failpoints, by tools/etcd/failpoints.sh, which
# works in the ignored build/failpoints/), for the FAILPOINTS cases: e.g.
# make run FAILPOINTS=1 ARGS='-cases FAILPOINTS'. Built once, kept.
FAILPOINTS ?=
ifeq ($(FAILPOINTS),1)
FAILPOINTS_ETCD := $(BIN)/etcd-$(ETCD_VERSION)-failpoints
override ETCD := $(FAILPOINTS_ETCD)
endif
$(BIN)/etcd-v%-failpoints: tools/etcd/failpoints.sh
	tools/etcd/failpoints.sh v$* $@

# bin/etcd is the binary everything runs (agents, tests, the docker image):
# a symlink to bin/etcd-$(ETCD_VERSION), or a copy of $(ETCD). Each release
# is built once into its own bin/etcd-vX.Y.Z and kept, so switching back and
# forth costs nothing. The build is the wrapper module tools/etcd (etcd's
# server module cannot be `go install`ed) with the release's own module file
# tools/etcd/versions/$(ETCD_VERSION).mod and .sum: every dependency pinned,
# raised where an old release's pins no longer build with this Go.
ETCD_MODFILE := tools/etcd/versions/$(ETCD_VERSION).mod
etcd: $(if $(ETCD),$(FAILPOINTS_ETCD),$(BIN)/etcd-$(ETCD_VERSION))
	@mkdir -p $(BIN)
ifneq ($(ETCD),)
	rm -f $(BIN)/etcd
	cp "$(ETCD)" $(BIN)/etcd
else
	ln -sfn etcd-$(ETCD_VERSION) $(BIN)/etcd
endif

$(BIN)/etcd-v%: tools/etcd/versions/v%.mod tools/etcd/versions/v%.sum tools/etcd/main.go
	@mkdir -p $(BIN)
	cd tools/etcd && $(GOFLAGS_STATIC) $(GO) build -modfile=versions/v$*.mod -o ../../$@.tmp .
	mv $@.tmp $@

# Every pinned release, side by side, for the tests that compare releases
# (stresser's TestPastReadTxnDivergence, tester's TestEtcdFlags...); bin/etcd
# is left as it is. Each build takes minutes; run it once.
etcd-releases: $(patsubst tools/etcd/versions/%.mod,$(BIN)/etcd-%,$(wildcard tools/etcd/versions/v*.mod))

# A release without a module file yet: resolve it from the proxy once
# (make etcd-pin ETCD_VERSION=v3.5.20), check that it builds, commit the two
# files. Never edits etcd itself.
etcd-pin:
	tools/etcd/pin.sh $(ETCD_VERSION)

tools/etcd/versions/%.mod tools/etcd/versions/%.sum:
	@echo "no module file for etcd $* (tools/etcd/versions/$*.mod); pin it with: make etcd-pin ETCD_VERSION=$*" >&2
	@exit 1

agent:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -o $(BIN)/etcd-agent ./cmd/etcd-agent

# The tester records its build in results.json; the go command's own VCS
# stamp is off wherever GOFLAGS says -buildvcs=false, so make stamps it.
TESTER_VERSION := $(shell git describe --always --dirty 2>/dev/null)
tester:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -ldflags '-X github.com/etcd-functional/functional/tester.buildVersion=$(TESTER_VERSION)' -o $(BIN)/etcd-tester ./cmd/etcd-tester

localrun:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -o $(BIN)/etcd-localrun ./cmd/etcd-localrun

vet:
	gofmt -l . | grep . && exit 1 || true
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
