package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// kernelMemFields are the /proc/meminfo lines that nftables objects (rules,
// chains, sets and their elements, per-CPU counters) and conntrack entries
// are allocated from. Reclaimable slab (dentries, inodes) is left out: it
// moves with file system activity, not with rules.
var kernelMemFields = []string{"SUnreclaim", "VmallocUsed", "Percpu"}

// kernelMem returns the sum of kernelMemFields in bytes. /proc/meminfo is
// machine-wide: anything else running moves it too.
func kernelMem() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var sum int64
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, _ := strings.Cut(s.Text(), ":")
		for _, want := range kernelMemFields {
			if name == want {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/meminfo %s: %w", name, err)
				}
				sum += kb << 10
			}
		}
	}
	return sum, s.Err()
}

// settledKernelMem waits until kernelMem holds still and returns it: nftables
// frees a committed transaction's objects from a workqueue and after RCU
// grace periods, so memory keeps moving for a while after a change.
func settledKernelMem(ctx context.Context) (int64, error) {
	prev, err := kernelMem()
	for range 40 {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		cur, err := kernelMem()
		if err != nil {
			return 0, err
		}
		if d := cur - prev; -256<<10 < d && d < 256<<10 {
			return cur, nil
		}
		prev = cur
	}
	return prev, err
}

// liveHeap returns the bytes of this process's heap that are reachable
// after a full garbage collection.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// machine describes where the benchmark ran.
type machine struct {
	cpus     int
	cpuModel string
	kernel   string
	memory   string
	goVer    string
	iptables string
	wrk      string
}

func describeMachine(ctx context.Context) (machine, error) {
	m := machine{cpus: runtime.NumCPU(), goVer: runtime.Version()}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return m, err
	}
	m.kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	for _, f := range []struct {
		file, key string
		into      *string
	}{
		{"/proc/cpuinfo", "model name", &m.cpuModel},
		{"/proc/meminfo", "MemTotal", &m.memory},
	} {
		data, err := os.ReadFile(f.file)
		if err != nil {
			return m, err
		}
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == f.key {
				*f.into = strings.TrimSpace(v)
				break
			}
		}
	}
	for _, v := range []struct {
		argv []string
		into *string
	}{
		{[]string{"iptables-nft", "--version"}, &m.iptables},
		{[]string{"wrk", "--version"}, &m.wrk},
	} {
		// wrk prints its version with the usage and exits 1.
		out, _ := exec.CommandContext(ctx, v.argv[0], v.argv[1:]...).CombinedOutput()
		first, _, _ := bytes.Cut(out, []byte("\n"))
		if len(first) == 0 {
			return m, fmt.Errorf("%s: no version", v.argv[0])
		}
		*v.into = string(bytes.TrimSpace(first))
	}
	return m, nil
}

// loadAverage is the first three fields of /proc/loadavg: other work on the
// machine competes with the lab for its cores.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}
