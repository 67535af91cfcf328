// Command lap-kubeapi runs a real kube-apiserver (k8s.io/kubernetes, the
// same code as a cluster's) over an embedded etcd, on free loopback ports,
// for tests. It is the bottom layer of lap's Kubernetes test rigs: the
// Knative client tests run against it, and Knative in a box adds Knative's
// real control plane on top of it.
//
// It lives in its own Go module because the apiserver needs k8s.io/*
// v0.34 while lap's Knative libraries need v0.29; tests in the main module
// start this binary through lap.dev/lap/e2e/kubeapitest.
//
// Usage:
//
//	lap-kubeapi --dir DIR [--listen-ip IP] [--token-auth-file FILE] [-- kube-apiserver flags...]
//
// DIR receives the state (etcd data, certificates, keys). The apiserver
// listens on a free port of --listen-ip (default 127.0.0.1; Knative in a
// box gives its host address, which its network namespaces reach, and the
// serving certificate names it). Once /readyz
// answers, DIR/kubeconfig is written (atomically, so its existence means
// ready) for the cluster admin (a static token in group system:masters).
// Lines of --token-auth-file (token,user,uid,"group1,group2") are added to
// the apiserver's static tokens, so tests can act as other users, e.g. a
// ServiceAccount. Flags after -- go to kube-apiserver after the rig's own
// (see defaults in run): a flag given again overrides a single value and
// adds to a list. SIGINT or SIGTERM shuts both servers down and exits 0.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	basecompatibility "k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lap-kubeapi:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lap-kubeapi", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory (required); DIR/kubeconfig appears when ready")
	tokens := fs.String("token-auth-file", "", "extra static tokens, kube-apiserver's CSV format")
	fsync := fs.Bool("etcd-fsync", false, "fsync etcd writes (off: a test rig does not outlive its machine)")
	listenIP := fs.String("listen-ip", "127.0.0.1", "address the apiserver listens on (a free port of it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	dirAbs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dirAbs, 0o700); err != nil {
		return err
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dirAbs, "etcd"), *fsync)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer etcd.Close()

	files, err := writeCredentials(dirAbs, *tokens)
	if err != nil {
		return err
	}

	if net.ParseIP(*listenIP) == nil {
		return fmt.Errorf("--listen-ip %q is not an IP address", *listenIP)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(*listenIP, "0"))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port

	s := options.NewServerRunOptions()
	apiFlags := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		apiFlags.AddFlagSet(f)
	}
	defaults := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + *listenIP,
		"--cert-dir=" + filepath.Join(dirAbs, "certs"),
		"--token-auth-file=" + files.tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + files.saKey,
		"--service-account-signing-key-file=" + files.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller-manager creates default ServiceAccounts here.
		"--disable-admission-plugins=ServiceAccount",
		// Endpoints refuse loopback addresses; nothing here needs the
		// kubernetes Service's endpoints.
		"--endpoint-reconciler-type=none",
		// Webhooks (Knative in a box) are called at endpoint addresses.
		"--enable-aggregator-routing=true",
	}
	if err := apiFlags.Parse(append(defaults, fs.Args()...)); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	// A listener opened here, not a port picked and closed, so parallel
	// rigs never race for a port.
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = port

	completed, err := s.Complete(ctx)
	if err != nil {
		return fmt.Errorf("complete options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}

	apiCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- app.Run(apiCtx, completed) }()

	host := "https://" + net.JoinHostPort(*listenIP, strconv.Itoa(port))
	if err := waitReady(ctx, host, files, done); err != nil {
		return err
	}
	if err := writeKubeconfig(filepath.Join(dirAbs, "kubeconfig"), host, files); err != nil {
		return err
	}
	select {
	case err := <-done:
		return fmt.Errorf("kube-apiserver stopped: %w", err)
	case <-ctx.Done():
	}
	cancel()
	// Let the apiserver drain before etcd goes away under it.
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return nil
}

// startEtcd starts a single-member etcd on free loopback ports. The ports
// are picked before etcd binds them (etcd's gRPC gateway dials the
// configured address, so port 0 will not do); losing the race for one to
// another process is retried.
func startEtcd(dir string, fsync bool) (*embed.Etcd, string, error) {
	var lastErr error
	for range 5 {
		client, err := freePort()
		if err != nil {
			return nil, "", err
		}
		peer, err := freePort()
		if err != nil {
			return nil, "", err
		}
		cfg := embed.NewConfig()
		cfg.Name = "lap-kubeapi"
		cfg.Dir = dir
		cfg.LogLevel = "error"
		cfg.UnsafeNoFsync = !fsync
		cu := url.URL{Scheme: "http", Host: client}
		pu := url.URL{Scheme: "http", Host: peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			if lastErr = err; strings.Contains(err.Error(), "address already in use") {
				continue
			}
			return nil, "", err
		}
		select {
		case <-e.Server.ReadyNotify():
			return e, cu.String(), nil
		case err := <-e.Err():
			e.Close()
			return nil, "", err
		case <-time.After(time.Minute):
			e.Close()
			return nil, "", errors.New("etcd not ready after a minute")
		}
	}
	return nil, "", lastErr
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

type credentials struct {
	tokens     string // path of the token auth file
	saKey      string // path of the ServiceAccount signing key
	adminToken string
}

// writeCredentials creates the ServiceAccount key (kept across restarts
// on the same DIR) and a token file with a fresh admin token.
func writeCredentials(dir, extraTokens string) (credentials, error) {
	c := credentials{tokens: filepath.Join(dir, "tokens.csv"), saKey: filepath.Join(dir, "sa.key")}
	if _, err := os.Stat(c.saKey); errors.Is(err, os.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return c, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return c, err
		}
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(c.saKey, pemKey, 0o600); err != nil {
			return c, err
		}
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return c, err
	}
	c.adminToken = hex.EncodeToString(b)
	lines := c.adminToken + `,lap-kubeapi-admin,lap-kubeapi-admin,"system:masters"` + "\n"
	if extraTokens != "" {
		extra, err := os.ReadFile(extraTokens)
		if err != nil {
			return c, fmt.Errorf("read --token-auth-file: %w", err)
		}
		lines += string(extra)
	}
	return c, os.WriteFile(c.tokens, []byte(lines), 0o600)
}

// waitReady polls /readyz until it answers ok, the apiserver stops or ctx
// ends.
func waitReady(ctx context.Context, host string, c credentials, done <-chan error) error {
	cfg := &rest.Config{Host: host, BearerToken: c.adminToken, Timeout: 5 * time.Second}
	cfg.Insecure = true // only while waiting: the cert dir is filled during start
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	var last error
	for {
		select {
		case err := <-done:
			return fmt.Errorf("kube-apiserver stopped before ready: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("kube-apiserver not ready after 2m: %v", last)
		case <-tick.C:
		}
		var code int
		res := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		if last = res.Error(); last == nil && code == 200 {
			return nil
		}
	}
}

// writeKubeconfig writes an admin kubeconfig that trusts the apiserver's
// self-signed certificate, via a rename so readers never see half a file.
func writeKubeconfig(path, host string, c credentials) error {
	ca, err := os.ReadFile(filepath.Join(filepath.Dir(path), "certs", "apiserver.crt"))
	if err != nil {
		return fmt.Errorf("read serving certificate: %w", err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["lap-kubeapi"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: ca}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: c.adminToken}
	kc.Contexts["lap-kubeapi"] = &clientcmdapi.Context{Cluster: "lap-kubeapi", AuthInfo: "admin"}
	kc.CurrentContext = "lap-kubeapi"
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*kc, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
