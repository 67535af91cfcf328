package kubelet

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"lap.dev/lap/e2e/box/proc"
)

// probeUserAgent is a kubelet's: Knative's queue-proxy recognises the
// kubelet's probes by it.
var probeUserAgent = "kube-probe/" + strings.TrimPrefix(strings.Join(strings.Split(Version, ".")[:2], "."), "v")

// probeClient makes each probe on a fresh connection, as a kubelet does.
var probeClient = &http.Client{
	Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a kubelet does not verify probe targets
	},
}

// probe runs the container's readiness probe until ctx ends (the process
// exited), updating its readiness. Without a probe a running container is
// ready.
func (c *container) probe(ctx context.Context, p *proc.Process) {
	pr := c.spec.ReadinessProbe
	if pr == nil {
		c.setReady(true)
		return
	}
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	success, failure := max(pr.SuccessThreshold, 1), max(pr.FailureThreshold, 1)
	if d := time.Duration(pr.InitialDelaySeconds) * time.Second; d > 0 && !sleep(ctx, d) {
		return
	}
	var okRun, failRun int32
	for {
		if c.w.terminating() {
			return
		}
		ok := c.probeOnce(ctx, pr) == nil
		if ctx.Err() != nil {
			return
		}
		if ok {
			okRun, failRun = okRun+1, 0
			if okRun >= success {
				c.setReady(true)
			}
		} else {
			okRun, failRun = 0, failRun+1
			if failRun >= failure {
				c.setReady(false)
			}
		}
		c.mu.Lock()
		interval := period
		if !c.everReady {
			interval = c.w.k.cfg.FastProbe
		}
		c.mu.Unlock()
		if !sleep(ctx, interval) {
			return
		}
	}
}

func (c *container) setReady(ready bool) {
	c.mu.Lock()
	changed := c.ready != ready
	c.ready = ready
	if ready {
		c.everReady = true
	}
	c.mu.Unlock()
	if changed {
		c.w.markDirty()
	}
}

// probeOnce runs one httpGet or tcpSocket probe within its timeout.
func (c *container) probeOnce(ctx context.Context, pr *corev1.Probe) error {
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case pr.HTTPGet != nil:
		return c.httpGet(ctx, pr.HTTPGet, true)
	case pr.TCPSocket != nil:
		port, err := c.port(pr.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := pr.TCPSocket.Host
		if host == "" {
			host = c.w.podIP()
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("container %s: unsupported probe", c.spec.Name)
}

// httpGet performs a probe's or a hook's GET; a probe succeeds on
// 200–399.
func (c *container) httpGet(ctx context.Context, g *corev1.HTTPGetAction, isProbe bool) error {
	port, err := c.port(g.Port)
	if err != nil {
		return err
	}
	host := g.Host
	if host == "" {
		host = c.w.podIP()
	}
	scheme := strings.ToLower(string(g.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := g.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", probeUserAgent)
	req.Header.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Set(h.Name, h.Value)
	}
	res, err := probeClient.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if isProbe && (res.StatusCode < 200 || res.StatusCode >= 400) {
		return fmt.Errorf("GET %s: %s", path, res.Status)
	}
	return nil
}

// port resolves a probe's port, by number or by the container's port
// name.
func (c *container) port(p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.spec.Name, p.StrVal)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// memTotal is this machine's memory in bytes, the Node's capacity.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
