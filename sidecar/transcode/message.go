package transcode

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// resolver finds message and extension types among a Handler's
// descriptors, then among the types linked into this binary (the
// google.rpc error details, the well-known types). Safe for concurrent
// use; immutable.
type resolver struct{ local *dynamicpb.Types }

func (r *resolver) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	if t, err := r.local.FindMessageByName(n); err == nil {
		return t, nil
	}
	return protoregistry.GlobalTypes.FindMessageByName(n)
}

func (r *resolver) FindMessageByURL(u string) (protoreflect.MessageType, error) {
	if t, err := r.local.FindMessageByURL(u); err == nil {
		return t, nil
	}
	return protoregistry.GlobalTypes.FindMessageByURL(u)
}

func (r *resolver) FindExtensionByName(n protoreflect.FullName) (protoreflect.ExtensionType, error) {
	if t, err := r.local.FindExtensionByName(n); err == nil {
		return t, nil
	}
	return protoregistry.GlobalTypes.FindExtensionByName(n)
}

func (r *resolver) FindExtensionByNumber(m protoreflect.FullName, n protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	if t, err := r.local.FindExtensionByNumber(m, n); err == nil {
		return t, nil
	}
	return protoregistry.GlobalTypes.FindExtensionByNumber(m, n)
}

// requestError is a client mistake in a request: a 400 with
// INVALID_ARGUMENT.
type requestError struct{ msg string }

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{fmt.Sprintf(format, args...)}
}

// buildRequest fills the request message of b from the body, the path
// variables vals and the query, in that order (later ones win).
func buildRequest(b *binding, body []byte, vals []string, query url.Values, strict bool, types *resolver) (*dynamicpb.Message, error) {
	msg := dynamicpb.NewMessage(b.rpc.Input())
	uo := protojson.UnmarshalOptions{DiscardUnknown: !strict, Resolver: types}
	switch {
	case b.body == "":
	case len(strings.TrimSpace(string(body))) == 0:
		// An empty body is an empty message (or field).
	case b.body == "*":
		if err := uo.Unmarshal(body, msg); err != nil {
			return nil, badRequest("the body does not fit %s: %v", b.rpc.Input().FullName(), err)
		}
	default:
		// {"field": <body>}: protojson decodes the field whatever its
		// kind, and checks the body's unknown fields as for "*".
		fd := b.rpc.Input().Fields().ByName(protoreflect.Name(b.body))
		wrapped := make([]byte, 0, len(body)+len(fd.JSONName())+5)
		wrapped = append(wrapped, '{')
		wrapped = strconv.AppendQuote(wrapped, fd.JSONName())
		wrapped = append(wrapped, ':')
		wrapped = append(wrapped, body...)
		wrapped = append(wrapped, '}')
		if err := uo.Unmarshal(wrapped, msg); err != nil {
			return nil, badRequest("the body does not fit field %q (%s): %v", b.body, b.rpc.Input().FullName(), err)
		}
	}
	bound := map[string]bool{}
	for i, v := range b.tmpl.vars {
		fds, _ := fieldPath(b.rpc.Input(), v.field) // checked when compiled
		if err := setField(msg, fds, vals[i], types); err != nil {
			return nil, badRequest("path variable %s: %v", strings.Join(v.field, "."), err)
		}
		bound[strings.Join(v.field, ".")] = true
	}
	if b.body == "*" {
		return msg, nil // every field comes from the body
	}
	for key, vs := range query {
		names := strings.Split(key, ".")
		fds, err := fieldPath(b.rpc.Input(), names)
		if err != nil {
			if strict {
				return nil, badRequest("query parameter %q: %v", key, err)
			}
			continue
		}
		if bound[key] || fds[0].Name() == protoreflect.Name(b.body) {
			continue // the path or the body sets it
		}
		last := fds[len(fds)-1]
		if !last.IsList() && len(vs) > 1 {
			return nil, badRequest("query parameter %q is given %d times; field %s is not repeated", key, len(vs), last.Name())
		}
		for _, v := range vs {
			if err := setField(msg, fds, v, types); err != nil {
				return nil, badRequest("query parameter %q: %v", key, err)
			}
		}
	}
	return msg, nil
}

// setField sets (or, for a repeated field, appends) the field at path
// fds of msg from its text s.
func setField(msg protoreflect.Message, fds []protoreflect.FieldDescriptor, s string, types *resolver) error {
	for _, fd := range fds[:len(fds)-1] {
		msg = msg.Mutable(fd).Message()
	}
	fd := fds[len(fds)-1]
	if fd.IsMap() {
		return fmt.Errorf("field %s is a map, which a path or query cannot set", fd.Name())
	}
	var v protoreflect.Value
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		// Well-known types (Timestamp, Duration, FieldMask, wrappers):
		// their JSON form is a string or a bare value.
		var m protoreflect.Message
		if fd.IsList() {
			m = msg.Mutable(fd).List().NewElement().Message()
		} else {
			m = msg.NewField(fd).Message()
		}
		uo := protojson.UnmarshalOptions{Resolver: types}
		if err := uo.Unmarshal([]byte(strconv.Quote(s)), m.Interface()); err != nil {
			if err2 := uo.Unmarshal([]byte(s), m.Interface()); err2 != nil {
				return fmt.Errorf("field %s: %q is not a %s: %v", fd.Name(), s, fd.Message().FullName(), err)
			}
		}
		v = protoreflect.ValueOfMessage(m)
	} else {
		var err error
		if v, err = scalar(fd, s); err != nil {
			return fmt.Errorf("field %s: %w", fd.Name(), err)
		}
	}
	if fd.IsList() {
		msg.Mutable(fd).List().Append(v)
	} else {
		msg.Set(fd, v)
	}
	return nil
}

// scalar parses s as a value of fd's scalar kind.
func scalar(fd protoreflect.FieldDescriptor, s string) (protoreflect.Value, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if !utf8.ValidString(s) {
			return protoreflect.Value{}, fmt.Errorf("%q is not UTF-8", s)
		}
		return protoreflect.ValueOfString(s), nil
	case protoreflect.BoolKind:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not a bool", s)
		}
		return protoreflect.ValueOfBool(b), nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not an int32", s)
		}
		return protoreflect.ValueOfInt32(int32(n)), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not an int64", s)
		}
		return protoreflect.ValueOfInt64(n), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not a uint32", s)
		}
		return protoreflect.ValueOfUint32(uint32(n)), nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not a uint64", s)
		}
		return protoreflect.ValueOfUint64(n), nil
	case protoreflect.FloatKind:
		f, err := strconv.ParseFloat(s, 32)
		if err != nil || math.IsInf(f, 0) && !strings.Contains(strings.ToLower(s), "inf") {
			return protoreflect.Value{}, fmt.Errorf("%q is not a float", s)
		}
		return protoreflect.ValueOfFloat32(float32(f)), nil
	case protoreflect.DoubleKind:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not a double", s)
		}
		return protoreflect.ValueOfFloat64(f), nil
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByName(protoreflect.Name(s)); ev != nil {
			return protoreflect.ValueOfEnum(ev.Number()), nil
		}
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("%q is not a value of %s", s, fd.Enum().FullName())
		}
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(n)), nil
	case protoreflect.BytesKind:
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(s); err == nil {
				return protoreflect.ValueOfBytes(b), nil
			}
		}
		return protoreflect.Value{}, fmt.Errorf("%q is not base64", s)
	}
	return protoreflect.Value{}, errors.New("unsupported field kind " + fd.Kind().String())
}
