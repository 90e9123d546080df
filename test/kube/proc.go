package kube

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// stopTimeout is how long a process may take to handle SIGTERM before it is killed. The
// apiserver drains its requests and closes its watches on SIGTERM, which takes a second or
// two on a loaded machine.
const stopTimeout = 15 * time.Second

// proc is a process of the cluster writing its output to a log file. It is always waited
// for, so it never stays a zombie: PID 1 here does not reap orphans.
type proc struct {
	name string
	log  string // path of the file holding its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the result of Wait; set before done is closed
}

func startProc(name, logPath string, argv []string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kube: start %s: %w", name, err)
	}
	defer f.Close() // the child has its own descriptor
	p := &proc{name: name, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout = f
	p.cmd.Stderr = f
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("kube: start %s: %w", name, err)
	}
	go func() {
		if err := p.cmd.Wait(); err != nil {
			p.err = fmt.Errorf("kube: %s: %w", name, err)
		} else {
			p.err = fmt.Errorf("kube: %s exited", name)
		}
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM, then SIGKILL if the process still runs after stopTimeout, and waits
// for it to exit.
func (p *proc) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kube: stop %s: %w", p.name, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kube: kill %s: %w", p.name, err)
	}
	<-p.done
	return nil
}

// tail returns up to the last n bytes of the process's log, for error messages.
func (p *proc) tail(n int64) string {
	f, err := os.Open(p.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		if _, err := f.Seek(-n, io.SeekEnd); err != nil {
			return err.Error()
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
