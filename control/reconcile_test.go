package control_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"portico.dev/appliance/control"
)

func desired(t *testing.T, yaml string) control.Desired {
	t.Helper()
	d, _ := control.Compile(control.Inputs{Config: parse(t, yaml)})
	return d
}

// TestReconcilerSequence applies a sequence of Desireds and checks the
// calls each makes, dumped as text: addresses are added before the
// services that use them and removed only after.
func TestReconcilerSequence(t *testing.T) {
	steps := []struct {
		name string
		in   string
		want string
	}{
		{
			name: "first",
			in:   "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}]}]",
			want: `
addrs.Set 203.0.113.10
l4.Set 203.0.113.10:80/tcp
addrs.Set 203.0.113.10
store.Save put bgp vip/203.0.113.10:80/tcp replace`,
		},
		{
			name: "move to another address",
			in:   "vips: [{name: web, address: 203.0.113.11, port: 80, backends: [{address: 10.0.1.11:8080}]}]",
			want: `
addrs.Set 203.0.113.10 203.0.113.11
l4.Set 203.0.113.11:80/tcp
addrs.Set 203.0.113.11
store.Save put vip/203.0.113.11:80/tcp del vip/203.0.113.10:80/tcp`,
		},
		{
			name: "add v6 and a second service on the address",
			in: `vips:
  - {name: web, address: 203.0.113.11, port: 80, backends: [{address: 10.0.1.11:8080}]}
  - {name: dns, address: 203.0.113.11, port: 53, protocol: udp, backends: [{address: 10.0.1.21:53}]}
  - {name: web6, address: "2001:db8::10", port: 80, backends: [{address: "[2001:db8:1::11]:80"}]}`,
			want: `
addrs.Set 203.0.113.11 2001:db8::10
l4.Set 203.0.113.11:80/tcp 203.0.113.11:53/udp [2001:db8::10]:80/tcp
addrs.Set 203.0.113.11 2001:db8::10
store.Save put vip/203.0.113.11:53/udp vip/[2001:db8::10]:80/tcp`,
		},
		{
			name: "same again",
			in: `vips:
  - {name: web6, address: "2001:db8::10", port: 80, backends: [{address: "[2001:db8:1::11]:80"}]}
  - {name: dns, address: 203.0.113.11, port: 53, protocol: udp, backends: [{address: 10.0.1.21:53}]}
  - {name: web, address: 203.0.113.11, port: 80, backends: [{address: 10.0.1.11:8080}]}`,
			want: ``,
		},
		{
			// The addresses stay: only the L4 target and the VIP's
			// part of the stored state change.
			name: "backend change only",
			in: `vips:
  - {name: web, address: 203.0.113.11, port: 80, backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080}]}
  - {name: dns, address: 203.0.113.11, port: 53, protocol: udp, backends: [{address: 10.0.1.21:53}]}
  - {name: web6, address: "2001:db8::10", port: 80, backends: [{address: "[2001:db8:1::11]:80"}]}`,
			want: `
l4.Set 203.0.113.11:80/tcp 203.0.113.11:53/udp [2001:db8::10]:80/tcp
store.Save put vip/203.0.113.11:80/tcp`,
		},
		{
			name: "nothing",
			in:   "vips: []",
			want: `
addrs.Set 203.0.113.11 2001:db8::10
l4.Set
addrs.Set
store.Save del vip/203.0.113.11:80/tcp vip/203.0.113.11:53/udp vip/[2001:db8::10]:80/tcp`,
		},
	}
	w := &world{}
	r := newReconciler(w)
	for _, st := range steps {
		d := desired(t, st.in)
		if err := r.Apply(context.Background(), d); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := strings.Join(w.takeCalls(), "\n"); got != strings.TrimPrefix(st.want, "\n") {
			t.Errorf("%s: calls\n%s\nwant\n%s", st.name, got, strings.TrimPrefix(st.want, "\n"))
		}
		if cur := r.Current(); cur == nil || !reflect.DeepEqual(*cur, d) {
			t.Errorf("%s: Current() is not the applied Desired", st.name)
		}
		if a := r.Applied(); a == nil || !reflect.DeepEqual(*a, d) {
			t.Errorf("%s: Applied() is not the applied Desired", st.name)
		}
		services, addrs, _, _ := w.state()
		if !reflect.DeepEqual(services, d.Services()) || !slices.Equal(addrs, d.Addresses()) {
			t.Errorf("%s: the targets hold %v and %v", st.name, services, addrs)
		}
	}
	w.checkViolations(t)
}

func TestReconcilerEqualDesiredIsNoop(t *testing.T) {
	c := parse(t, mixedVIPs)
	w := &world{}
	r := newReconciler(w)
	if r.Current() != nil {
		t.Fatal("Current() before the first Apply is not nil")
	}
	first, _ := control.Compile(control.Inputs{Config: c, Health: mixedState})
	if err := r.Apply(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	w.takeCalls()

	// A fresh compile of the same inputs, and the Desired saved by the
	// first Apply decoded back (what a restart re-applies): both equal.
	again, _ := control.Compile(control.Inputs{Config: parse(t, mixedVIPs), Health: mixedState})
	_, _, saved, _ := w.state()
	decoded, err := control.DecodeApplied(saved)
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]control.Desired{"same value": first, "recompiled": again, "decoded": decoded} {
		if err := r.Apply(context.Background(), d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if calls := w.takeCalls(); len(calls) != 0 {
			t.Errorf("%s: Apply of an equal Desired called %q", name, calls)
		}
	}
}

func TestReconcilerFailures(t *testing.T) {
	for _, op := range []string{"addrs.Set", "l4.Set", "store.Save"} {
		t.Run(op, func(t *testing.T) {
			ctx := context.Background()
			w := &world{}
			r := newReconciler(w)
			d1 := desired(t, "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}]}]")
			d2 := desired(t, "vips: [{name: web, address: 203.0.113.11, port: 80, backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080}]}]")
			if err := r.Apply(ctx, d1); err != nil {
				t.Fatal(err)
			}
			_, _, saved1, saves := w.state()

			w.fail(op, 1)
			err := r.Apply(ctx, d2)
			if !errors.Is(err, errInjected) || !strings.HasPrefix(err.Error(), "reconcile: ") {
				t.Fatalf("Apply = %v, want the injected fault behind reconcile:", err)
			}
			if cur := r.Current(); cur == nil || !reflect.DeepEqual(*cur, d1) {
				t.Error("a failed Apply changed Current()")
			}
			if a := r.Applied(); a == nil || !reflect.DeepEqual(*a, d1) {
				t.Error("a failed Apply changed Applied()")
			}
			if _, _, saved, n := w.state(); n != saves || !maps.EqualFunc(saved, saved1, bytes.Equal) {
				t.Errorf("a failed Apply saved (%d saves, want %d)", n, saves)
			}
			services, _, _, _ := w.state()
			if op == "addrs.Set" && !reflect.DeepEqual(services, d1.Services()) {
				t.Error("services changed although their addresses could not be added")
			}

			// A later Apply of the same Desired retries it in full.
			w.takeCalls()
			if err := r.Apply(ctx, d2); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if calls := w.takeCalls(); len(calls) != 4 {
				t.Errorf("retry made calls %q, want the 4 of a full Apply", calls)
			}
			if cur := r.Current(); cur == nil || !reflect.DeepEqual(*cur, d2) {
				t.Error("the retry did not make d2 current")
			}
			services, addrs, saved, _ := w.state()
			if !reflect.DeepEqual(services, d2.Services()) || !slices.Equal(addrs, d2.Addresses()) {
				t.Errorf("the targets hold %v and %v", services, addrs)
			}
			if got, err := control.DecodeApplied(saved); err != nil || !reflect.DeepEqual(got, d2) {
				t.Errorf("saved state is not d2 (%v)", err)
			}
			w.checkViolations(t)
		})
	}
}

func TestReconcilerFirstApplyFails(t *testing.T) {
	w := &world{}
	r := newReconciler(w)
	w.fail("l4.Set", 1)
	d := desired(t, mixedVIPs)
	if err := r.Apply(context.Background(), d); err == nil {
		t.Fatal("Apply succeeded")
	}
	if r.Current() != nil {
		t.Error("Current() is set after a failed first Apply")
	}
	if _, _, _, n := w.state(); n != 0 {
		t.Error("a failed first Apply saved")
	}
	if err := r.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if r.Current() == nil {
		t.Error("Current() is nil after the retry")
	}
}

func TestReconcilerResync(t *testing.T) {
	w := &world{}
	r := newReconciler(w)
	d := desired(t, mixedVIPs)
	if err := r.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	w.takeCalls()
	r.Resync()
	if r.Current() != nil {
		t.Error("Current() after Resync is not nil")
	}
	// The datapath still holds d: what the gNMI server shows.
	if a := r.Applied(); a == nil || !reflect.DeepEqual(*a, d) {
		t.Error("Applied() after Resync is not the Desired applied before")
	}
	if err := r.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"l4.Resync",
		"addrs.Set 198.51.100.7 203.0.113.10 2001:db8::10",
		"l4.Set 198.51.100.7:8080/tcp 203.0.113.10:80/tcp 203.0.113.10:53/udp [2001:db8::10]:443/tcp",
		"addrs.Set 198.51.100.7 203.0.113.10 2001:db8::10",
		// The store is not read back: it holds d already.
	}
	if calls := w.takeCalls(); !slices.Equal(calls, want) {
		t.Errorf("calls after Resync\n%s\nwant\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
}

func TestDecodeApplied(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		state map[string]bool
	}{
		{name: "mixed, some down", in: mixedVIPs, state: mixedState},
		{name: "all down", in: healthVIPs, state: map[string]bool{"web/10.0.1.11:8080": false, "web/10.0.1.12:8080": false, "web/10.0.1.13:8080": false}},
		{name: "no VIPs", in: "vips: []"},
		{name: "empty file", in: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &world{}
			r := newReconciler(w)
			d, _ := control.Compile(control.Inputs{Config: parse(t, tt.in), Health: tt.state})
			if err := r.Apply(context.Background(), d); err != nil {
				t.Fatal(err)
			}
			_, _, saved, _ := w.state()
			got, err := control.DecodeApplied(saved)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, d) {
				t.Errorf("decoded\n%+v\nwant\n%+v\nfrom %s", got, d, saved)
			}
			if !reflect.DeepEqual(got.Health(), d.Health()) {
				t.Error("the decoded Desired's Health() differs")
			}
		})
	}
	for _, bad := range []map[string]string{
		{"desired_state": ""}, {"desired_state": "{"}, {"desired_state": `{"vips": 3}`},
		{"vip/x": `{"slots": ["nope"]}`}, {"bgp": "[]"}, {"what": "{}"},
	} {
		parts := map[string][]byte{}
		for k, v := range bad {
			parts[k] = []byte(v)
		}
		if _, err := control.DecodeApplied(parts); err == nil || !strings.HasPrefix(err.Error(), "decode applied state: ") {
			t.Errorf("DecodeApplied(%q) = %v", bad, err)
		}
	}
}

// TestDecodeAppliedRoutes reads the parts of a version that stored the
// learned routes too: they are left to the kernel, which holds them.
func TestDecodeAppliedRoutes(t *testing.T) {
	for _, parts := range []map[string][]byte{
		{"routes": []byte(`[{"Prefix":"100.64.0.0/24","NextHops":[{"Addr":"10.0.1.2","Weight":1}]}]`), "bgp": []byte(`{}`)},
		{"desired_state": []byte(`{"vips":[],"routes":[{"Prefix":"100.64.0.0/24","NextHops":[{"Addr":"10.0.1.2","Weight":1}]}]}`)},
	} {
		d, err := control.DecodeApplied(parts)
		if err != nil || d.Routes != nil {
			t.Errorf("DecodeApplied(%q) = routes %v, %v; want no routes, no error", parts, d.Routes, err)
		}
	}
}
