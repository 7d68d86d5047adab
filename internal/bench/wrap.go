package bench

// TB is what a `go test -bench` wrapper needs of *testing.B; an interface, so the vulcan
// binary, which links this package, does not link package testing.
type TB interface {
	Helper()
	Fatal(args ...any)
	Skip(args ...any)
}

// Checked ends a benchmark wrapper the way the measurement came out: an error or a
// failed measurement is fatal, a skipped one (python3, QEMU or images missing) skips.
func Checked(b TB, r Result, err error) Result {
	b.Helper()
	switch {
	case err != nil:
		b.Fatal(err)
	case r.Verdict == Error:
		b.Fatal(r.Note)
	case r.Verdict == Skip:
		b.Skip(r.Note)
	}
	return r
}
