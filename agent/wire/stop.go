package wire

import (
	"fmt"
	"time"
)

// GracefulStopError tells a caller that asked for a graceful stop (Stop,
// which sends SIGTERM first) whether it was one: nil if SIGTERM alone
// ended etcd and etcd ended cleanly, with exit code 0 or killed by SIGTERM
// itself (etcd shuts down on SIGTERM and then raises it again, so that is
// how a clean stop of real etcd ends). Otherwise the error names the
// signal that ended it, how long the stop took and how etcd exited: it
// needed SIGINT or SIGKILL (it hung), or it exited non-zero (it failed or
// panicked on the way down).
func (s Status) GracefulStopError() error {
	took := s.LastStopDuration.Round(time.Millisecond)
	switch {
	case s.LastStopSignal == "":
		return fmt.Errorf("etcd was not stopped by a signal (it exited on its own: %s)", orUnknown(s.LastExit))
	case s.LastStopSignal != "SIGTERM":
		return fmt.Errorf("etcd did not stop on SIGTERM: it took %s after %v (%s)", s.LastStopSignal, took, orUnknown(s.LastExit))
	case s.LastExitSignal == "SIGTERM", s.LastExit != "" && s.LastExitSignal == "" && s.LastExitCode == 0:
		return nil
	default:
		return fmt.Errorf("etcd stopped on SIGTERM in %v but did not exit cleanly: %s", took, orUnknown(s.LastExit))
	}
}

func orUnknown(exit string) string {
	if exit == "" {
		return "exit status unknown"
	}
	return exit
}
