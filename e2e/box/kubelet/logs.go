package kubelet

import (
	"bytes"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// logsHandler serves the apiserver's pods/log requests:
// GET /containerLogs/{namespace}/{pod}/{container}?tailLines=&limitBytes=.
// A container's log holds the output of all its runs.
func (k *Kubelet) logsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", func(w http.ResponseWriter, r *http.Request) {
		ns, name, cname := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
		var path string
		k.mu.Lock()
		for _, pw := range k.pods {
			if pw.pod.Namespace == ns && pw.pod.Name == name && pw.findContainer(cname) != nil {
				path = pw.logPath(cname)
			}
		}
		k.mu.Unlock()
		if path == "" {
			http.Error(w, "container "+cname+" of pod "+ns+"/"+name+" is not running on this node", http.StatusNotFound)
			return
		}
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		q := r.URL.Query()
		if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n >= 0 {
			b = tailLines(b, n)
		}
		if n, err := strconv.Atoi(q.Get("limitBytes")); err == nil && n >= 0 && len(b) > n {
			b = b[:n]
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "the box kubelet serves "+strings.Join([]string{"/containerLogs"}, ", ")+" only", http.StatusNotFound)
	})
	return mux
}

// tailLines returns the last n lines of b.
func tailLines(b []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	i := end
	for range n {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return b
		}
		i = j
	}
	return b[i+1:]
}
