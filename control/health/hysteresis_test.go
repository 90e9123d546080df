package health

import "testing"

func TestHysteresis(t *testing.T) {
	// in is a run of probe results (o success, x failure); want is the state
	// after each of them (U up, D down).
	tests := []struct {
		name       string
		up         bool
		rise, fall int
		in, want   string
	}{
		{"up stays up on success", true, 2, 3, "ooo", "UUU"},
		{"down after exactly fall failures", true, 2, 3, "xxxx", "UUDD"},
		{"success resets the failure streak", true, 2, 3, "xxoxxox", "UUUUUUU"},
		{"up after exactly rise successes", false, 2, 3, "ooo", "DUU"},
		{"failure resets the success streak", false, 2, 3, "oxoxo", "DDDDD"},
		{"rise and fall of one follow every result", true, 1, 1, "xoxxo", "DUDDU"},
		{"full cycle", true, 2, 2, "xxoxoo", "UDDDDU"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hysteresis{up: tt.up, rise: tt.rise, fall: tt.fall}
			var got []byte
			for _, r := range tt.in {
				before := h.up
				changed := h.observe(r == 'o')
				if changed != (h.up != before) {
					t.Fatalf("observe(%c) = %v, but up went from %v to %v", r, changed, before, h.up)
				}
				got = append(got, map[bool]byte{true: 'U', false: 'D'}[h.up])
			}
			if string(got) != tt.want {
				t.Errorf("results %s: states %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}
