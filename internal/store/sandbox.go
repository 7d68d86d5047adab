package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
)

// ErrSandboxNotFound is returned for an unknown sandbox id.
var ErrSandboxNotFound = errors.New("sandbox not found")

// sandboxSpecJSON is the spec as stored: env values are secrets and are never written.
func sandboxSpecJSON(spec model.SandboxSpec) (string, error) {
	spec.Env = nil
	spec.Metadata = nil // in its own column and table
	b, err := json.Marshal(spec)
	return string(b), err
}

// CreateSandbox stores a new sandbox with its metadata.
func (s *Store) CreateSandbox(ctx context.Context, sb *model.Sandbox) error {
	spec, err := sandboxSpecJSON(sb.Spec)
	if err != nil {
		return fmt.Errorf("store: encode sandbox spec: %w", err)
	}
	meta, err := metadataJSON(sb.Spec.Metadata)
	if err != nil {
		return err
	}
	vm, err := metadataJSON(sb.VM)
	if err != nil {
		return err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO sandboxes
			(id, state, template, spec, metadata, vm, error, created_at, started_at, ended_at, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			sb.ID, sb.State, sb.Spec.Template, spec, meta, vm, sb.Error,
			sb.CreatedAt.UnixNano(), nanos(sb.StartedAt), nanos(sb.EndedAt), sb.ExpiresAt.UnixNano()); err != nil {
			return err
		}
		for _, k := range slices.Sorted(maps.Keys(sb.Spec.Metadata)) {
			if _, err := tx.ExecContext(ctx, "INSERT INTO sandbox_metadata (sandbox_id, key, value) VALUES (?, ?, ?)",
				sb.ID, k, sb.Spec.Metadata[k]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: create sandbox %s: %w", sb.ID, err)
	}
	s.wrote(nil, sb)
	return nil
}

// UpdateSandbox writes a sandbox's state, error, VM facts and times. It fails with
// ErrTransition unless the stored state may move to sb.State (an unchanged state is
// allowed only while the sandbox lives, so an ended one is frozen).
func (s *Store) UpdateSandbox(ctx context.Context, sb *model.Sandbox) error {
	vm, err := metadataJSON(sb.VM)
	if err != nil {
		return err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var cur model.SandboxState
		if err := tx.QueryRowContext(ctx, "SELECT state FROM sandboxes WHERE id = ?", sb.ID).Scan(&cur); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return ErrSandboxNotFound
			}
			return err
		}
		if cur != sb.State && !cur.CanTransition(sb.State) || cur == sb.State && cur.Terminal() {
			return fmt.Errorf("%w: %s → %s", ErrTransition, cur, sb.State)
		}
		_, err := tx.ExecContext(ctx, `UPDATE sandboxes SET state = ?, vm = ?, error = ?, started_at = ?, ended_at = ?, expires_at = ?
			WHERE id = ?`, sb.State, vm, sb.Error, nanos(sb.StartedAt), nanos(sb.EndedAt), sb.ExpiresAt.UnixNano(), sb.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: update sandbox %s to %s: %w", sb.ID, sb.State, err)
	}
	s.wrote(nil, sb)
	return nil
}

const sandboxColumns = `id, state, spec, metadata, vm, error, created_at, started_at, ended_at, expires_at`

func scanSandbox(row interface{ Scan(...any) error }) (*model.Sandbox, error) {
	var sb model.Sandbox
	var spec, meta, vm string
	var created, expires int64
	var started, ended sql.NullInt64
	if err := row.Scan(&sb.ID, &sb.State, &spec, &meta, &vm, &sb.Error, &created, &started, &ended, &expires); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(spec), &sb.Spec); err != nil {
		return nil, fmt.Errorf("sandbox %s: decode spec: %w", sb.ID, err)
	}
	if err := json.Unmarshal([]byte(meta), &sb.Spec.Metadata); err != nil {
		return nil, fmt.Errorf("sandbox %s: decode metadata: %w", sb.ID, err)
	}
	if err := json.Unmarshal([]byte(vm), &sb.VM); err != nil {
		return nil, fmt.Errorf("sandbox %s: decode vm: %w", sb.ID, err)
	}
	if sb.Spec.Metadata == nil {
		sb.Spec.Metadata = map[string]string{}
	}
	if sb.VM == nil {
		sb.VM = map[string]string{}
	}
	sb.CreatedAt = time.Unix(0, created).UTC()
	sb.StartedAt, sb.EndedAt = fromNanos(started), fromNanos(ended)
	sb.ExpiresAt = time.Unix(0, expires).UTC()
	return &sb, nil
}

// GetSandbox returns one sandbox.
func (s *Store) GetSandbox(ctx context.Context, id string) (*model.Sandbox, error) {
	sb, err := scanSandbox(s.r.QueryRowContext(ctx, "SELECT "+sandboxColumns+" FROM sandboxes WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrSandboxNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// SandboxFilter selects sandboxes for a list, newest first. After is a cursor: the id of
// the last sandbox of the previous page (ids are ULIDs, so they sort by creation).
type SandboxFilter struct {
	States   []model.SandboxState
	Metadata map[string]string // every pair must match
	After    string
	Limit    int // default 50, at most 1000
}

// ListSandboxes returns one page of sandboxes and whether more follow.
func (s *Store) ListSandboxes(ctx context.Context, f SandboxFilter) ([]*model.Sandbox, bool, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 1000)
	var where []string
	var args []any
	if len(f.States) > 0 {
		where = append(where, "state IN (?"+strings.Repeat(",?", len(f.States)-1)+")")
		for _, st := range f.States {
			args = append(args, st)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(f.Metadata)) {
		where = append(where, "id IN (SELECT sandbox_id FROM sandbox_metadata WHERE key = ? AND value = ?)")
		args = append(args, k, f.Metadata[k])
	}
	if f.After != "" {
		where = append(where, "id < ?")
		args = append(args, f.After)
	}
	q := "SELECT " + sandboxColumns + " FROM sandboxes"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC LIMIT ?"
	args = append(args, limit+1)
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, false, fmt.Errorf("store: list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []*model.Sandbox
	for rows.Next() {
		sb, err := scanSandbox(rows)
		if err != nil {
			return nil, false, fmt.Errorf("store: list sandboxes: %w", err)
		}
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("store: list sandboxes: %w", err)
	}
	more := len(out) > limit
	if more {
		out = out[:limit]
	}
	return out, more, nil
}

// ReconcileSandboxes marks every sandbox a previous process left starting, running or
// stopping as lost (its VM died with that process; the backend's reclaim removes what is
// left of it) and returns how many.
func (s *Store) ReconcileSandboxes(ctx context.Context, reason string, now time.Time) (int, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE sandboxes SET state = ?, error = ?, ended_at = ?
		WHERE state IN (?, ?, ?)`, model.SandboxLost, reason, now.UnixNano(),
		model.SandboxStarting, model.SandboxRunning, model.SandboxStopping)
	if err != nil {
		return 0, fmt.Errorf("store: reconcile sandboxes: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// SandboxCounts returns how many sandboxes are in each state.
func (s *Store) SandboxCounts(ctx context.Context) (map[model.SandboxState]int, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
	if err != nil {
		return nil, fmt.Errorf("store: count sandboxes: %w", err)
	}
	defer rows.Close()
	out := map[model.SandboxState]int{}
	for rows.Next() {
		var st model.SandboxState
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}
