package kube

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

var (
	binMu sync.Mutex
	bins  = map[string]string{} // binary name -> path, once found
)

// Binary returns the path of name, kube-apiserver or kube-proxy, as test/kube/build.sh
// builds it from the wrapper module test/kube/k8s. The environment variable
// PORTICO_KUBE_APISERVER (PORTICO_KUBE_PROXY) names a binary to use instead. A cached
// binary is found at once; otherwise build.sh builds it, which takes minutes, printing its
// progress to stderr. The result is kept for the life of the process.
func Binary(name string) (string, error) {
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := bins[name]; ok {
		return p, nil
	}
	env := "PORTICO_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("kube: %s names no binary: %w", env, err)
		}
		bins[name] = p
		return p, nil
	}
	script, err := buildScript()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(script, name)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kube: %s %s: %w", script, name, err)
	}
	p := string(bytes.TrimSpace(out))
	bins[name] = p
	return p, nil
}

// buildScript returns the path of build.sh, found beside this source file: tests run in
// their own package's directory, anywhere in the tree.
func buildScript() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("kube: cannot locate test/kube/build.sh: no caller information")
	}
	p := filepath.Join(filepath.Dir(file), "build.sh")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("kube: cannot locate test/kube/build.sh (built with -trimpath?): %w", err)
	}
	return p, nil
}
