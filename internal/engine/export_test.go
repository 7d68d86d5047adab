package engine

// SetKillPendingHook widens the window between Kill marking a queued task and finishing
// it, so a race test can make a worker pick the task up inside it.
func SetKillPendingHook(f func()) (restore func()) {
	old := testHookKillPending
	testHookKillPending = f
	return func() { testHookKillPending = old }
}
