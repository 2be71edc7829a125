package telemetry

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	// The semantic conventions version must be the one the SDK's resource
	// package uses (v1.43.0 in otel v1.47.0), or merging our attributes with
	// the SDK's detectors fails with "conflicting Schema URL".
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// resourceModeKey is the resource attribute saying how this sidemesh process
// runs: "sidecar" or "edge".
const resourceModeKey = attribute.Key("sidemesh.mode")

// ResourceOptions describe this process for resource attributes. Empty
// fields are left out, except ServiceName, which defaults to
// "unknown_service:<executable name>" as the OpenTelemetry specification
// asks.
type ResourceOptions struct {
	ServiceName string
	InstanceID  string
	// Mode is "sidecar" or "edge".
	Mode    string
	Version string
}

// NewResource returns a resource with service.name, service.instance.id,
// service.version, sidemesh.mode, telemetry.sdk.* and host.name, then the
// attributes of OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME from the
// environment, which override those given in o (OTEL_SERVICE_NAME beats a
// service.name in OTEL_RESOURCE_ATTRIBUTES, as the specification says). The
// environment is read on every call. The schema URL is that of semconv
// v1.43.0, the one the SDK's own detectors use.
//
// A Mode other than "", "sidecar" or "edge" is an error, with a nil resource.
// If a detector fails (a malformed OTEL_RESOURCE_ATTRIBUTES, reported as an
// error wrapping resource.ErrPartialResource, or an unreadable host name),
// NewResource returns the resource built from everything else together with
// the error: the caller may log it and use the resource. It is safe to call
// concurrently.
func NewResource(ctx context.Context, o ResourceOptions) (*resource.Resource, error) {
	switch o.Mode {
	case "", "sidecar", "edge":
	default:
		return nil, fmt.Errorf("telemetry: resource mode %q is not sidecar or edge", o.Mode)
	}
	name := o.ServiceName
	if name == "" {
		name = "unknown_service:" + resourceExecutableName()
	}
	attrs := []attribute.KeyValue{semconv.ServiceName(name)}
	if o.InstanceID != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(o.InstanceID))
	}
	if o.Version != "" {
		attrs = append(attrs, semconv.ServiceVersion(o.Version))
	}
	if o.Mode != "" {
		attrs = append(attrs, resourceModeKey.String(o.Mode))
	}
	// Detectors are merged in order, later ones overriding earlier ones, so
	// the environment goes last.
	r, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(attrs...),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(),
	)
	if err != nil {
		if r == nil {
			return nil, fmt.Errorf("telemetry: resource: %w", err)
		}
		return r, fmt.Errorf("telemetry: resource (partial, usable): %w", err)
	}
	return r, nil
}

func resourceExecutableName() string {
	if exe, err := os.Executable(); err == nil {
		return filepath.Base(exe)
	}
	if len(os.Args) > 0 {
		return filepath.Base(os.Args[0])
	}
	return "sidemesh"
}
