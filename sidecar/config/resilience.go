package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// CircuitBreaker configures the per-endpoint circuit breaker of an
// upstream. An open breaker keeps requests away from its endpoint for
// OpenTimeout, then lets HalfOpenRequests probes through; that many
// successes close it, one failure opens it again.
type CircuitBreaker struct {
	// Enabled turns breakers on. Default true.
	Enabled bool `yaml:"enabled"`
	// ConsecutiveFailures opens the breaker after this many failures in a
	// row. Default 5; 0 leaves only the ratio rule.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// FailureRatio opens the breaker when at least this share of the
	// requests within Interval failed. Default 0 (rule off).
	FailureRatio float64 `yaml:"failure_ratio"`
	// MinRequests is how many requests Interval must hold before
	// FailureRatio applies. Default 20.
	MinRequests int `yaml:"min_requests"`
	// Interval is the rolling window FailureRatio is measured over.
	// Default 10s.
	Interval time.Duration `yaml:"interval"`
	// OpenTimeout is how long an open breaker refuses. Default 10s.
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// HalfOpenRequests is the number of probes let through, and of
	// successes needed to close. Default 1.
	HalfOpenRequests int `yaml:"half_open_requests"`
	// FailureStatuses are the response statuses that count as failures;
	// connect failures, timeouts and resets always do, and a client that
	// hangs up never does. Default: every 5xx.
	FailureStatuses []int `yaml:"failure_statuses"`
}

// Outlier configures outlier ejection: an endpoint that keeps failing is
// taken out of rotation for BaseEjection times the number of times it was
// ejected, capped at MaxEjection.
type Outlier struct {
	// Enabled turns ejection on. Default true.
	Enabled bool `yaml:"enabled"`
	// Consecutive5xx ejects after this many 5xx (or transport failures)
	// in a row. Default 5; 0 turns the rule off.
	Consecutive5xx int `yaml:"consecutive_5xx"`
	// ConsecutiveGatewayErrors ejects after this many 502, 503, 504 or
	// transport failures in a row. Default 5; 0 turns the rule off.
	ConsecutiveGatewayErrors int `yaml:"consecutive_gateway_errors"`
	// BaseEjection is the length of a first ejection. Default 30s.
	BaseEjection time.Duration `yaml:"base_ejection"`
	// MaxEjection caps one ejection. Default 300s.
	MaxEjection time.Duration `yaml:"max_ejection"`
	// MaxEjectionPercent bounds the share of endpoints ejected at once
	// (one endpoint may always be). Default 50.
	MaxEjectionPercent int `yaml:"max_ejection_percent"`
}

// HealthCheck configures active health checks of an upstream's endpoints.
// They are off unless Path or TCP is set.
type HealthCheck struct {
	// Path is requested with GET; a 2xx or 3xx answer passes.
	Path string `yaml:"path"`
	// TCP makes a TCP connect the check instead.
	TCP bool `yaml:"tcp"`
	// Interval between checks of one endpoint. Default 10s.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one check. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// HealthyThreshold is the passes in a row that restore an endpoint.
	// Default 2.
	HealthyThreshold int `yaml:"healthy_threshold"`
	// UnhealthyThreshold is the failures in a row that take an endpoint
	// out. Default 3.
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
}

// Enabled reports whether health checks are configured.
func (h HealthCheck) Enabled() bool { return h.Path != "" || h.TCP }

// Retries configures how failed tries are retried on another endpoint.
type Retries struct {
	// Attempts is the number of retries after the first try. Default 2;
	// 0 turns retries off.
	Attempts int `yaml:"attempts"`
	// PerTryTimeout bounds each try's wait for response headers; the
	// upstream's timeout still bounds all tries together. Default: with
	// retries on, the upstream's timeout shared among the tries (5s of the
	// default 15s for 1+2 tries), so that an endpoint that accepts
	// connections and never answers costs a request a third of its time,
	// not all of it, and a retry elsewhere fits; with retries off, 0s.
	// 0s means only the upstream timeout applies.
	PerTryTimeout time.Duration `yaml:"per_try_timeout"`
	// On lists what is retried: connect_failure, reset, timeout (a per-try
	// timeout), 5xx, gateway_error (502, 503, 504) or a status code.
	// Default [connect_failure, reset, timeout, 503]. Only idempotent
	// methods are retried (unless NonIdempotent), except after a connect
	// failure, when nothing was sent.
	On []string `yaml:"on"`
	// RetryForwarded retries requests that another sidecar forwarded (they
	// carry X-Sidemesh-Attempt): that sidecar retries already, and
	// retrying at every hop multiplies load on a failing service (two hops
	// of three tries each make nine). Default false.
	RetryForwarded bool `yaml:"retry_forwarded"`
	// NonIdempotent allows retrying POST, PATCH and other non-idempotent
	// methods. Default false.
	NonIdempotent bool `yaml:"non_idempotent"`
	// Budget caps retries at this share of the requests of the last 10
	// seconds, so a sick upstream is not hammered. Default 0.2.
	Budget float64 `yaml:"budget"`
	// MinRetriesPerSecond are allowed whatever the budget, so that a quiet
	// upstream can still retry. Default 10.
	MinRetriesPerSecond int `yaml:"min_retries_per_second"`
	// BufferBytes is the largest request body kept for replay; a request
	// with a larger body is not retried. Default 65536.
	BufferBytes int `yaml:"buffer_bytes"`
	// Backoff is the base of the exponential backoff between tries, with
	// full jitter and a cap of ten times the base. Default 25ms.
	Backoff time.Duration `yaml:"backoff"`
}

// Retry conditions accepted in Retries.On besides status codes.
const (
	RetryConnectFailure = "connect_failure"
	RetryReset          = "reset"
	RetryTimeout        = "timeout"
	Retry5xx            = "5xx"
	RetryGatewayError   = "gateway_error"
)

var retryConditions = []string{RetryConnectFailure, RetryReset, RetryTimeout, Retry5xx, RetryGatewayError}

func defaultCircuitBreaker() CircuitBreaker {
	return CircuitBreaker{
		Enabled:             true,
		ConsecutiveFailures: 5,
		MinRequests:         20,
		Interval:            10 * time.Second,
		OpenTimeout:         10 * time.Second,
		HalfOpenRequests:    1,
	}
}

func defaultOutlier() Outlier {
	return Outlier{
		Enabled:                  true,
		Consecutive5xx:           5,
		ConsecutiveGatewayErrors: 5,
		BaseEjection:             30 * time.Second,
		MaxEjection:              300 * time.Second,
		MaxEjectionPercent:       50,
	}
}

func defaultHealthCheck() HealthCheck {
	return HealthCheck{Interval: 10 * time.Second, Timeout: 2 * time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3}
}

func defaultRetries() Retries {
	return Retries{
		Attempts:            2,
		On:                  []string{RetryConnectFailure, RetryReset, RetryTimeout, "503"},
		Budget:              0.2,
		MinRetriesPerSecond: 10,
		BufferBytes:         64 << 10,
		Backoff:             25 * time.Millisecond,
	}
}

// maxRetryAttempts bounds Retries.Attempts.
const maxRetryAttempts = 10

func (v *validator) resilience(path string, u *Upstream) {
	if _, known := balancer.Lookup(u.Balancer); known {
		// The balancer package is the one judge of which options suit
		// which policy (ip_hash only hashes source_ip, say).
		if _, err := balancer.NewPolicy(u.Balancer, balancer.PolicyOptions{HashOn: u.HashOn}); err != nil {
			v.errorf(path+".hash_on", "%v", err)
		}
	}

	if u.CircuitBreaker.Enabled {
		v.circuitBreaker(path+".circuit_breaker", u.CircuitBreaker)
	}
	if u.Outlier.Enabled {
		v.outlier(path+".outlier", u.Outlier)
	}
	if u.HealthCheck.Enabled() {
		v.healthCheck(path+".health_check", u.HealthCheck, u.Protocol)
	}
	if u.Retries.Attempts != 0 {
		v.retries(path+".retries", u.Retries)
	}
}

func (v *validator) circuitBreaker(p string, cb CircuitBreaker) {
	if cb.ConsecutiveFailures < 0 {
		v.errorf(p+".consecutive_failures", "must not be negative, got %d", cb.ConsecutiveFailures)
	}
	if cb.FailureRatio < 0 || cb.FailureRatio > 1 {
		v.errorf(p+".failure_ratio", "must be between 0 and 1, got %v", cb.FailureRatio)
	}
	if cb.ConsecutiveFailures == 0 && cb.FailureRatio == 0 {
		v.errorf(p, "an enabled breaker needs consecutive_failures or failure_ratio (or enabled: false)")
	}
	if cb.MinRequests < 1 {
		v.errorf(p+".min_requests", "must be at least 1, got %d", cb.MinRequests)
	}
	v.positive(p+".interval", cb.Interval)
	v.positive(p+".open_timeout", cb.OpenTimeout)
	if cb.HalfOpenRequests < 1 {
		v.errorf(p+".half_open_requests", "must be at least 1, got %d", cb.HalfOpenRequests)
	}
	for i, s := range cb.FailureStatuses {
		if s < 100 || s > 599 {
			v.errorf(fmt.Sprintf("%s.failure_statuses[%d]", p, i), "not an HTTP status: %d", s)
		}
	}

}

func (v *validator) outlier(p string, o Outlier) {
	if o.Consecutive5xx == 0 && o.ConsecutiveGatewayErrors == 0 {
		v.errorf(p, "enabled ejection needs consecutive_5xx or consecutive_gateway_errors (or enabled: false)")
	}
	if o.Consecutive5xx < 0 {
		v.errorf(p+".consecutive_5xx", "must not be negative, got %d", o.Consecutive5xx)
	}
	if o.ConsecutiveGatewayErrors < 0 {
		v.errorf(p+".consecutive_gateway_errors", "must not be negative, got %d", o.ConsecutiveGatewayErrors)
	}
	v.positive(p+".base_ejection", o.BaseEjection)
	if o.MaxEjection < o.BaseEjection {
		v.errorf(p+".max_ejection", "must be at least base_ejection (%v), got %v", o.BaseEjection, o.MaxEjection)
	}
	if o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 {
		v.errorf(p+".max_ejection_percent", "must be between 0 and 100, got %d", o.MaxEjectionPercent)
	}

}

func (v *validator) healthCheck(p string, h HealthCheck, protocol string) {
	if h.Path != "" && h.TCP {
		v.errorf(p+".tcp", "choose one of path and tcp")
	}
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		v.errorf(p+".path", "must start with /, got %s", quote(h.Path))
	}
	if h.Path != "" && protocol == ProtocolTCP {
		v.errorf(p+".path", "an HTTP health check needs an HTTP upstream; use tcp: true")
	}
	v.positive(p+".interval", h.Interval)
	v.positive(p+".timeout", h.Timeout)
	if h.HealthyThreshold < 1 {
		v.errorf(p+".healthy_threshold", "must be at least 1, got %d", h.HealthyThreshold)
	}
	if h.UnhealthyThreshold < 1 {
		v.errorf(p+".unhealthy_threshold", "must be at least 1, got %d", h.UnhealthyThreshold)
	}

}

func (v *validator) retries(p string, r Retries) {
	if r.Attempts < 0 || r.Attempts > maxRetryAttempts {
		v.errorf(p+".attempts", "must be between 0 and %d, got %d", maxRetryAttempts, r.Attempts)
	}
	v.nonNegative(p+".per_try_timeout", r.PerTryTimeout)
	for i, cond := range r.On {
		if slices.Contains(retryConditions, cond) {
			continue
		}
		if code, err := strconv.Atoi(cond); err == nil && code >= 100 && code <= 599 {
			continue
		}
		v.errorf(fmt.Sprintf("%s.on[%d]", p, i), "unknown retry condition %s (want a status code or one of: %s)",
			quote(cond), strings.Join(retryConditions, ", "))
	}
	if r.Budget < 0 || r.Budget > 1 {
		v.errorf(p+".budget", "must be between 0 and 1, got %v", r.Budget)
	}
	if r.MinRetriesPerSecond < 0 {
		v.errorf(p+".min_retries_per_second", "must not be negative, got %d", r.MinRetriesPerSecond)
	}
	if r.BufferBytes < 0 {
		v.errorf(p+".buffer_bytes", "must not be negative, got %d", r.BufferBytes)
	}
	v.nonNegative(p+".backoff", r.Backoff)
}

func (v *validator) positive(path string, d time.Duration) {
	if d <= 0 {
		v.errorf(path, "must be positive, got %v", d)
	}
}
