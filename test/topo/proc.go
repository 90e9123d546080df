package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is a process started by Lab.Start. It is always waited for, so it never stays a
// zombie, whether or not anyone calls Wait.
type Proc struct {
	name string // the command and its node, for errors
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{}
	err  error // the result of Wait; set before done is closed
}

func start(ctx context.Context, name string, argv []string) (*Proc, error) {
	p := &Proc{name: name, done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.WaitDelay = waitDelay
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("topo: start %s: %w", name, err)
	}
	go func() {
		if err := p.cmd.Wait(); err != nil {
			p.err = fmt.Errorf("topo: %s: %w", name, err)
		}
		close(p.done)
	}()
	return p, nil
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output returns what the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Done is closed when the process has exited and been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns nil if it exited with status 0. Any number
// of goroutines may call it, any number of times.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process (not to its children). It returns an error wrapping
// os.ErrProcessDone if the process has exited.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("topo: signal %s: %w", p.name, err)
	}
	return nil
}

// Stop sends SIGTERM, then SIGKILL if the process still runs after timeout, and waits for it
// to exit. It returns nil once the process has exited, however it ended; Wait tells how.
func (p *Proc) Stop(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-p.done
	return nil
}

// lockedBuffer is a bytes.Buffer that a process writes to while others read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
