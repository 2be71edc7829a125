package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// The tests in this file run against a real Consul agent.

func TestWatch(t *testing.T) {
	t.Parallel()
	for _, mesh := range []bool{true, false} {
		t.Run(fmt.Sprintf("mesh=%v", mesh), func(t *testing.T) {
			t.Parallel()
			agent := consultest.Start(t)
			app := newApp(t)
			r := NewRegistrar(agent.Client(), RegistrarOptions{
				AppAddress: app.host, AppPort: app.port, HealthPath: "/healthz",
				HealthInterval: time.Second, TTL: 3 * time.Second,
			})
			self := testInstance(21000)
			if err := r.Register(ctxFor(t), self); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Deregister(context.Background()) })

			log, _ := newLogger(t)
			src := NewSource(agent.Client(), SourceOptions{Mesh: mesh, WaitTime: 10 * time.Second, Logger: log})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch, err := src.Watch(ctx, "web")
			if err != nil {
				t.Fatal(err)
			}
			id, port := "web-1", app.port
			if mesh {
				id, port = "web-1-sidecar-proxy", 21000
			}

			s := recv(t, ch, 10*time.Second, id+" passing", with(id, 3))
			want := discovery.Endpoint{
				ID: id, Service: "web", Address: "127.0.0.1", Port: port, Weight: 3,
				Tags: []string{"v1", "blue"}, Meta: map[string]string{"version": "1.2.3", "zone": "zone-a"}, Zone: "zone-a",
			}
			if len(s.Endpoints) != 1 || !sameEndpoints(s.Endpoints, []discovery.Endpoint{want}) || s.Service != "web" {
				t.Errorf("snapshot = %+v, want just %+v", s, want)
			}

			app.set(http.StatusInternalServerError)
			recv(t, ch, 10*time.Second, id+" gone (critical)", without(id))
			app.set(http.StatusOK)
			recv(t, ch, 10*time.Second, id+" back", with(id, 3))
			app.set(http.StatusTooManyRequests) // Consul's warning
			recv(t, ch, 10*time.Second, id+" at its warning weight", with(id, 1))
			if !src.Healthy() || src.LastError() != nil {
				t.Errorf("Healthy() = %v, LastError() = %v while Consul answers", src.Healthy(), src.LastError())
			}

			// OnlyPassing drops instances in warning.
			strict := NewSource(agent.Client(), SourceOptions{Mesh: mesh, OnlyPassing: true})
			sch, err := strict.Watch(ctx, "web")
			if err != nil {
				t.Fatal(err)
			}
			recv(t, sch, 10*time.Second, "no instance in warning", without(id))

			cancel()
			waitClosed(t, ch, 5*time.Second)
			waitClosed(t, sch, 5*time.Second)
		})
	}
}

func TestWatchTagsAndDatacenter(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	for _, reg := range []*api.AgentServiceRegistration{
		{ID: "api-1", Name: "api", Port: 8001, Tags: []string{"blue", "v1"}},
		{ID: "api-2", Name: "api", Port: 8002, Tags: []string{"green", "v1"}},
	} {
		if err := client.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	for _, tc := range []struct {
		service string
		tags    []string
		want    []string
	}{
		{"api", nil, []string{"api-1", "api-2"}},
		{"api", []string{"v1"}, []string{"api-1", "api-2"}},
		{"api", []string{"blue"}, []string{"api-1"}},
		{"api", []string{"v1", "green"}, []string{"api-2"}},
		{"api", []string{"blue", "green"}, nil},
		{"api", []string{"red"}, nil},
		{"unknown", nil, nil}, // the first snapshot comes even when empty
	} {
		ch, err := NewSource(client, SourceOptions{Tags: tc.tags}).Watch(ctx, tc.service)
		if err != nil {
			t.Fatal(err)
		}
		recv(t, ch, 10*time.Second, fmt.Sprintf("%s tags %v = %v", tc.service, tc.tags, tc.want), func(s discovery.Snapshot) bool {
			return slices.Equal(ids(s), tc.want)
		})
	}

	// A datacenter Consul does not know: every query fails with a 500
	// "No path to datacenter"; nothing is sent, and the source says so.
	log, logs := newLogger(t)
	src := NewSource(client, SourceOptions{Datacenter: "nowhere", MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: log})
	ch, err := src.Watch(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 5*time.Second, "the retries against an unknown datacenter", func() error {
		if src.Healthy() || src.LastError() == nil {
			return errors.New("source still healthy")
		}
		if n := logs.count("consul still unreachable"); n < 3 {
			return fmt.Errorf("%d retries", n)
		}
		return nil
	})
	noSnapshot(t, ch, 200*time.Millisecond, "unknown datacenter")
	err = src.LastError()
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInternalServerError || !strings.Contains(se.Body, "No path to datacenter") ||
		!strings.HasPrefix(err.Error(), "consul: watch api: ") {
		t.Errorf("LastError() = %v, want a wrapped 500 No path to datacenter", err)
	}
	if n := logs.count("consul unreachable; serving the last snapshot"); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}
	cancel()
	waitClosed(t, ch, 5*time.Second)
	if !src.Healthy() || src.LastError() != nil {
		t.Errorf("a stopped watch still counts: Healthy() = %v, LastError() = %v", src.Healthy(), src.LastError())
	}
}

func TestWatchAgentRestart(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	app := newApp(t)
	rlog, rlogs := newLogger(t)
	r := NewRegistrar(client, RegistrarOptions{
		AppAddress: app.host, AppPort: app.port, HealthPath: "/healthz",
		HealthInterval: time.Second, TTL: 1500 * time.Millisecond, Logger: rlog,
	})
	if err := r.Register(ctxFor(t), testInstance(21000)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Deregister(context.Background()) })

	log, logs := newLogger(t)
	src := NewSource(client, SourceOptions{Mesh: true, WaitTime: 10 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := src.Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	const id = "web-1-sidecar-proxy"
	recv(t, ch, 10*time.Second, id, with(id, 3))

	agent.Stop()
	meshtest.Eventually(t, 10*time.Second, "the source to notice the agent is down", func() error {
		if src.Healthy() || src.LastError() == nil {
			return errors.New("source still healthy with the agent stopped")
		}
		return nil
	})
	// The consumer keeps what it had: nothing is sent during the outage.
	noSnapshot(t, ch, time.Second, "agent stopped")
	if n := logs.count("consul unreachable; serving the last snapshot"); n != 1 {
		t.Errorf("warned %d times, want once", n)
	}

	agent.Restart()
	// The refresher notices that the new agent does not know the sidecar
	// and registers both again, without being asked.
	meshtest.Eventually(t, 15*time.Second, "the refresher to register again", func() error {
		svcs, err := client.Agent().Services()
		if err != nil {
			return err
		}
		if svcs["web-1"] == nil || svcs[id] == nil {
			return fmt.Errorf("agent services after restart = %v", svcs)
		}
		return nil
	})
	// The agent came back empty; the watch kept the last snapshot through
	// the gap (the recovery grace) and the same instance is back: the
	// consumer sees no change at all.
	noSnapshot(t, ch, meshtest.Quiet, "the same instance back after the restart")
	if n := logs.count("keeping the last ones while it repopulates"); n > 1 {
		t.Errorf("the recovery grace was logged %d times, want at most once", n)
	}
	if !src.Healthy() || src.LastError() != nil {
		t.Errorf("after restart Healthy() = %v, LastError() = %v", src.Healthy(), src.LastError())
	}
	if logs.count("consul answers again") != 1 {
		t.Errorf("recovery not logged once")
	}
	if rlogs.count("consul agent lost the registration; registering again") < 1 {
		t.Errorf("re-registration not logged")
	}
	cancel()
	waitClosed(t, ch, 5*time.Second)
}

// countingTransport counts the answers to health queries.
type countingTransport struct {
	http.RoundTripper
	n atomic.Int64
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.RoundTripper.RoundTrip(req)
	if err == nil && strings.HasPrefix(req.URL.Path, "/v1/health/") {
		c.n.Add(1)
	}
	return resp, err
}

func TestWatchSkipsUnchanged(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	tr := &countingTransport{RoundTripper: &http.Transport{}}
	t.Cleanup(tr.RoundTripper.(*http.Transport).CloseIdleConnections)
	client, err := api.NewClient(&api.Config{Address: agent.Addr(), Scheme: "http", HttpClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web-1", Name: "web", Port: 8001}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A long wait: a query that returns early was woken by a change.
	ch, err := NewSource(client, SourceOptions{WaitTime: 30 * time.Second}).Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch, 10*time.Second, "web-1", func(s discovery.Snapshot) bool { return slices.Equal(ids(s), []string{"web-1"}) })

	// An unrelated service: Consul 1.20's health queries block on the
	// service's own index, so this does not even wake the query.
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "other-1", Name: "other", Port: 9001}); err != nil {
		t.Fatal(err)
	}
	noSnapshot(t, ch, 500*time.Millisecond, "unrelated service registered")

	// Another instance of web that is critical (a TTL check starts
	// critical): the index moves, the query returns, the endpoint set does
	// not change, and nothing is sent.
	before := tr.n.Load()
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "web-2", Name: "web", Port: 8002, Check: &api.AgentServiceCheck{TTL: "1m"},
	}); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 10*time.Second, "the blocking query to wake up", func() error {
		if n := tr.n.Load(); n <= before {
			return errors.New("the blocking query did not wake up")
		}
		return nil
	})
	noSnapshot(t, ch, 500*time.Millisecond, "critical instance registered")

	// Queries that time out unchanged send nothing either.
	tch, err := NewSource(client, SourceOptions{WaitTime: 200 * time.Millisecond}).Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, tch, 10*time.Second, "web-1", func(s discovery.Snapshot) bool { return slices.Equal(ids(s), []string{"web-1"}) })
	before = tr.n.Load()
	noSnapshot(t, tch, 1500*time.Millisecond, "queries timed out")
	if n := tr.n.Load() - before; n < 3 {
		t.Errorf("%d queries in 1.5s with a 200ms wait, want several", n)
	}
}
