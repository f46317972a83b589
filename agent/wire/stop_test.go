package wire

import (
	"strings"
	"testing"
	"time"
)

func TestGracefulStopError(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   Status
		want string // "" for nil, else a part of the error
	}{
		{"RealEtcd", Status{LastStopSignal: "SIGTERM", LastExit: "killed by SIGTERM", LastExitCode: -1, LastExitSignal: "SIGTERM"}, ""},
		{"ExitZero", Status{LastStopSignal: "SIGTERM", LastExit: "exit code 0"}, ""},
		{"NeededSIGINT", Status{LastStopSignal: "SIGINT", LastStopDuration: 10 * time.Second, LastExit: "exit code 0"}, "took SIGINT after 10s"},
		{"NeededSIGKILL", Status{LastStopSignal: "SIGKILL", LastStopDuration: 15 * time.Second, LastExit: "killed by SIGKILL", LastExitCode: -1, LastExitSignal: "SIGKILL"}, "took SIGKILL"},
		{"PanicOnTheWayDown", Status{LastStopSignal: "SIGTERM", LastExit: "exit code 2", LastExitCode: 2}, "did not exit cleanly: exit code 2"},
		{"Aborted", Status{LastStopSignal: "SIGTERM", LastExit: "killed by SIGABRT (core dumped)", LastExitCode: -1, LastExitSignal: "SIGABRT"}, "SIGABRT"},
		{"Unknown", Status{LastStopSignal: "SIGTERM", LastExit: "unknown (adopted)", LastExitCode: -1}, "unknown"},
		{"NoStop", Status{LastExit: "exit code 1", LastExitCode: 1}, "exited on its own"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.st.GracefulStopError()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("GracefulStopError() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("GracefulStopError() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
