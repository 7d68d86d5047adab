// Package store persists workloads and their log lines in SQLite (modernc.org/sqlite, no
// cgo). The database runs in WAL mode with one writer connection, so writes never fight
// for the lock, and a small pool of read-only connections that readers use concurrently.
//
// The store enforces the model's lifecycle: Update refuses a transition model.CanTransition
// forbids, in the same statement that writes it, so two racing writers cannot both win.
package store
