package transcode

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// binding is one HTTP binding of a gRPC method (a google.api.http rule
// or one of its additional_bindings).
type binding struct {
	verb         string // the HTTP method
	tmpl         *template
	body         string // "", "*" or a top-level field name
	responseBody string // "" or a top-level field name
	rpc          protoreflect.MethodDescriptor
	path         string // "/package.Service/Method"
}

// table is one immutable snapshot of a Handler's descriptors: the
// bindings, in match order, and the types they use.
type table struct {
	bindings []*binding
	types    *resolver
	loaded   time.Time
}

// Descriptors are compiled HTTP bindings of the gRPC methods of a set of
// proto files: what a Handler transcodes. Immutable; safe for
// concurrent use.
type Descriptors struct{ t *table }

// Methods returns the number of HTTP bindings compiled.
func (d *Descriptors) Methods() int { return len(d.t.bindings) }

// ReadDescriptorSet reads a FileDescriptorSet (protoc --include_imports
// --descriptor_set_out, or buf build -o) from file and compiles the
// google.api.http bindings of its methods. It fails when the file does
// not parse, a dependency is missing, a path template is invalid, or no
// method has a binding.
func ReadDescriptorSet(file string) (*Descriptors, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("descriptor set: %w", err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("descriptor set %s: not a FileDescriptorSet: %w", file, err)
	}
	d, err := Compile(&set)
	if err != nil {
		return nil, fmt.Errorf("descriptor set %s: %w", file, err)
	}
	return d, nil
}

// Compile compiles the google.api.http bindings of the methods of set,
// which must hold every file its files import except those linked into
// this binary (google/api/*.proto, the well-known types).
func Compile(set *descriptorpb.FileDescriptorSet) (*Descriptors, error) {
	files, err := buildFiles(set)
	if err != nil {
		return nil, err
	}
	t, err := compile(files)
	if err != nil {
		return nil, err
	}
	if len(t.bindings) == 0 {
		return nil, errors.New("no method has a google.api.http option")
	}
	return &Descriptors{t}, nil
}

// buildFiles links set, taking the files it lacks from the ones linked
// into this binary.
func buildFiles(set *descriptorpb.FileDescriptorSet) (*protoregistry.Files, error) {
	have := map[string]bool{}
	for _, f := range set.File {
		have[f.GetName()] = true
	}
	all := slices.Clone(set.File)
	for i := 0; i < len(all); i++ {
		for _, dep := range all[i].Dependency {
			if have[dep] {
				continue
			}
			fd, err := protoregistry.GlobalFiles.FindFileByPath(dep)
			if err != nil {
				return nil, fmt.Errorf("%s imports %s, which is not in the set (use protoc --include_imports)", all[i].GetName(), dep)
			}
			have[dep] = true
			all = append(all, protodesc.ToFileDescriptorProto(fd))
		}
	}
	files, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: all})
	if err != nil {
		return nil, fmt.Errorf("linking descriptors: %w", err)
	}
	return files, nil
}

// compile finds the bindings of every method of files.
func compile(files *protoregistry.Files) (*table, error) {
	t := &table{types: &resolver{local: dynamicpb.NewTypes(files)}, loaded: time.Now()}
	var errs []error
	files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		svcs := fd.Services()
		for i := range svcs.Len() {
			methods := svcs.Get(i).Methods()
			for j := range methods.Len() {
				bs, err := methodBindings(methods.Get(j))
				if err != nil {
					errs = append(errs, err)
				}
				t.bindings = append(t.bindings, bs...)
			}
		}
		return true
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Verbs first, then more literal segments, then fewer "**": a
	// request matches the most specific template.
	slices.SortStableFunc(t.bindings, func(a, b *binding) int {
		if (a.tmpl.verb != "") != (b.tmpl.verb != "") {
			if a.tmpl.verb != "" {
				return -1
			}
			return 1
		}
		if a.tmpl.literals != b.tmpl.literals {
			return b.tmpl.literals - a.tmpl.literals
		}
		return deep(a.tmpl) - deep(b.tmpl)
	})
	return t, nil
}

func deep(t *template) int {
	if n := len(t.segs); n > 0 && t.segs[n-1].kind == segDeep {
		return 1
	}
	return 0
}

// methodBindings returns md's HTTP bindings; none when it has no
// google.api.http option. Client-streaming methods are not bound.
func methodBindings(md protoreflect.MethodDescriptor) ([]*binding, error) {
	rule := httpRule(md)
	if rule == nil {
		return nil, nil
	}
	if md.IsStreamingClient() {
		return nil, nil
	}
	var out []*binding
	rules := append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...)
	for _, r := range rules {
		b, err := newBinding(md, r)
		if err != nil {
			return nil, fmt.Errorf("method %s: %w", md.FullName(), err)
		}
		out = append(out, b)
	}
	return out, nil
}

// httpRule returns md's google.api.http option, or nil. The options are
// read again through this binary's registry, so that the extension is
// found whoever built the descriptors (protodesc, a compiler, dynamicpb).
func httpRule(md protoreflect.MethodDescriptor) *annotations.HttpRule {
	opts := md.Options()
	if opts == nil {
		return nil
	}
	raw, err := proto.Marshal(opts)
	if err != nil || len(raw) == 0 {
		return nil
	}
	var mo descriptorpb.MethodOptions
	if proto.Unmarshal(raw, &mo) != nil || !proto.HasExtension(&mo, annotations.E_Http) {
		return nil
	}
	return proto.GetExtension(&mo, annotations.E_Http).(*annotations.HttpRule)
}

func newBinding(md protoreflect.MethodDescriptor, r *annotations.HttpRule) (*binding, error) {
	b := &binding{
		body: r.GetBody(), responseBody: r.GetResponseBody(), rpc: md,
		path: fmt.Sprintf("/%s/%s", md.Parent().FullName(), md.Name()),
	}
	var tmpl string
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		b.verb, tmpl = http.MethodGet, p.Get
	case *annotations.HttpRule_Put:
		b.verb, tmpl = http.MethodPut, p.Put
	case *annotations.HttpRule_Post:
		b.verb, tmpl = http.MethodPost, p.Post
	case *annotations.HttpRule_Delete:
		b.verb, tmpl = http.MethodDelete, p.Delete
	case *annotations.HttpRule_Patch:
		b.verb, tmpl = http.MethodPatch, p.Patch
	case *annotations.HttpRule_Custom:
		b.verb, tmpl = p.Custom.GetKind(), p.Custom.GetPath()
	default:
		return nil, errors.New("google.api.http sets no pattern")
	}
	t, err := parseTemplate(tmpl)
	if err != nil {
		return nil, err
	}
	b.tmpl = t
	in := md.Input()
	for _, v := range t.vars {
		if _, err := fieldPath(in, v.field); err != nil {
			return nil, fmt.Errorf("path %s: %w", tmpl, err)
		}
	}
	if b.body != "" && b.body != "*" {
		if fd := in.Fields().ByName(protoreflect.Name(b.body)); fd == nil {
			return nil, fmt.Errorf("body %q: %s has no such field", b.body, in.FullName())
		}
	}
	if b.responseBody != "" {
		if fd := md.Output().Fields().ByName(protoreflect.Name(b.responseBody)); fd == nil || fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
			return nil, fmt.Errorf("response_body %q: %s has no such singular message field (others are not supported)", b.responseBody, md.Output().FullName())
		}
	}
	return b, nil
}

// match returns the binding of method and escaped path, and its path
// variables' values.
func (t *table) match(method, escaped string) (*binding, []string) {
	for _, b := range t.bindings {
		if b.verb != method {
			continue
		}
		if vals, ok := b.tmpl.match(escaped); ok {
			return b, vals
		}
	}
	return nil, nil
}

// fieldPath resolves a dotted field path (proto or JSON names) in md:
// every name but the last must be a singular message field.
func fieldPath(md protoreflect.MessageDescriptor, names []string) ([]protoreflect.FieldDescriptor, error) {
	out := make([]protoreflect.FieldDescriptor, 0, len(names))
	for i, n := range names {
		fd := md.Fields().ByName(protoreflect.Name(n))
		if fd == nil {
			fd = md.Fields().ByJSONName(n)
		}
		if fd == nil {
			return nil, fmt.Errorf("%s has no field %q", md.FullName(), strings.Join(names[:i+1], "."))
		}
		out = append(out, fd)
		if i < len(names)-1 {
			if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
				return nil, fmt.Errorf("field %q of %s is not a singular message", strings.Join(names[:i+1], "."), md.FullName())
			}
			md = fd.Message()
		}
	}
	return out, nil
}
