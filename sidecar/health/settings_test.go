package health

import (
	"testing"
	"time"
)

func TestWithDefaults(t *testing.T) {
	defaults := Settings{Interval: 10 * time.Second, Timeout: 2 * time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3}
	tests := []struct {
		name string
		in   Settings
		want Settings
	}{
		{"zero", Settings{}, defaults},
		{"negative", Settings{Interval: -1, Timeout: -1, HealthyThreshold: -1, UnhealthyThreshold: -1}, defaults},
		{
			"set fields kept",
			Settings{Path: "/h", Host: "orders", HTTP2: true, Interval: time.Second, Timeout: time.Millisecond, HealthyThreshold: 1, UnhealthyThreshold: 5},
			Settings{Path: "/h", Host: "orders", HTTP2: true, Interval: time.Second, Timeout: time.Millisecond, HealthyThreshold: 1, UnhealthyThreshold: 5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestEnabled(t *testing.T) {
	tests := []struct {
		s    Settings
		want bool
	}{
		{Settings{}, false},
		{Settings{Host: "orders", HTTP2: true, Interval: time.Second}, false},
		{Settings{Path: "/healthz"}, true},
		{Settings{TCP: true}, true},
	}
	for _, tt := range tests {
		if got := tt.s.Enabled(); got != tt.want {
			t.Errorf("%+v.Enabled() = %v, want %v", tt.s, got, tt.want)
		}
	}
}
