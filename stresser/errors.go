package stresser

import (
	"context"
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error classes used as keys of Stats.Errors.
const (
	ClassDeadline          = "deadline_exceeded"  // the request timed out on the client
	ClassNoLeader          = "no_leader"          // the member has no leader
	ClassLeaderChanged     = "leader_changed"     // the leader changed under the request
	ClassTooManyRequests   = "too_many_requests"  // the member sheds load
	ClassUnavailable       = "unavailable"        // the member cannot be reached
	ClassConnectionClosing = "connection_closing" // the connection went away mid-request
	ClassTimeout           = "timeout"            // the request timed out inside etcd
	ClassStopped           = "stopped"            // the member is shutting down
	ClassCanceled          = "canceled"           // canceled by something other than Pause or Close
	ClassLeaseNotFound     = "lease_not_found"    // a lease is gone: expected only for short-TTL or starved leases
	ClassCompacted         = "compacted"          // a read at a revision compaction has removed: what a past read may meet
	ClassUnexpected        = "unexpected"         // anything else: logged, a possible bug
)

// Classify sorts an error returned by an etcd request into a class, and says
// whether a fault (a killed, paused, isolated or slow member) is expected to
// cause it. Unexpected errors are worth a look: the stresser logs them.
func Classify(err error) (class string, expected bool) {
	// The client turns gRPC errors carrying etcd's messages into
	// rpctypes errors; do the same for one that reached us raw.
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if ee := rpctypes.Error(se.GRPCStatus().Err()); errors.As(ee, new(rpctypes.EtcdError)) {
			err = ee
		}
	}
	switch {
	case err == nil:
		return "", true
	case errors.Is(err, context.Canceled):
		return ClassCanceled, true
	case errors.Is(err, context.DeadlineExceeded):
		return ClassDeadline, true
	case errors.Is(err, rpctypes.ErrNoLeader):
		return ClassNoLeader, true
	case errors.Is(err, rpctypes.ErrLeaderChanged), errors.Is(err, rpctypes.ErrNotLeader):
		return ClassLeaderChanged, true
	case errors.Is(err, rpctypes.ErrTooManyRequests):
		return ClassTooManyRequests, true
	case errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost), errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex):
		return ClassTimeout, true
	case errors.Is(err, rpctypes.ErrStopped):
		return ClassStopped, true
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return ClassLeaseNotFound, false
	case errors.Is(err, rpctypes.ErrCompacted):
		// Only reads at an old revision ask for one, and the key stresser
		// picks them at or below the last compaction on purpose. Whether
		// the members still agree afterwards is the hash checker's to see.
		return ClassCompacted, true
	}
	// What is left is a gRPC status, possibly wrapped.
	if !errors.As(err, &se) {
		return ClassUnexpected, false
	}
	st := se.GRPCStatus()
	switch st.Code() {
	case codes.DeadlineExceeded:
		return ClassDeadline, true
	case codes.Canceled:
		// gRPC reports a connection torn down mid-call as Canceled with
		// "grpc: the client connection is closing".
		if isClosing(st.Message()) {
			return ClassConnectionClosing, true
		}
		return ClassCanceled, true
	case codes.Unavailable:
		if isClosing(st.Message()) {
			return ClassConnectionClosing, true
		}
		return ClassUnavailable, true
	case codes.Unknown:
		// etcd passes raft's error through as is when a member without
		// a leader drops a proposal.
		if strings.Contains(st.Message(), "raft proposal dropped") {
			return ClassNoLeader, true
		}
		// ...and raft's own ErrStopped when the member stops (or
		// panics) under a request in flight.
		if strings.Contains(st.Message(), "raft: stopped") {
			return ClassStopped, true
		}
	}
	return ClassUnexpected, false
}

func isClosing(msg string) bool {
	return strings.Contains(msg, "is closing") || strings.Contains(msg, "transport is closing") ||
		strings.Contains(msg, "error reading from server: EOF")
}
