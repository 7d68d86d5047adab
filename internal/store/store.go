package store

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/vulcanhq/vulcan/internal/model"
)

var (
	// ErrNotFound is returned when no workload has the given id.
	ErrNotFound = errors.New("workload not found")
	// ErrTransition is returned when an update would make a move the model forbids.
	ErrTransition = errors.New("status transition not allowed")
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a SQLite database of workloads and their logs. It is safe for concurrent use.
type Store struct {
	w *sql.DB // exactly one connection: SQLite has one writer, queueing here beats SQLITE_BUSY
	r *sql.DB // read-only pool; WAL lets these run alongside the writer

	observer atomic.Pointer[Observer]
}

// An Observer hears of every workload and sandbox the store has just written (created or
// updated), after the write committed. The calls come from the writers' goroutines, so
// they must not block: a cluster node queues what it hears for its directory.
type Observer interface {
	WorkloadWritten(w *model.Workload)
	SandboxWritten(sb *model.Sandbox)
}

// Observe sets the store's observer (nil: none).
func (s *Store) Observe(o Observer) {
	if o == nil {
		s.observer.Store(nil)
		return
	}
	s.observer.Store(&o)
}

func (s *Store) wrote(w *model.Workload, sb *model.Sandbox) {
	o := s.observer.Load()
	if o == nil {
		return
	}
	if w != nil {
		(*o).WorkloadWritten(w)
	}
	if sb != nil {
		(*o).SandboxWritten(sb)
	}
}

// Open opens (creating if needed) the database at path and applies pending migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// synchronous(NORMAL) in WAL mode keeps the database consistent after a power loss
	// and only risks the last commits; fsyncing every log batch would cap throughput.
	pragmas := []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(NORMAL)", "foreign_keys(ON)"}
	dsn := func(extra ...string) string {
		q := url.Values{}
		for _, p := range append(pragmas, extra...) {
			q.Add("_pragma", p)
		}
		q.Set("_txlock", "immediate")
		return "file:" + path + "?" + q.Encode()
	}
	w, err := sql.Open("sqlite", dsn())
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	s := &Store{w: w}
	if err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("store: migrate %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn("query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	s.r = r
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	return errors.Join(s.r.Close(), s.w.Close())
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	return s.r.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

// migrate applies every embedded migration newer than the database, each in its own
// transaction together with the bump of its version, so a crash never half-applies one.
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	var current int
	if err := s.w.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&current); err != nil {
		return err
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		base := filepath.Base(name)
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a version number", base)
		}
		if v <= current {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		if err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
				v, base, time.Now().UnixNano())
			return err
		}); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
	}
	return nil
}

// SchemaVersion reports the newest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.r.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&v)
	return v, err
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) (err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// storedSpec is the spec as kept in the spec column: the archive lives in its own table.
func specJSON(spec model.Spec) (string, error) {
	spec.Archive = nil
	b, err := json.Marshal(spec)
	return string(b), err
}

// Create stores a new workload, and its archive if it has one.
func (s *Store) Create(ctx context.Context, w *model.Workload) error {
	spec, err := specJSON(w.Spec)
	if err != nil {
		return fmt.Errorf("store: encode spec: %w", err)
	}
	meta, err := metadataJSON(w.Metadata)
	if err != nil {
		return err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO workloads
			(id, status, runtime, isolation, backend, spec, exit_code, output, stdout, stderr, truncated, error, metadata, created_at, started_at, finished_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			w.ID, w.Status, w.Spec.Runtime, w.Spec.Isolation, w.Backend, spec, w.ExitCode,
			w.Output, w.Stdout, w.Stderr, w.Truncated, w.Error, meta,
			w.CreatedAt.UnixNano(), nanos(w.StartedAt), nanos(w.FinishedAt)); err != nil {
			return err
		}
		if len(w.Spec.Archive) > 0 {
			if _, err := tx.ExecContext(ctx, "INSERT INTO workload_archives (workload_id, data) VALUES (?, ?)", w.ID, w.Spec.Archive); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: create %s: %w", w.ID, err)
	}
	s.wrote(w, nil)
	return nil
}

// Update writes w's mutable fields and new status, together with any log lines, in one
// transaction. It fails with ErrTransition unless the stored status may move to w.Status
// (an unchanged status counts as allowed only for non-terminal workloads, so a running
// workload's fields can be refreshed but a finished one is frozen).
func (s *Store) Update(ctx context.Context, w *model.Workload, lines []model.LogLine) error {
	meta, err := metadataJSON(w.Metadata)
	if err != nil {
		return err
	}
	from := allowedFrom(w.Status)
	if len(from) == 0 {
		return fmt.Errorf("store: update %s to %s: %w", w.ID, w.Status, ErrTransition)
	}
	args := []any{w.Status, w.Backend, w.ExitCode, w.Output, w.Stdout, w.Stderr, w.Truncated, w.Error, meta,
		nanos(w.StartedAt), nanos(w.FinishedAt), w.ID}
	for _, st := range from {
		args = append(args, st)
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE workloads SET status = ?, backend = ?, exit_code = ?, output = ?,
			stdout = ?, stderr = ?, truncated = ?, error = ?, metadata = ?, started_at = ?, finished_at = ?
			WHERE id = ? AND status IN (`+placeholders(len(from))+`)`, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			var cur model.Status
			switch err := tx.QueryRowContext(ctx, "SELECT status FROM workloads WHERE id = ?", w.ID).Scan(&cur); {
			case errors.Is(err, sql.ErrNoRows):
				return ErrNotFound
			case err != nil:
				return err
			}
			return fmt.Errorf("%w: %s → %s", ErrTransition, cur, w.Status)
		}
		return appendLogs(ctx, tx, w.ID, lines)
	})
	if err != nil {
		return fmt.Errorf("store: update %s: %w", w.ID, err)
	}
	s.wrote(w, nil)
	return nil
}

// allowedFrom lists the statuses a workload may be in for an update to leave it in to.
func allowedFrom(to model.Status) []model.Status {
	var out []model.Status
	for _, from := range []model.Status{model.StatusPending, model.StatusRunning, model.StatusCompleted, model.StatusFailed, model.StatusKilled} {
		if model.CanTransition(from, to) || (from == to && !to.Terminal()) {
			out = append(out, from)
		}
	}
	return out
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// AppendLogs stores a batch of a workload's log lines in one transaction. Lines carry
// their sequence numbers; the caller (the engine) is the only writer of a workload's log.
func (s *Store) AppendLogs(ctx context.Context, id string, lines []model.LogLine) error {
	if len(lines) == 0 {
		return nil
	}
	if err := s.tx(ctx, func(tx *sql.Tx) error { return appendLogs(ctx, tx, id, lines) }); err != nil {
		return fmt.Errorf("store: append logs %s: %w", id, err)
	}
	return nil
}

// logBatch keeps each INSERT under SQLite's default limit of 32766 bound parameters.
const logBatch = 400

func appendLogs(ctx context.Context, tx *sql.Tx, id string, lines []model.LogLine) error {
	for len(lines) > 0 {
		n := min(len(lines), logBatch)
		var q strings.Builder
		q.WriteString("INSERT INTO log_lines (workload_id, seq, stream, text, time, partial) VALUES ")
		args := make([]any, 0, n*6)
		for i, l := range lines[:n] {
			if i > 0 {
				q.WriteByte(',')
			}
			q.WriteString("(?,?,?,?,?,?)")
			args = append(args, id, l.Seq, l.Stream, l.Text, l.Time.UnixNano(), l.Partial)
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			return err
		}
		lines = lines[n:]
	}
	return nil
}

// Logs returns up to limit of a workload's log lines with seq > after, in order.
// limit <= 0 means no limit.
func (s *Store) Logs(ctx context.Context, id string, after int64, limit int) ([]model.LogLine, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := s.r.QueryContext(ctx,
		"SELECT seq, stream, text, time, partial FROM log_lines WHERE workload_id = ? AND seq > ? ORDER BY seq LIMIT ?", id, after, limit)
	if err != nil {
		return nil, fmt.Errorf("store: logs %s: %w", id, err)
	}
	defer rows.Close()
	var out []model.LogLine
	for rows.Next() {
		var l model.LogLine
		var t int64
		if err := rows.Scan(&l.Seq, &l.Stream, &l.Text, &t, &l.Partial); err != nil {
			return nil, fmt.Errorf("store: logs %s: %w", id, err)
		}
		l.Time = time.Unix(0, t).UTC()
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: logs %s: %w", id, err)
	}
	return out, nil
}

const workloadColumns = `id, status, runtime, isolation, backend, spec, exit_code, output, stdout, stderr,
	truncated, error, metadata, created_at, started_at, finished_at`

// Get returns a workload. Its spec has no archive; see Archive.
func (s *Store) Get(ctx context.Context, id string) (*model.Workload, error) {
	w, err := scanWorkload(s.r.QueryRowContext(ctx, "SELECT "+workloadColumns+" FROM workloads WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: get %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: get %s: %w", id, err)
	}
	return w, nil
}

// Archive returns a workload's code archive, or nil if it was submitted as code.
func (s *Store) Archive(ctx context.Context, id string) ([]byte, error) {
	var b []byte
	err := s.r.QueryRowContext(ctx, "SELECT data FROM workload_archives WHERE workload_id = ?", id).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: archive %s: %w", id, err)
	}
	return b, nil
}

// Filter selects workloads in List. Zero fields match everything.
type Filter struct {
	Status    model.Status
	Runtime   model.Runtime
	Isolation model.Isolation
	Limit     int // <= 0 means 50
	Offset    int
}

// List returns the workloads matching f, newest first, and how many match in total.
func (s *Store) List(ctx context.Context, f Filter) ([]*model.Workload, int, error) {
	var where []string
	var args []any
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, f.Status)
	}
	if f.Runtime != "" {
		where, args = append(where, "runtime = ?"), append(args, f.Runtime)
	}
	if f.Isolation != "" {
		where, args = append(where, "isolation = ?"), append(args, f.Isolation)
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var total int
	if err := s.r.QueryRowContext(ctx, "SELECT COUNT(*) FROM workloads"+cond, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("store: list: %w", err)
	}
	// ULIDs sort by creation time, so the primary key orders newest first.
	rows, err := s.r.QueryContext(ctx, "SELECT "+workloadColumns+" FROM workloads"+cond+" ORDER BY id DESC LIMIT ? OFFSET ?",
		append(args, f.Limit, max(f.Offset, 0))...)
	if err != nil {
		return nil, 0, fmt.Errorf("store: list: %w", err)
	}
	defer rows.Close()
	out := []*model.Workload{}
	for rows.Next() {
		w, err := scanWorkload(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("store: list: %w", err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("store: list: %w", err)
	}
	return out, total, nil
}

// Stats are aggregate figures over every stored workload.
type Stats struct {
	Total     int                   `json:"total"`
	ByStatus  map[model.Status]int  `json:"by_status"`
	ByRuntime map[model.Runtime]int `json:"by_runtime"`
	// Durations cover workloads that started and finished.
	Durations Durations `json:"durations"`
}

// Durations summarise run and queue times in milliseconds.
type Durations struct {
	Count      int     `json:"count"`
	AvgMS      float64 `json:"avg_ms"`
	P50MS      int64   `json:"p50_ms"`
	P95MS      int64   `json:"p95_ms"`
	MaxMS      int64   `json:"max_ms"`
	AvgQueueMS float64 `json:"avg_queue_ms"`
}

// Stats computes aggregate figures.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	st := Stats{ByStatus: map[model.Status]int{}, ByRuntime: map[model.Runtime]int{}}
	count := func(col string, put func(k string, n int)) error {
		rows, err := s.r.QueryContext(ctx, "SELECT "+col+", COUNT(*) FROM workloads GROUP BY "+col)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var n int
			if err := rows.Scan(&k, &n); err != nil {
				return err
			}
			put(k, n)
		}
		return rows.Err()
	}
	if err := count("status", func(k string, n int) { st.ByStatus[model.Status(k)] = n; st.Total += n }); err != nil {
		return st, fmt.Errorf("store: stats: %w", err)
	}
	if err := count("runtime", func(k string, n int) { st.ByRuntime[model.Runtime(k)] = n }); err != nil {
		return st, fmt.Errorf("store: stats: %w", err)
	}
	const ran = " FROM workloads WHERE started_at IS NOT NULL AND finished_at IS NOT NULL"
	var avg, avgQ sql.NullFloat64
	var maxD sql.NullInt64
	if err := s.r.QueryRowContext(ctx, "SELECT COUNT(*), AVG(finished_at - started_at), MAX(finished_at - started_at), AVG(started_at - created_at)"+ran).
		Scan(&st.Durations.Count, &avg, &maxD, &avgQ); err != nil {
		return st, fmt.Errorf("store: stats: %w", err)
	}
	st.Durations.AvgMS = avg.Float64 / 1e6
	st.Durations.MaxMS = maxD.Int64 / 1e6
	st.Durations.AvgQueueMS = avgQ.Float64 / 1e6
	pct := func(p float64) (int64, error) {
		if st.Durations.Count == 0 {
			return 0, nil
		}
		var d int64
		err := s.r.QueryRowContext(ctx, "SELECT finished_at - started_at"+ran+" ORDER BY 1 LIMIT 1 OFFSET ?",
			int(p*float64(st.Durations.Count-1))).Scan(&d)
		return d / 1e6, err
	}
	var err error
	if st.Durations.P50MS, err = pct(0.50); err != nil {
		return st, fmt.Errorf("store: stats: %w", err)
	}
	if st.Durations.P95MS, err = pct(0.95); err != nil {
		return st, fmt.Errorf("store: stats: %w", err)
	}
	return st, nil
}

// Reconcile marks every workload left pending or running — by a process that died
// without finishing them — as failed with reason. It returns how many it changed. Call it
// once at startup, before the engine accepts work.
func (s *Store) Reconcile(ctx context.Context, reason string, now time.Time) (int, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE workloads SET status = ?, error = ?, finished_at = ?
		WHERE status IN (?, ?)`, model.StatusFailed, reason, now.UnixNano(), model.StatusPending, model.StatusRunning)
	if err != nil {
		return 0, fmt.Errorf("store: reconcile: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

type scanner interface{ Scan(...any) error }

func scanWorkload(sc scanner) (*model.Workload, error) {
	var w model.Workload
	var spec, meta string
	var exit sql.NullInt64
	var created int64
	var started, finished sql.NullInt64
	if err := sc.Scan(&w.ID, &w.Status, &w.Spec.Runtime, &w.Spec.Isolation, &w.Backend, &spec, &exit,
		&w.Output, &w.Stdout, &w.Stderr, &w.Truncated, &w.Error, &meta, &created, &started, &finished); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(spec), &w.Spec); err != nil {
		return nil, fmt.Errorf("workload %s: decode spec: %w", w.ID, err)
	}
	if err := json.Unmarshal([]byte(meta), &w.Metadata); err != nil {
		return nil, fmt.Errorf("workload %s: decode metadata: %w", w.ID, err)
	}
	if w.Metadata == nil {
		w.Metadata = map[string]string{}
	}
	if exit.Valid {
		c := int(exit.Int64)
		w.ExitCode = &c
	}
	w.CreatedAt = time.Unix(0, created).UTC()
	w.StartedAt = fromNanos(started)
	w.FinishedAt = fromNanos(finished)
	return &w, nil
}

func metadataJSON(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("store: encode metadata: %w", err)
	}
	return string(b), nil
}

func nanos(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixNano()
}

func fromNanos(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := time.Unix(0, n.Int64).UTC()
	return &t
}
