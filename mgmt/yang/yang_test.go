package yang

import (
	"strings"
	"testing"

	goyang "github.com/openconfig/goyang/pkg/yang"
)

// TestModuleParses checks portico.yang with goyang, the YANG parser of the
// OpenConfig tools: it must parse and resolve (types, leafrefs' syntax,
// groupings) with no error, and carry the revision Capabilities reports.
func TestModuleParses(t *testing.T) {
	ms := goyang.NewModules()
	if err := ms.Parse(Module, "portico.yang"); err != nil {
		t.Fatal(err)
	}
	if errs := ms.Process(); len(errs) > 0 {
		t.Fatal(errs)
	}
	m, errs := ms.GetModule(Name)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	mod := ms.Modules[Name]
	if len(mod.Revision) == 0 || mod.Revision[0].Name != Revision {
		t.Errorf("first revision of the module is not %s", Revision)
	}
	for _, top := range []string{"vips", "bgp", "routes"} {
		if m.Dir[top] == nil {
			t.Errorf("module has no top-level container %q; has %v", top, strings.Join(keys(m.Dir), " "))
		}
	}
}

func keys(m map[string]*goyang.Entry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
