package htmlreport

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// maxPoints bounds the points of one line of a timeline. A case's series
// has one entry per second (up to an hour); a 29-case round must stay
// under about 2 MB, and 120 points is finer than the plot's pixels allow
// to see anyway.
const maxPoints = 120

// Colours, shared with the page's CSS so that plot and table agree.
var (
	colOK      = color.RGBA{0x1a, 0x7f, 0x37, 0xff}  // green
	colFail    = color.RGBA{0xcf, 0x22, 0x2e, 0xff}  // red
	colP50     = color.RGBA{0x09, 0x69, 0xda, 0xff}  // blue
	colP99     = color.RGBA{0x82, 0x50, 0xdf, 0xff}  // purple
	colFault   = color.NRGBA{0xcf, 0x22, 0x2e, 0x30} // translucent red (NRGBA: RGBA is premultiplied)
	colRecover = color.NRGBA{0xd4, 0xa7, 0x2c, 0x40} // translucent amber
	colGrid    = color.RGBA{0xd0, 0xd7, 0xde, 0xff}
	// Error classes get these in order of name.
	classColours = []color.Color{
		color.RGBA{0xcf, 0x22, 0x2e, 0xff}, color.RGBA{0xbf, 0x87, 0x00, 0xff},
		color.RGBA{0x82, 0x50, 0xdf, 0xff}, color.RGBA{0x1b, 0x7c, 0x83, 0xff},
		color.RGBA{0xbc, 0x4c, 0x00, 0xff}, color.RGBA{0x57, 0x60, 0x6a, 0xff},
	}
)

// sans is the plots' font: the page is set in a sans-serif face and the
// plots' text should match it (gonum's default is a serif).
var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

func newPlot() *plot.Plot {
	p := plot.New()
	for _, ts := range []*draw.TextStyle{&p.Title.TextStyle, &p.X.Label.TextStyle, &p.Y.Label.TextStyle,
		&p.X.Tick.Label, &p.Y.Tick.Label, &p.Legend.TextStyle} {
		ts.Font.Typeface, ts.Font.Variant = sans.Typeface, sans.Variant
	}
	p.Title.TextStyle.Font.Size = 11
	p.X.Label.TextStyle.Font.Size, p.Y.Label.TextStyle.Font.Size = 9, 9
	p.X.Tick.Label.Font.Size, p.Y.Tick.Label.Font.Size = 8.5, 8.5
	p.Legend.TextStyle.Font.Size = 8.5
	p.X.Tick.Marker, p.Y.Tick.Marker = plainTicks{}, plainTicks{}
	p.Legend.Top, p.Legend.Left = true, false
	p.Legend.ThumbnailWidth = 12
	p.X.Padding, p.Y.Padding = 0, 0
	p.BackgroundColor = color.Transparent
	grid := plotter.NewGrid()
	grid.Vertical.Color, grid.Horizontal.Color = colGrid, colGrid
	grid.Vertical.Width, grid.Horizontal.Width = 0.3, 0.3
	p.Add(grid)
	return p
}

// plainTicks are gonum's default ticks labelled without trailing zeros
// ("75", not "75.00").
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', -1, 64)
		}
	}
	return ts
}

// band shades the span [from, to] of the x axis over the whole height of
// a plot: a fault, or the recovery after it.
type band struct {
	from, to float64
	fill     color.Color
}

func (b band) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	x0, x1 := max(trX(b.from), c.Min.X), min(trX(b.to), c.Max.X)
	if x1 <= x0 {
		return
	}
	c.FillPolygon(b.fill, []vg.Point{{X: x0, Y: c.Min.Y}, {X: x1, Y: c.Min.Y}, {X: x1, Y: c.Max.Y}, {X: x0, Y: c.Max.Y}})
}

// point is one downsampled step of a series.
type point struct {
	t        float64 // seconds since the injection (or the load's start)
	ok, fail float64 // per second
	p50, p99 float64 // milliseconds; 0 when nothing finished
	errs     map[string]float64
}

// downsample folds a per-second series into at most maxPoints steps. Rates
// are averaged over a step; p50 is averaged over the seconds that had
// requests and p99 is their maximum, so that a latency spike survives.
func downsample(series []second, zero float64) []point {
	w := (len(series) + maxPoints - 1) / maxPoints
	w = max(w, 1)
	var pts []point
	for i := 0; i < len(series); i += w {
		chunk := series[i:min(i+w, len(series))]
		// A second's figures are drawn at its middle.
		pt := point{t: float64(chunk[0].Unix) - zero + float64(len(chunk))/2}
		n := float64(len(chunk))
		busy := 0
		for _, s := range chunk {
			pt.ok += float64(s.Success) / n
			pt.fail += float64(s.Failure) / n
			if s.Success+s.Failure > 0 {
				busy++
				pt.p50 += float64(s.P50) / 1e6
				pt.p99 = max(pt.p99, float64(s.P99)/1e6)
			}
			for c, k := range s.Errors {
				if pt.errs == nil {
					pt.errs = map[string]float64{}
				}
				pt.errs[c] += float64(k) / n
			}
		}
		if busy > 0 {
			pt.p50 /= float64(busy)
		}
		pts = append(pts, pt)
	}
	return pts
}

// timeline plots one case: requests per second, latency and errors by
// class, one above the other on a shared time axis, with the fault shaded.
// It returns "" when the case has no per-second series.
func timeline(c *caseResult) (string, error) {
	if c.Stress == nil || len(c.Stress.Series) == 0 {
		return "", nil
	}
	zero := c.InjectTime
	if zero.IsZero() {
		zero = c.Stress.Start
	}
	z := float64(zero.UnixNano()) / 1e9
	pts := downsample(c.Stress.Series, z)
	secs := func(t time.Time) float64 { return t.Sub(zero).Seconds() }
	xmin := float64(c.Stress.Series[0].Unix) - z
	xmax := float64(c.Stress.Series[len(c.Stress.Series)-1].Unix) - z + 1

	var bands []band
	if !c.InjectTime.IsZero() {
		end := xmax
		if !c.RecoverTime.IsZero() {
			end = secs(c.RecoverTime)
		}
		bands = append(bands, band{secs(c.InjectTime), end, colFault})
		if !c.RecoverTime.IsZero() {
			end := xmax // never healthy: to the end of the load
			if !c.HealthyTime.IsZero() {
				end = secs(c.HealthyTime)
			}
			bands = append(bands, band{secs(c.RecoverTime), end, colRecover})
		}
	}
	for _, b := range bands {
		xmin, xmax = min(xmin, b.from), max(xmax, b.to)
	}

	rate := newPlot()
	rate.Y.Label.Text = "requests/s"
	lat := newPlot()
	lat.Y.Label.Text = "latency ms"
	errp := newPlot()
	errp.Y.Label.Text = "errors/s"
	errp.X.Label.Text = "seconds since the fault was injected"
	if c.InjectTime.IsZero() {
		errp.X.Label.Text = "seconds since the load started"
	}
	for _, p := range []*plot.Plot{rate, lat, errp} {
		for _, b := range bands {
			p.Add(b)
		}
		p.X.Min, p.X.Max = xmin, xmax
		p.Y.Min = 0
	}
	// The bands are explained once, above the timelines, not in each
	// legend, where they would cover the data.

	xy := func(f func(point) float64, keep func(point) bool) plotter.XYs {
		var out plotter.XYs
		for _, p := range pts {
			if keep == nil || keep(p) {
				out = append(out, plotter.XY{X: p.t, Y: f(p)})
			}
		}
		return out
	}
	addLine := func(p *plot.Plot, name string, col color.Color, data plotter.XYs) error {
		if len(data) == 0 {
			return nil
		}
		l, err := plotter.NewLine(data)
		if err != nil {
			return err
		}
		l.Color, l.Width = col, 1.2
		p.Add(l)
		p.Legend.Add(name, l)
		p.Y.Max = max(p.Y.Max, maxY(data))
		return nil
	}
	busy := func(p point) bool { return p.p99 > 0 }
	var errs []error
	errs = append(errs,
		addLine(rate, "ok", colOK, xy(func(p point) float64 { return p.ok }, nil)),
		addLine(rate, "failed", colFail, xy(func(p point) float64 { return p.fail }, nil)),
		// Series written before p50 was recorded have none: no line
		// rather than a false one at zero.
		addLine(lat, "p50", colP50, xy(func(p point) float64 { return p.p50 }, func(p point) bool { return p.p50 > 0 })),
		addLine(lat, "p99", colP99, xy(func(p point) float64 { return p.p99 }, busy)))

	// Errors by class when the series has them (newer stressers); the
	// total failures otherwise.
	classes := map[string]bool{}
	for _, p := range pts {
		for k := range p.errs {
			classes[k] = true
		}
	}
	names := make([]string, 0, len(classes))
	for k := range classes {
		names = append(names, k)
	}
	sort.Strings(names)
	for i, name := range names {
		errs = append(errs, addLine(errp, name, classColours[i%len(classColours)],
			xy(func(p point) float64 { return p.errs[name] }, nil)))
	}
	if len(names) == 0 {
		errs = append(errs, addLine(errp, "failed", colFail, xy(func(p point) float64 { return p.fail }, nil)))
	}
	for _, err := range errs {
		if err != nil {
			return "", fmt.Errorf("htmlreport: timeline of %s: %w", c.Case, err)
		}
	}
	for _, p := range []*plot.Plot{rate, errp} {
		// Headroom above the highest point so the legend does not sit
		// on the data, and a visible axis when everything is zero.
		p.Y.Max = max(p.Y.Max*1.35, 1)
	}
	// Latency spans milliseconds to seconds around a fault: a log axis
	// shows the p50 and the p99 both.
	lo := math.Inf(1)
	for _, p := range pts {
		for _, v := range []float64{p.p50, p.p99} {
			if v > 0 {
				lo = min(lo, v)
			}
		}
	}
	if lo > 0 && !math.IsInf(lo, 1) {
		lat.Y.Scale, lat.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		lat.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
		lat.Y.Max *= 4
	} else {
		lat.Y.Max = max(lat.Y.Max*1.35, 1)
	}

	plots := [][]*plot.Plot{{rate}, {lat}, {errp}}
	return renderSVG(460, 330, func(dc draw.Canvas) {
		tiles := draw.Tiles{Rows: 3, Cols: 1, PadY: 6, PadTop: 4, PadBottom: 2, PadLeft: 2, PadRight: 8}
		canvases := plot.Align(plots, tiles, dc)
		for i, row := range plots {
			row[0].Draw(canvases[i][0])
		}
	})
}

func maxY(xys plotter.XYs) float64 {
	m := 0.0
	for _, p := range xys {
		if !math.IsInf(p.Y, 0) && !math.IsNaN(p.Y) {
			m = max(m, p.Y)
		}
	}
	return m
}

// obsValue is one recovery time of a case.
type obsValue struct {
	v      float64
	passed bool
}

// recoveryPlot shows, for each case of the schedule, its recovery times
// across rounds: a box over the points themselves, failed cases' points
// in red. It returns "" when no case recovered.
func recoveryPlot(r *results) (string, error) {
	var names []string
	seen := map[string]int{}
	for _, n := range r.Schedule {
		if _, ok := seen[n]; !ok {
			seen[n] = len(names)
			names = append(names, n)
		}
	}
	byCase := map[string][]obsValue{}
	var neverX plotter.XYs // Y is the case's place in names until flipped below
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			if _, ok := seen[c.Case]; !ok {
				seen[c.Case] = len(names)
				names = append(names, c.Case)
			}
			switch {
			case !c.HealthyTime.IsZero():
				byCase[c.Case] = append(byCase[c.Case], obsValue{c.RecoverySeconds, c.Passed})
			case !c.RecoverTime.IsZero():
				// Recovered but never healthy: a cross at the timeout, so
				// that the worst rounds are not the ones missing.
				neverX = append(neverX, plotter.XY{X: r.RecoveryTimeoutSeconds, Y: float64(seen[c.Case])})
			}
		}
	}
	for i := range neverX {
		neverX[i].Y = float64(len(names) - 1 - int(neverX[i].Y))
	}
	if len(byCase) == 0 && len(neverX) == 0 {
		return "", nil
	}
	p := newPlot()
	p.X.Label.Text = "recovery seconds (recover → every member healthy)"
	p.X.Min = 0
	p.Y.Padding = 4
	p.Legend.Top = false
	// The first case at the top, as in the table.
	ylabels := make([]string, len(names))
	loc := func(i int) float64 { return float64(len(names) - 1 - i) }
	for i, n := range names {
		ylabels[len(names)-1-i] = n
	}
	var ok, failed plotter.XYs
	for i, n := range names {
		vs := byCase[n]
		if len(vs) == 0 {
			continue
		}
		values := make(plotter.Values, len(vs))
		for j, o := range vs {
			values[j] = o.v
			pt := plotter.XY{X: o.v, Y: loc(i)}
			if o.passed {
				ok = append(ok, pt)
			} else {
				failed = append(failed, pt)
			}
		}
		if len(vs) > 1 {
			b, err := plotter.NewBoxPlot(8, loc(i), values)
			if err != nil {
				return "", fmt.Errorf("htmlreport: recovery of %s: %w", n, err)
			}
			b.Horizontal = true
			b.BoxStyle.Color, b.MedianStyle.Color, b.WhiskerStyle.Color = colP50, colP50, colP50
			b.BoxStyle.Width, b.MedianStyle.Width, b.WhiskerStyle.Width = 0.8, 1.4, 0.8
			b.GlyphStyle.Radius = 0 // the points are drawn below
			p.Add(b)
		}
	}
	for _, s := range []struct {
		xys   plotter.XYs
		col   color.Color
		shape draw.GlyphDrawer
		lab   string
	}{
		{ok, colOK, draw.CircleGlyph{}, "passed"},
		{failed, colFail, draw.CircleGlyph{}, "failed"},
		{neverX, colFail, draw.CrossGlyph{}, "never healthy (at the timeout)"},
	} {
		if len(s.xys) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(s.xys)
		if err != nil {
			return "", fmt.Errorf("htmlreport: recovery plot: %w", err)
		}
		sc.GlyphStyle.Color, sc.GlyphStyle.Radius, sc.GlyphStyle.Shape = s.col, 2.4, s.shape
		if _, cross := s.shape.(draw.CrossGlyph); cross {
			sc.GlyphStyle.Radius = 4
		}
		p.Add(sc)
		p.Legend.Add(s.lab, sc)
		for _, xy := range s.xys {
			p.X.Max = max(p.X.Max, xy.X)
		}
	}
	// Recovery spans tenths of a second to the timeout: when it spans
	// more than a decade or so, a log axis keeps the fast cases' spread
	// visible next to a slow one.
	lo := math.Inf(1)
	for _, vs := range byCase {
		for _, o := range vs {
			if o.v > 0 {
				lo = min(lo, o.v)
			}
		}
	}
	if !math.IsInf(lo, 1) && p.X.Max/lo > 20 && allPositive(byCase) {
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		p.X.Min = math.Pow(10, math.Floor(math.Log10(lo)))
		p.X.Label.Text += ", log scale"
	}
	// Room on the right for the legend beside the slowest points.
	p.X.Max *= 1.25
	p.NominalY(ylabels...)
	h := 50 + 14*vg.Length(len(names))
	return renderSVG(640, h, func(dc draw.Canvas) { p.Draw(dc) })
}

func allPositive(byCase map[string][]obsValue) bool {
	for _, vs := range byCase {
		for _, o := range vs {
			if o.v <= 0 {
				return false
			}
		}
	}
	return true
}

var svgSize = regexp.MustCompile(`<svg width="[^"]*" height="[^"]*"`)

// renderSVG draws onto a w×h point SVG canvas and returns the SVG element
// alone, ready to be inlined in HTML: no XML prolog, and sized by CSS
// through its class rather than by fixed dimensions.
func renderSVG(w, h vg.Length, paint func(draw.Canvas)) (s string, err error) {
	defer func() {
		// gonum panics on some degenerate inputs (an axis whose minimum
		// exceeds its maximum); a bad case must not take the page down.
		if e := recover(); e != nil {
			s, err = "", fmt.Errorf("htmlreport: plot: %v", e)
		}
	}()
	c := vgsvg.New(w, h)
	paint(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return "", fmt.Errorf("htmlreport: plot: %w", err)
	}
	out := buf.String()
	if i := strings.Index(out, "<svg"); i >= 0 {
		out = out[i:]
	}
	out = svgSize.ReplaceAllLiteralString(out, `<svg class="plot" role="img"`)
	return out, nil
}
