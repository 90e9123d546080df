package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// StatusWriter writes status.loadBalancer.ingress of Services through the status
// subresource.
type StatusWriter struct {
	client kubernetes.Interface
	log    *slog.Logger
}

// NewStatusWriter returns a StatusWriter for conn's cluster.
func NewStatusWriter(conn *Conn, log *slog.Logger) *StatusWriter {
	return &StatusWriter{client: conn.Client(), log: log.With("component", "kube", "cluster", conn.Name())}
}

// SetIngress makes status.loadBalancer.ingress of the Service key exactly one entry per
// address of ips, in order, each an IP of mode VIP. If uid is not empty the Service must
// have it: one deleted and created again under the same name is another Service. It reads
// the Service and writes only when the status differs, retrying when another writer got
// there first (a conflict); changed reports whether it wrote. Calling it twice with the same
// ips writes once.
func (w *StatusWriter) SetIngress(ctx context.Context, key ServiceKey, uid types.UID, ips []netip.Addr) (changed bool, err error) {
	want := make([]corev1.LoadBalancerIngress, len(ips))
	for i, ip := range ips {
		want[i] = corev1.LoadBalancerIngress{IP: ip.String(), IPMode: new(corev1.LoadBalancerIPModeVIP)}
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false
		svc, err := w.client.CoreV1().Services(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if uid != "" && svc.UID != uid {
			return fmt.Errorf("uid %s, want %s: the service was replaced", svc.UID, uid)
		}
		if sameIngress(svc.Status.LoadBalancer.Ingress, want) {
			return nil
		}
		svc.Status.LoadBalancer.Ingress = want
		if _, err := w.client.CoreV1().Services(key.Namespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
			return err
		}
		changed = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("kubernetes: service %s: set status ingress %v: %w", key, ips, err)
	}
	if changed {
		w.log.Info("status written", "service", key.String(), "ingress", ips)
	}
	return changed, nil
}

// ClearIngress empties status.loadBalancer.ingress of the Service key, as SetIngress with
// no addresses does.
func (w *StatusWriter) ClearIngress(ctx context.Context, key ServiceKey, uid types.UID) (changed bool, err error) {
	return w.SetIngress(ctx, key, uid, nil)
}

// sameIngress compares ingress entries as SetIngress writes them: an IP, mode VIP or unset
// (the apiserver sets VIP where it is unset), no hostname and no ports.
func sameIngress(have, want []corev1.LoadBalancerIngress) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		h := have[i]
		if h.IP != want[i].IP || h.Hostname != "" || len(h.Ports) > 0 ||
			(h.IPMode != nil && *h.IPMode != corev1.LoadBalancerIPModeVIP) {
			return false
		}
	}
	return true
}
