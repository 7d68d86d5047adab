package firecracker

import (
	"context"
	"io"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// newLogrusEntry returns a logrus logger for the SDK whose entries go to l. The SDK
// reports routine progress at info level, so info and below become slog debug.
func newLogrusEntry(l *slog.Logger) *logrus.Entry {
	lg := logrus.New()
	lg.Out = io.Discard
	lg.SetLevel(logrus.DebugLevel)
	if !l.Enabled(context.Background(), slog.LevelDebug) {
		lg.SetLevel(logrus.WarnLevel)
	}
	lg.AddHook(slogHook{l})
	return logrus.NewEntry(lg)
}

type slogHook struct{ l *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slog.LevelDebug
	switch {
	case e.Level <= logrus.ErrorLevel:
		level = slog.LevelError
	case e.Level == logrus.WarnLevel:
		level = slog.LevelWarn
	}
	attrs := make([]slog.Attr, 0, len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, slog.Any(k, v))
	}
	h.l.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}
