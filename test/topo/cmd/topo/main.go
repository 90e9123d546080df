// Command topo realizes containerlab topology files as network namespaces and veth pairs,
// as package topo does for tests, and runs commands in their nodes:
//
//	topo up FILE [--prefix P]            create the namespaces and links, run the exec commands
//	topo down FILE [--prefix P]          delete the namespaces, whoever made them
//	topo exec FILE NODE [--prefix P] -- ARGV...
//
// The namespace of a node is named PREFIX+NODE; the prefix is "<topology name>-" by
// default.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"syscall"

	"portico.dev/appliance/test/topo"
)

const usage = `usage:
  topo up FILE [--prefix P]
  topo down FILE [--prefix P]
  topo exec FILE NODE [--prefix P] -- ARGV...`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code, err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// run carries out one command and returns the exit code.
func run(ctx context.Context, args []string) (int, error) {
	if len(args) == 0 {
		return 2, errors.New(usage)
	}
	cmd, args := args[0], args[1:]
	var argv []string
	if i := slices.Index(args, "--"); cmd == "exec" && i >= 0 {
		args, argv = args[:i], args[i+1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	prefix := fs.String("prefix", "", `namespace name prefix (default "<topology name>-")`)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2, nil // the flag set has printed the error
	}
	want := map[string]int{"up": 1, "down": 1, "exec": 2}[cmd]
	if want == 0 || len(pos) != want || (cmd == "exec") != (len(argv) > 0) {
		return 2, errors.New(usage)
	}
	t, err := topo.Load(pos[0])
	if err != nil {
		return 1, err
	}
	opt := topo.Options{Prefix: *prefix}
	switch cmd {
	case "up":
		lab, err := topo.Up(ctx, t, opt)
		if err != nil {
			return 1, err
		}
		for _, n := range slices.Sorted(maps.Keys(t.Nodes)) {
			fmt.Printf("%s\t%s\n", n, lab.Namespace(n))
		}
	case "down":
		if err := topo.Attach(t, opt).Down(); err != nil {
			return 1, err
		}
	case "exec":
		return execute(ctx, topo.Attach(t, opt), pos[1], argv)
	}
	return 0, nil
}

// execute runs argv in node with this process's standard input and output, so that it may
// be interactive, and returns its exit code.
func execute(ctx context.Context, lab *topo.Lab, node string, argv []string) (int, error) {
	ns := lab.Namespace(node)
	if ns == "" {
		return 1, fmt.Errorf("topo: exec: no node %s", node)
	}
	c := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := c.Run()
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		return exit.ExitCode(), nil
	}
	if err != nil {
		return 1, fmt.Errorf("topo: exec %q on node %s: %w", argv, node, err)
	}
	return 0, nil
}

// parseInterleaved parses flags placed before, between or after the positional arguments,
// and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
