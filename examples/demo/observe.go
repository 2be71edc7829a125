package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// requestTimeout bounds each request the demo sends.
const requestTimeout = 5 * time.Second

// newClient returns the demo's HTTP client: plain HTTP on loopback, no
// proxy from the environment.
func newClient() *http.Client {
	return &http.Client{Timeout: requestTimeout, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}}
}

// page is what the frontend answers to GET /.
type page struct {
	Frontend  string `json:"frontend"`
	RequestID string `json:"request_id"`
	Peer      string `json:"peer"`
	Catalog   struct {
		Instance  string   `json:"instance"`
		Items     []string `json:"items"`
		RequestID string   `json:"request_id"`
		Peer      string   `json:"peer"`
	} `json:"catalog"`
}

// answer is the outcome of one request.
type answer struct {
	status int
	header http.Header
	body   []byte
	took   time.Duration
	err    error
}

// page decodes the answer to a GET / of the frontend; false if it was not
// a page with the catalog's answer in it.
func (a answer) page() (page, bool) {
	var p page
	if a.err != nil || a.status != http.StatusOK || json.Unmarshal(a.body, &p) != nil || p.Catalog.Instance == "" {
		return page{}, false
	}
	return p, true
}

// catalogInstance decodes the answer to a catalog's GET /items: the
// instance that served it; false if it was not such an answer.
func (a answer) catalogInstance() (string, bool) {
	var items struct {
		Instance string `json:"instance"`
	}
	if a.err != nil || a.status != http.StatusOK || json.Unmarshal(a.body, &items) != nil || items.Instance == "" {
		return "", false
	}
	return items.Instance, true
}

// describe sums an answer up in a few words: "200", "403 denied: ...".
func (a answer) describe() string {
	if a.err != nil {
		return "error: " + a.err.Error()
	}
	s := strconv.Itoa(a.status)
	if kind := a.header.Get("X-Sidemesh-Error"); kind != "" {
		s += "  X-Sidemesh-Error: " + kind
	}
	if a.status != http.StatusOK {
		if b := oneLine(a.body); b != "" {
			s += "  " + strconv.Quote(b)
		}
	}
	return s
}

// get sends GET http://host+path through the sidecar at outbound, as an
// app would: plain HTTP, the service named in the Host header.
func get(ctx context.Context, client *http.Client, outbound, host, path string) answer {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+outbound+path, nil)
	if err != nil {
		return answer{err: err}
	}
	if host != "" {
		req.Host = host
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return answer{status: resp.StatusCode, header: resp.Header, body: body, took: time.Since(start), err: err}
}

// oneLine returns the start of b on a single line.
func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return s
}

// The admin API's JSON, as far as the demo reads it.
type (
	upstreamView struct {
		Service   string         `json:"service"`
		Balancer  string         `json:"balancer"`
		Sources   []string       `json:"sources"`
		Endpoints []endpointView `json:"endpoints"`
	}
	endpointView struct {
		ID           string     `json:"id"`
		Address      string     `json:"address"`
		Requests     uint64     `json:"requests"`
		Failures     uint64     `json:"failures"`
		LatencyMS    float64    `json:"latency_ms"`
		Breaker      string     `json:"breaker"`
		EjectedUntil *time.Time `json:"ejected_until"`
		Healthy      bool       `json:"healthy"`
	}
	memberView struct {
		Name  string `json:"name"`
		Addr  string `json:"addr"`
		State string `json:"state"`
	}
	identityView struct {
		SPIFFEID         string  `json:"spiffe_id"`
		ExpiresInSeconds float64 `json:"expires_in_seconds"`
	}
)

// adminGet fetches path from in's admin API and decodes its JSON into v.
func adminGet(ctx context.Context, client *http.Client, in *instance, path string, v any) error {
	a := get(ctx, client, in.adminAddr(), "", path)
	if a.err != nil {
		return fmt.Errorf("%s's admin API %s: %w", in.name, path, a.err)
	}
	if a.status != http.StatusOK {
		return fmt.Errorf("%s's admin API %s: %s", in.name, path, a.describe())
	}
	if err := json.Unmarshal(a.body, v); err != nil {
		return fmt.Errorf("%s's admin API %s: %w", in.name, path, err)
	}
	return nil
}

// upstream returns in's sidecar's view of upstream service.
func upstream(ctx context.Context, client *http.Client, in *instance, service string) (upstreamView, error) {
	var ups []upstreamView
	if err := adminGet(ctx, client, in, "/endpoints", &ups); err != nil {
		return upstreamView{}, err
	}
	for _, u := range ups {
		if u.Service == service {
			return u, nil
		}
	}
	return upstreamView{}, fmt.Errorf("%s's sidecar has no upstream %q", in.name, service)
}

// endpointIDs returns the IDs of u's endpoints, joined by ", ".
func (u upstreamView) endpointIDs() string {
	ids := make([]string, len(u.Endpoints))
	for i, e := range u.Endpoints {
		ids[i] = e.ID
	}
	return strings.Join(ids, ", ")
}

// endpoint returns the endpoint with the given ID.
func (u upstreamView) endpoint(id string) (endpointView, bool) {
	for _, e := range u.Endpoints {
		if e.ID == id {
			return e, true
		}
	}
	return endpointView{}, false
}

// members returns the gossip members in's sidecar knows of.
func members(ctx context.Context, client *http.Client, in *instance) ([]memberView, error) {
	var ms []memberView
	err := adminGet(ctx, client, in, "/members", &ms)
	return ms, err
}

// metric returns the value of the Prometheus sample of in's sidecar named
// name whose labels include every label="value" pair in labels, summed
// over the samples that match. It is 0 when none does.
func metric(ctx context.Context, client *http.Client, in *instance, name string, labels ...string) (float64, error) {
	a := get(ctx, client, in.adminAddr(), "", "/metrics")
	if a.err != nil || a.status != http.StatusOK {
		return 0, fmt.Errorf("%s's metrics: %s", in.name, a.describe())
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(a.body)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		labelSet, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(","+labelSet+",", ","+l+",")
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s's metrics: %q: %w", in.name, line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}
