//go:build !linux

package kubeapitest

import "syscall"

// setParentDeathSignal is a no-op where the kernel has no such signal;
// Stop (run by t.Cleanup) is then the only teardown.
func setParentDeathSignal(*syscall.SysProcAttr) {}
