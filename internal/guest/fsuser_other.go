//go:build !linux

package guest

import "errors"

// asUser can only drop to another user's file-system identity on Linux.
func asUser(u sessUser, fn func() error) error {
	if !u.drop {
		return fn()
	}
	return errors.New("file operations as another user need Linux")
}
