package kubeapitest

import "syscall"

// setParentDeathSignal makes the kernel stop the apiserver if the test
// process dies without calling Stop.
func setParentDeathSignal(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGTERM }
