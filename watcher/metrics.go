package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"haproxy-config/certs"
)

// metrics exposes the daemon's status to Prometheus. The loop publishes a
// copy of its status after every step; scrapes read that copy.
// The drain record and the announce report are read from their files at
// each scrape: other processes write them.
type metrics struct {
	mu       sync.Mutex
	last     Status
	stateDir string
}

func (m *metrics) set(st *Status) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last = *st
	m.last.Quarantined = append([]Quarantined(nil), st.Quarantined...)
}

var (
	descReloads     = prometheus.NewDesc("haproxy_config_reloads_total", "Reloads by result.", []string{"result"}, nil)
	descRollbacks   = prometheus.NewDesc("haproxy_config_rollbacks_total", "Times the last good generation was put back.", nil, nil)
	descRestarts    = prometheus.NewDesc("haproxy_config_haproxy_restarts_total", "Restarts of the managed HAProxy after it exited.", nil, nil)
	descReconciles  = prometheus.NewDesc("haproxy_config_reconciles_total", "Reads of the fragment store.", nil, nil)
	descGeneration  = prometheus.NewDesc("haproxy_config_live_generation", "The generation seen serving.", nil, nil)
	descLiveFrags   = prometheus.NewDesc("haproxy_config_live_fragments", "Fragments in the live generation.", nil, nil)
	descPending     = prometheus.NewDesc("haproxy_config_pending_changes", "Changes seen but not live yet.", nil, nil)
	descHeld        = prometheus.NewDesc("haproxy_config_held", "1 while a rollback holds a generation.", nil, nil)
	descQuarantined = prometheus.NewDesc("haproxy_config_fragment_quarantined", "1 for each fragment left out of the live configuration.", []string{"fragment"}, nil)
	descLastReload  = prometheus.NewDesc("haproxy_config_last_reload_seconds", "Duration of the last reload, verification included.", nil, nil)
	descLastOK      = prometheus.NewDesc("haproxy_config_last_reload_success", "1 if the last reload succeeded.", nil, nil)
	descCerts       = prometheus.NewDesc("haproxy_config_certificates", "Domains kept by the certificate manager, by state.", []string{"state"}, nil)
	descCertExpiry  = prometheus.NewDesc("haproxy_config_certificate_expiry_timestamp_seconds", "When the soonest-expiring served certificate expires.", []string{"domain"}, nil)
	descOrders      = prometheus.NewDesc("haproxy_config_acme_orders_in_window", "New orders counted against the order budget's current window.", nil, nil)
	descRuntime     = prometheus.NewDesc("haproxy_config_runtime_updates_total", "Host map changes that went live through the runtime API, without a reload.", nil, nil)
	descDrift       = prometheus.NewDesc("haproxy_config_map_drift_repairs_total", "Times the runtime host map differed from the live map file and was set back to it.", nil, nil)
	descFallbacks   = prometheus.NewDesc("haproxy_config_runtime_fallbacks_total", "Host map changes the runtime API failed to apply, so a reload did.", nil, nil)
	descLastRuntime = prometheus.NewDesc("haproxy_config_last_runtime_update_seconds", "From the change seen to the runtime host map verified, for the last runtime update.", nil, nil)
	descBehind      = prometheus.NewDesc("haproxy_config_behind", "1 while what the store holds cannot go live (HAProxy serves an older generation).", nil, nil)
	descDrained     = prometheus.NewDesc("haproxy_config_drained", "1 while this node is drained for maintenance.", nil, nil)
	descEtcdUp      = prometheus.NewDesc("haproxy_config_etcd_up", "Fleet mode: 1 while etcd answers this node's checks, 0 while it does not.", nil, nil)
	descEtcdSince   = prometheus.NewDesc("haproxy_config_etcd_unreachable_since_seconds", "Fleet mode: since when (unix time) etcd has not answered, 0 while it does.", nil, nil)
	descAnnounced   = prometheus.NewDesc("haproxy_config_route_announced", "1 for each service address whose route announce has announced, 0 while withdrawn.", []string{"address"}, nil)
)

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReloads, descRollbacks, descRestarts, descReconciles, descGeneration,
		descLiveFrags, descPending, descHeld, descQuarantined, descLastReload, descLastOK, descRuntime, descDrift,
		descFallbacks, descLastRuntime, descCerts, descCertExpiry, descOrders, descBehind, descDrained, descAnnounced,
		descEtcdUp, descEtcdSince} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	st, stateDir := m.last, m.stateDir
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descBehind, prometheus.GaugeValue, one(st.Behind != nil))
	if f := st.Fleet; f != nil {
		since := 0.0
		if f.UnreachableSince != nil {
			since = float64(f.UnreachableSince.Unix())
		}
		ch <- prometheus.MustNewConstMetric(descEtcdUp, prometheus.GaugeValue, one(f.Reachable))
		ch <- prometheus.MustNewConstMetric(descEtcdSince, prometheus.GaugeValue, since)
	}
	// a file that cannot be read leaves its metric out of this scrape
	if d, err := ReadDrained(stateDir); err == nil {
		ch <- prometheus.MustNewConstMetric(descDrained, prometheus.GaugeValue, one(d != nil))
	}
	if a, err := ReadAnnounced(stateDir); err == nil && a != nil {
		// announce killed before its last report announces nothing
		runs := ProcessRuns(a.PID)
		for _, r := range a.Routes {
			ch <- prometheus.MustNewConstMetric(descAnnounced, prometheus.GaugeValue, one(r.Announced && runs), r.Address)
		}
	}
	c := st.Counts
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(c.Reloads), "ok")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(c.ReloadsFailed), "failed")
	ch <- prometheus.MustNewConstMetric(descRollbacks, prometheus.CounterValue, float64(c.Rollbacks))
	ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(c.Restarts))
	ch <- prometheus.MustNewConstMetric(descReconciles, prometheus.CounterValue, float64(c.Reconciles))
	ch <- prometheus.MustNewConstMetric(descRuntime, prometheus.CounterValue, float64(c.RuntimeUpdates))
	ch <- prometheus.MustNewConstMetric(descDrift, prometheus.CounterValue, float64(c.DriftRepairs))
	ch <- prometheus.MustNewConstMetric(descFallbacks, prometheus.CounterValue, float64(c.RuntimeFallbacks))
	if r := st.LastRuntime; r != nil {
		ch <- prometheus.MustNewConstMetric(descLastRuntime, prometheus.GaugeValue, r.DurationMS/1000)
	}
	if st.Live != nil {
		ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(st.Live.Generation))
		ch <- prometheus.MustNewConstMetric(descLiveFrags, prometheus.GaugeValue, float64(st.Live.Fragments))
	}
	pending := 0
	if st.Pending != nil {
		pending = st.Pending.Changes
	}
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(pending))
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, one(st.Held != nil))
	for _, q := range st.Quarantined {
		ch <- prometheus.MustNewConstMetric(descQuarantined, prometheus.GaugeValue, 1, q.Name)
	}
	if r := st.LastReload; r != nil {
		ch <- prometheus.MustNewConstMetric(descLastReload, prometheus.GaugeValue, r.DurationMS/1000)
		ch <- prometheus.MustNewConstMetric(descLastOK, prometheus.GaugeValue, one(r.OK))
	}
	if c := st.Certs; c != nil {
		for _, state := range certs.Conditions {
			ch <- prometheus.MustNewConstMetric(descCerts, prometheus.GaugeValue, float64(c.Conditions[state]), state)
		}
		if c.NextExpiry != nil {
			ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(c.NextExpiry.At.Unix()), c.NextExpiry.Domain)
		}
		ch <- prometheus.MustNewConstMetric(descOrders, prometheus.GaugeValue, float64(c.OrdersInWindow))
	}
}

func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serveMetrics serves /metrics on addr; the returned function stops the
// server and waits for it.
func serveMetrics(addr string, m *metrics, log *slog.Logger) (func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
