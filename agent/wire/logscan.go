package wire

// MethodScanLog reads etcd's log on the agent's host (etcd.log in the
// agent's base dir, where etcd's stdout and stderr go) and returns the
// lines that match, so that a caller can look for what etcd itself
// reports — a panic, a corruption alarm — without reaching the host's
// files. It changes nothing.
const MethodScanLog = ServiceName + ".RPCScanLog" // ScanLog → LogScan

// Limits of a ScanLog.
const (
	MaxLogPatterns     = 32   // patterns and exceptions, each
	MaxLogPatternBytes = 256  // one pattern
	MaxLogLines        = 100  // lines returned by one scan
	MaxLogLineBytes    = 1024 // of one returned line; the rest is cut
)

// LogPos is a place in etcd's log: the log file (its inode: the agent
// moves the log into an archive and starts a new one on Cleanup and
// Archive) and a byte offset in it.
type LogPos struct {
	File   uint64
	Offset int64
}

// ScanLog is the argument of RPCScanLog: return the lines of the log from
// From to its end that contain one of Patterns and none of Except (plain,
// case-sensitive substrings).
type ScanLog struct {
	// From is where the last scan ended (its LogScan.End); the zero
	// LogPos scans the current log from its start. When From's file has
	// been archived since, the rest of it is scanned first if it is the
	// last archive's log, then the current log from its start.
	From     LogPos
	Patterns []string
	Except   []string
	// Max bounds the lines returned (1..MaxLogLines; 0 means 20). The
	// matching lines beyond it are counted in LogScan.Dropped.
	Max int
}

// LogScan is the reply of RPCScanLog.
type LogScan struct {
	// Lines are the matching lines, in log order, each cut at
	// MaxLogLineBytes.
	Lines   []string
	Dropped int // matching lines beyond ScanLog.Max
	// End is where the scan stopped: after the last complete line of the
	// current log. Pass it as the next scan's From.
	End LogPos
	// Gap says, for humans, what part of the log could not be scanned
	// (a log archived twice since From); empty if none.
	Gap string
}
