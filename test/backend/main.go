// Command backend is the test backend the end-to-end tests, the demo and
// the benchmarks run inside network namespaces. It names itself in every
// answer, so a test can tell which backend a flow reached:
//
//   - HTTP on -http: "NAME REMOTEADDR\n" for any request;
//   - TCP on -tcp: writes "NAME REMOTEADDR\n" on accept, then echoes
//     every line back until the client closes (long-lived flows);
//   - UDP on -udp: answers each datagram with "NAME REMOTEADDR\n".
//
// It stops on SIGTERM or SIGINT.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	name := flag.String("name", "backend", "name to answer with")
	httpAddr := flag.String("http", "", "HTTP listen address")
	tcpAddr := flag.String("tcp", "", "TCP line-echo listen address")
	udpAddr := flag.String("udp", "", "UDP listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	if *httpAddr != "" {
		srv := &http.Server{Addr: *httpAddr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s\n", *name, r.RemoteAddr)
		})}
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			log.Fatal(err)
		}
		wg.Go(func() { _ = srv.Serve(ln) })
		wg.Go(func() { <-ctx.Done(); _ = srv.Close() })
	}
	if *tcpAddr != "" {
		ln, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			log.Fatal(err)
		}
		wg.Go(func() { echo(ctx, ln, *name) })
		wg.Go(func() { <-ctx.Done(); ln.Close() })
	}
	if *udpAddr != "" {
		pc, err := net.ListenPacket("udp", *udpAddr)
		if err != nil {
			log.Fatal(err)
		}
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s\n", *name, from), from)
			}
		})
		wg.Go(func() { <-ctx.Done(); pc.Close() })
	}
	fmt.Fprintln(os.Stderr, "backend", *name, "ready")
	wg.Wait()
}

func echo(ctx context.Context, ln net.Listener, name string) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conns.Go(func() {
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			r := bufio.NewScanner(c)
			for r.Scan() {
				if _, err := fmt.Fprintf(c, "%s\n", r.Text()); err != nil {
					return
				}
			}
		})
	}
}
