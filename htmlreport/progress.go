package htmlreport

import (
	"fmt"
	"time"
)

// Progress is the round progress for the terminal's line after a case:
// "case 12/29, round 1/3, elapsed 4m10s, estimated left 38m5s". caseIdx
// and round are 1-based and name the case just finished; rounds < 1 means
// the run goes on until interrupted, which has no end to estimate. The
// estimate assumes the remaining cases take as long as the finished ones
// did on average.
func Progress(caseIdx, cases, round, rounds int, elapsed time.Duration) string {
	s := fmt.Sprintf("case %d/%d, round %d", caseIdx, cases, round)
	if rounds > 0 {
		s += fmt.Sprintf("/%d", rounds)
	}
	s += ", elapsed " + elapsed.Round(time.Second).String()
	done := (round-1)*cases + caseIdx
	if rounds < 1 || cases < 1 || done < 1 {
		return s
	}
	left := rounds*cases - done
	est := time.Duration(float64(elapsed) / float64(done) * float64(max(left, 0)))
	return s + ", estimated left " + est.Round(time.Second).String()
}
