//go:build !linux

package main

import "errors"

type unsupportedOps struct{}

func newNetlinkOps() netOps { return unsupportedOps{} }

func (unsupportedOps) in(string, func(nsOps) error) error {
	return errors.New("vulcan-cni-tap works only on Linux")
}
