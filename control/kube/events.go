package kube

import (
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Event types, as Kubernetes names them.
const (
	EventNormal  = corev1.EventTypeNormal
	EventWarning = corev1.EventTypeWarning
)

// Reasons of the Events this package records.
const (
	// ReasonBadEndpoint: an endpoint of one of the Service's EndpointSlices has no address
	// that parses; it is skipped.
	ReasonBadEndpoint = "BadEndpoint"
)

// EventRecorder records Kubernetes Events on Services.
type EventRecorder interface {
	// Event records an Event of eventType (EventNormal or EventWarning) on the Service key
	// whose UID is uid, with a reason in UpperCamelCase and a human-readable message. It
	// never blocks: Events are sent in the background, repeats are aggregated into counts
	// as client-go does, and Events may be dropped while the apiserver is away.
	Event(key ServiceKey, uid types.UID, eventType, reason, message string)
}

// Recorder is the EventRecorder of one cluster, on a client-go record.EventBroadcaster.
type Recorder struct {
	b   record.EventBroadcaster
	r   record.EventRecorder
	log *slog.Logger
}

// NewRecorder returns a Recorder that writes Events to conn's cluster with source
// component. Shutdown stops it.
func NewRecorder(conn *Conn, component string, log *slog.Logger) *Recorder {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: conn.Client().CoreV1().Events("")})
	return &Recorder{
		b:   b,
		r:   b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component}),
		log: log.With("component", "kube", "cluster", conn.Name()),
	}
}

// Event implements EventRecorder, and logs the Event too.
func (r *Recorder) Event(key ServiceKey, uid types.UID, eventType, reason, message string) {
	ref := &corev1.ObjectReference{
		Kind: "Service", APIVersion: "v1", Namespace: key.Namespace, Name: key.Name, UID: uid,
	}
	r.log.Info("event", "service", key.String(), "type", eventType, "reason", reason, "message", message)
	r.r.Event(ref, eventType, reason, message)
}

// Shutdown stops the Recorder; Events not yet sent may be lost.
func (r *Recorder) Shutdown() { r.b.Shutdown() }
