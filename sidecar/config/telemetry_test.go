package config

import "testing"

func TestParseTelemetry(t *testing.T) {
	c := mustParse(t, `
telemetry:
  tracing: { otlp_endpoint: 127.0.0.1:4317, sample_ratio: 0, headers: { x-api-key: k } }
  metrics: { otlp_endpoint: "https://otel.example.com", protocol: http }
  access_log: /var/log/sidemesh/access.log
`)
	tr := c.Telemetry.Tracing
	if tr == nil || tr.Endpoint != "127.0.0.1:4317" || tr.SampleRatio == nil || *tr.SampleRatio != 0 ||
		tr.QueueSize != DefaultTracingQueueSize || tr.Headers["x-api-key"] != "k" {
		t.Fatalf("tracing = %+v", tr)
	}
	m := c.Telemetry.Metrics
	if m == nil || m.ProtocolName() != OTLPHTTPProtobuf || m.Interval.Seconds() != 60 {
		t.Fatalf("metrics = %+v", m)
	}
	if c.Telemetry.AccessLog != "/var/log/sidemesh/access.log" {
		t.Errorf("access_log = %q", c.Telemetry.AccessLog)
	}
	if d := mustParse(t, "outbound: {}\n"); d.Telemetry.Tracing != nil || d.Telemetry.Metrics != nil || d.Telemetry.AccessLog != AccessLogOff {
		t.Errorf("defaults = %+v", d.Telemetry)
	}
}

func TestOTLPPlainText(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		o    OTLP
		want bool
	}{
		{OTLP{Endpoint: "127.0.0.1:4317"}, true},
		{OTLP{Endpoint: "[::1]:4317"}, true},
		{OTLP{Endpoint: "localhost:4317"}, true},
		{OTLP{Endpoint: "otel.example.com:4317"}, false},
		{OTLP{Endpoint: "10.0.0.5:4317"}, false},
		{OTLP{Endpoint: "http://otel.example.com:4318"}, true},
		{OTLP{Endpoint: "https://127.0.0.1:4318"}, false},
		{OTLP{Endpoint: ""}, false},
		{OTLP{Endpoint: "otel.example.com:4317", Insecure: &yes}, true},
		{OTLP{Endpoint: "127.0.0.1:4317", Insecure: &no}, false},
	} {
		if got := tc.o.PlainText(); got != tc.want {
			t.Errorf("PlainText(%q, insecure %v) = %v, want %v", tc.o.Endpoint, tc.o.Insecure, got, tc.want)
		}
	}
}
