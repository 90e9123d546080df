package control_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"portico.dev/appliance/control"
)

// TestCacheSameDesired compiles a sequence of inputs with one Cache and
// without: the Desireds and warnings are equal each time, and a VIP whose
// inputs did not change keeps its very slices.
func TestCacheSameDesired(t *testing.T) {
	steps := []struct {
		name  string
		yaml  string
		state map[string]bool
		// kept are the VIPs whose slices the step must reuse.
		kept []string
	}{
		{name: "first", yaml: mixedVIPs, state: mixedState},
		{name: "same again", yaml: mixedVIPs, state: mixedState, kept: []string{"web", "dns", "web6", "idle"}},
		{name: "a checked backend comes back", yaml: mixedVIPs,
			state: map[string]bool{"web6/[2001:db8:1::12]:8443": false}, kept: []string{"dns", "web6", "idle"}},
		{name: "state of an unchecked VIP", yaml: mixedVIPs,
			state: map[string]bool{"web6/[2001:db8:1::12]:8443": false, "dns/10.0.1.21:53": false}, kept: []string{"web", "dns", "web6", "idle"}},
		{name: "one weight changes", yaml: strings.ReplaceAll(mixedVIPs, "{address: 10.0.1.22:53, weight: 4}", "{address: 10.0.1.22:53, weight: 5}"),
			state: map[string]bool{"web6/[2001:db8:1::12]:8443": false}, kept: []string{"web", "web6", "idle"}},
		{name: "a backend is replaced", yaml: strings.ReplaceAll(mixedVIPs, "10.0.1.22:53", "10.0.1.24:53"),
			state: map[string]bool{"web6/[2001:db8:1::12]:8443": false}, kept: []string{"web", "web6", "idle"}},
		{name: "SNAT off", yaml: strings.ReplaceAll(strings.ReplaceAll(mixedVIPs, "10.0.1.22:53", "10.0.1.24:53"), "snat: true", "snat: false"),
			state: map[string]bool{"web6/[2001:db8:1::12]:8443": false}, kept: []string{"web", "web6", "idle"}},
		{name: "fewer VIPs", yaml: healthVIPs, kept: nil},
		{name: "the first again", yaml: mixedVIPs, state: mixedState},
	}
	cache := &control.Cache{}
	var last control.Desired
	for _, st := range steps {
		c := parse(t, st.yaml)
		got, gotWarns := control.Compile(control.Inputs{Config: c, Health: st.state, Cache: cache})
		want, wantWarns := control.Compile(control.Inputs{Config: c, Health: st.state})
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotWarns, wantWarns) {
			t.Fatalf("%s: with a cache\n%+v %v\nwithout\n%+v %v", st.name, got, gotWarns, want, wantWarns)
		}
		for _, v := range got.VIPs {
			kept := false
			for _, l := range last.VIPs {
				if l.Name == v.Name && len(l.Backends) > 0 && len(v.Backends) > 0 && &l.Backends[0] == &v.Backends[0] {
					kept = true
				}
			}
			// (A VIP without backends has no slice to keep.)
			if want := slices.Contains(st.kept, v.Name) && len(v.Backends) > 0; kept != want {
				t.Errorf("%s: VIP %s kept its slices: %v, want %v", st.name, v.Name, kept, want)
			}
		}
		last = got
	}
}
