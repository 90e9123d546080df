package health

// hysteresis turns a stream of probe results into an up/down state: rise
// consecutive successes bring it up, fall consecutive failures bring it down.
type hysteresis struct {
	up         bool
	rise, fall int
	streak     int // consecutive results disagreeing with up
}

// observe records one probe result and reports whether up changed.
func (h *hysteresis) observe(ok bool) bool {
	if ok == h.up {
		h.streak = 0
		return false
	}
	h.streak++
	need := h.fall
	if ok {
		need = h.rise
	}
	if h.streak < need {
		return false
	}
	h.up, h.streak = ok, 0
	return true
}
