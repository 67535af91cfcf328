// Package kubeapitest starts a real kube-apiserver with an embedded etcd
// (the lap-kubeapi binary built from the e2e/kubeapi module by `make
// test`) for a test, and tears it down. Tests of lap's Kubernetes code talk
// to it through ordinary client-go configs.
//
// The apiserver is a separate process on purpose: it needs k8s.io/* v0.34
// while lap's Knative libraries need v0.29, so the two cannot share a
// binary. This package only execs the binary and reads the kubeconfig it
// writes; it imports nothing of v0.34.
package kubeapitest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// BinaryEnv names the environment variable that points at the lap-kubeapi
// binary; unset, Binary looks for bin/lap-kubeapi in the repository.
const BinaryEnv = "LAP_KUBEAPI_BIN"

// Token is a static bearer token the apiserver accepts, for a user in
// groups. A ServiceAccount is the user
// "system:serviceaccount:<namespace>:<name>" in the groups
// "system:serviceaccounts" and "system:serviceaccounts:<namespace>".
type Token struct {
	Token, User string
	Groups      []string
}

// ServiceAccountToken is the Token of a ServiceAccount, so that RBAC
// bindings to that ServiceAccount apply to it.
func ServiceAccountToken(token, namespace, name string) Token {
	return Token{
		Token:  token,
		User:   "system:serviceaccount:" + namespace + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
}

// Options configure Start.
type Options struct {
	// Binary is the lap-kubeapi binary; "" = Binary().
	Binary string
	// Dir holds the apiserver's state and log; "" = a new temporary
	// directory removed by Stop.
	Dir string
	// Tokens are extra users the apiserver authenticates.
	Tokens []Token
	// Args are extra kube-apiserver flags, parsed after the rig's: one
	// given again overrides a single value and adds to a list.
	Args []string
	// ListenIP is the address the apiserver listens on; "" = 127.0.0.1.
	ListenIP string
	// Env is added to the apiserver process's environment.
	Env []string
	// Timeout bounds the start; 0 = two minutes.
	Timeout time.Duration
}

// Server is a running kube-apiserver.
type Server struct {
	// Dir holds etcd's data, the certificates and kube-apiserver.log.
	Dir string
	// Kubeconfig is the admin kubeconfig file (group system:masters).
	Kubeconfig string
	// Config is the admin client config.
	Config *rest.Config
	// CAFile is the apiserver's serving certificate chain (its CA
	// included), e.g. a controller-manager's --root-ca-file.
	CAFile string
	// ServiceAccountKeyFile is the key ServiceAccount tokens are signed
	// with, e.g. a controller-manager's
	// --service-account-private-key-file.
	ServiceAccountKeyFile string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	ownDir  bool
}

// Binary returns the lap-kubeapi binary: $LAP_KUBEAPI_BIN, or
// bin/lap-kubeapi at the root of the repository containing the working
// directory. The error says how to build it.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 20 { // bounded: a path has fewer components than this
		if _, err := os.Stat(filepath.Join(dir, "e2e", "kubeapi", "go.mod")); err == nil {
			bin := filepath.Join(dir, "bin", "lap-kubeapi")
			if _, err := os.Stat(bin); err != nil {
				return "", fmt.Errorf("%s not built: run `make test` (or `make bin/lap-kubeapi`) at %s", bin, dir)
			}
			return bin, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("lap-kubeapi not found: set %s or run the tests inside lap's repository", BinaryEnv)
}

// Start runs the apiserver and returns once it is ready. Stop it with
// Stop; it also dies with the calling process.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Binary == "" {
		bin, err := Binary()
		if err != nil {
			return nil, err
		}
		opts.Binary = bin
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	s := &Server{Dir: opts.Dir, done: make(chan struct{})}
	if s.Dir == "" {
		dir, err := os.MkdirTemp("", "lap-kubeapi-")
		if err != nil {
			return nil, err
		}
		s.Dir, s.ownDir = dir, true
	}
	s.Kubeconfig = filepath.Join(s.Dir, "kubeconfig")
	s.CAFile = filepath.Join(s.Dir, "certs", "apiserver.crt")
	s.ServiceAccountKeyFile = filepath.Join(s.Dir, "sa.key")
	// A kubeconfig left by an earlier run in the same Dir is stale.
	if err := os.Remove(s.Kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	args := []string{"--dir", s.Dir}
	if len(opts.Tokens) > 0 {
		path := filepath.Join(s.Dir, "extra-tokens.csv")
		if err := os.WriteFile(path, tokenFile(opts.Tokens), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--token-auth-file", path)
	}
	if opts.ListenIP != "" {
		args = append(args, "--listen-ip", opts.ListenIP)
	}
	if len(opts.Args) > 0 {
		args = append(append(args, "--"), opts.Args...)
	}
	logFile, err := os.Create(filepath.Join(s.Dir, "kube-apiserver.log"))
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(opts.Binary, args...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if len(opts.Env) > 0 {
		s.cmd.Env = append(os.Environ(), opts.Env...)
	}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	setParentDeathSignal(s.cmd.SysProcAttr)
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", opts.Binary, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		logFile.Close()
		close(s.done)
	}()

	if err := s.waitKubeconfig(ctx, opts.Timeout); err != nil {
		tail := s.LogTail(4096)
		if serr := s.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop it: %w", serr))
		}
		return nil, fmt.Errorf("kube-apiserver did not start: %w\n%s", err, tail)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		if serr := s.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop the apiserver: %w", serr))
		}
		return nil, fmt.Errorf("read %s: %w", s.Kubeconfig, err)
	}
	// Tests create many objects quickly; client-go's default of 5 QPS
	// would make them wait on the client, not on the server.
	cfg.QPS, cfg.Burst = 500, 1000
	s.Config = cfg
	return s, nil
}

// waitKubeconfig polls for the kubeconfig, which lap-kubeapi writes
// (atomically) only once the apiserver answers /readyz.
func (s *Server) waitKubeconfig(ctx context.Context, timeout time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 25*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		if _, err := os.Stat(s.Kubeconfig); err == nil {
			return true, nil
		}
		select {
		case <-s.done:
			return false, fmt.Errorf("lap-kubeapi exited: %v", s.waitErr)
		default:
			return false, nil
		}
	})
	if err != nil && ctx.Err() == nil && wait.Interrupted(err) {
		return fmt.Errorf("not ready after %s: %w", timeout, err)
	}
	return err
}

// ConfigFor returns a client config for the user of a token given in
// Options.Tokens: same server and CA, that token instead of the admin's.
func (s *Server) ConfigFor(token string) *rest.Config {
	cfg := rest.AnonymousClientConfig(s.Config)
	cfg.BearerToken = token
	cfg.QPS, cfg.Burst = s.Config.QPS, s.Config.Burst
	return cfg
}

// LogTail returns up to the last n bytes of the apiserver's log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "kube-apiserver.log"))
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Stop shuts the apiserver down (SIGTERM, then SIGKILL after 30 s) and
// removes Dir if Start created it. Calling it twice is harmless.
func (s *Server) Stop() error {
	var errs []error
	if s.cmd != nil && s.cmd.Process != nil {
		select {
		case <-s.done:
		default:
			errs = append(errs, signal(s.cmd.Process.Pid, syscall.SIGTERM))
			select {
			case <-s.done:
			case <-time.After(30 * time.Second):
				errs = append(errs, signal(s.cmd.Process.Pid, syscall.SIGKILL))
				<-s.done
			}
		}
	}
	if s.ownDir {
		errs = append(errs, os.RemoveAll(s.Dir))
	}
	return errors.Join(errs...)
}

// signal sends sig to the apiserver's process group; a group already gone
// (it exited between the check and the signal) is no error.
func signal(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to lap-kubeapi (pid %d): %w", sig, pid, err)
	}
	return nil
}

// StartForTest starts an apiserver for t and stops it when t ends. It
// fails t, never skips it, when the binary is missing.
func StartForTest(t testing.TB, opts Options) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", s.LogTail(8192))
		}
		if err := s.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	return s
}

// tokenFile renders tokens in kube-apiserver's token-auth-file format.
func tokenFile(tokens []Token) []byte {
	var b bytes.Buffer
	for _, t := range tokens {
		fmt.Fprintf(&b, "%s,%s,%s", t.Token, t.User, t.User)
		if len(t.Groups) > 0 {
			fmt.Fprintf(&b, ",%q", strings.Join(t.Groups, ","))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}
