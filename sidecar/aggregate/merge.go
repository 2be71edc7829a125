package aggregate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// respond answers r with the merge of the legs' outcomes, or returns the
// error that replaces it.
func (h *Handler) respond(w http.ResponseWriter, r *http.Request, out []outcome) error {
	var missing, failedRequired []string
	var firstErr error
	for i, l := range h.legs {
		if out[i].err == nil {
			continue
		}
		missing = append(missing, l.cfg.Name)
		if l.cfg.Required {
			failedRequired = append(failedRequired, l.cfg.Name)
			if firstErr == nil {
				firstErr = fmt.Errorf("leg %q: %w", l.cfg.Name, out[i].err)
			}
		}
	}
	hdr := w.Header()
	if len(missing) > 0 {
		hdr.Set(HeaderMissing, strings.Join(missing, ", "))
	}
	switch {
	case len(failedRequired) > 0:
		return &pipeline.Error{Status: http.StatusBadGateway, Kind: KindLegFailed,
			Msg: fmt.Sprintf("required leg %s failed: %v", strings.Join(failedRequired, ", "), firstErr), Err: firstErr}
	case len(missing) == len(h.legs):
		return &pipeline.Error{Status: http.StatusBadGateway, Kind: KindLegFailed,
			Msg: fmt.Sprintf("every leg failed: %s: %v", missing[0], out[0].err), Err: out[0].err}
	}
	parts := make([]part, len(h.legs))
	for i, l := range h.legs {
		parts[i] = part{leg: l.cfg.Name, key: l.key, body: out[i].body, failed: out[i].err != nil}
	}
	body, err := merge(parts, h.conflict, h.concat)
	if err != nil {
		var c *conflictError
		if errors.As(err, &c) {
			return &pipeline.Error{Status: http.StatusBadGateway, Kind: KindConflict, Msg: err.Error(), Err: err}
		}
		return &pipeline.Error{Status: http.StatusBadGateway, Kind: KindLegFailed, Msg: err.Error(), Err: err}
	}
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if len(missing) > 0 {
		hdr.Set(HeaderStatus, "partial")
		// A partial answer must not be served again from a cache once
		// the missing legs are back.
		hdr.Set("Cache-Control", "no-store")
	} else {
		hdr.Set(HeaderStatus, "complete")
		var ccs []string
		for _, o := range out {
			ccs = append(ccs, strings.Join(o.header.Values("Cache-Control"), ", "))
		}
		hdr.Set("Cache-Control", mostRestrictive(ccs))
	}
	if h.allowCookie {
		for i := range h.legs {
			if out[i].err == nil {
				for _, c := range out[i].header.Values("Set-Cookie") {
					hdr.Add("Set-Cookie", c)
				}
			}
		}
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return nil
}

// part is one leg's contribution to a merge.
type part struct {
	leg    string
	key    string // "" merges body's fields at the top level
	body   []byte // the leg's response body, JSON
	failed bool   // left out
}

// conflictError is the merge's error when two legs set different values
// under one key and the policy is error.
type conflictError struct {
	key         string
	first, last string // the legs
}

func (e *conflictError) Error() string {
	return fmt.Sprintf("legs %q and %q both set %q to different values (on_conflict: error)", e.first, e.last, e.key)
}

// merge returns the JSON object made of parts, in their order: a part
// with a key is put under it; one without has its object's fields put at
// the top level. A key set by an earlier part is a conflict unless both
// values are the same JSON text (ignoring white space), or both are
// arrays named in concat (then concatenated). Conflicts are resolved by
// policy: config.ConflictError fails with a *conflictError (the first
// conflict in part order, then key order), ConflictFirst keeps the
// earlier value, ConflictLast the later. The output's keys are sorted,
// so it depends only on the parts, never on the order legs answered in.
// An empty body is null under a key and nothing at the top level.
func merge(parts []part, policy string, concat []string) ([]byte, error) {
	out := map[string]json.RawMessage{}
	owner := map[string]string{} // key: the leg that set its value
	for _, p := range parts {
		if p.failed {
			continue
		}
		fields := map[string]json.RawMessage{}
		body := bytes.TrimSpace(p.body)
		switch {
		case p.key != "" && len(body) == 0:
			fields[p.key] = json.RawMessage("null")
		case p.key != "":
			if !json.Valid(body) {
				return nil, fmt.Errorf("leg %q: the response is not JSON", p.leg)
			}
			fields[p.key] = body
		case len(body) == 0:
		default:
			if err := json.Unmarshal(body, &fields); err != nil {
				return nil, fmt.Errorf("leg %q: the response is not a JSON object, which merging at the top level needs: %v", p.leg, err)
			}
		}
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v := fields[k]
			prev, set := out[k]
			if !set {
				out[k], owner[k] = v, p.leg
				continue
			}
			if slices.Contains(concat, k) {
				if joined, ok := concatArrays(prev, v); ok {
					out[k] = joined
					continue
				}
			}
			if sameJSON(prev, v) {
				continue
			}
			switch policy {
			case config.ConflictFirst:
			case config.ConflictLast:
				out[k], owner[k] = v, p.leg
			default:
				return nil, &conflictError{key: k, first: owner[k], last: p.leg}
			}
		}
	}
	return json.Marshal(out)
}

// concatArrays returns the elements of a and then b, when both are JSON
// arrays.
func concatArrays(a, b json.RawMessage) (json.RawMessage, bool) {
	var x, y []json.RawMessage
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil || x == nil || y == nil {
		return nil, false
	}
	joined, err := json.Marshal(append(x, y...))
	return joined, err == nil
}

// sameJSON reports whether a and b are the same JSON text, ignoring white
// space.
func sameJSON(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	return json.Compact(&ca, a) == nil && json.Compact(&cb, b) == nil && bytes.Equal(ca.Bytes(), cb.Bytes())
}

// field returns the value at path in the JSON object body, as text: a
// string's contents, a number as written, true or false.
func field(body []byte, path []string) (string, error) {
	v := json.RawMessage(body)
	for i, name := range path {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(v, &obj); err != nil || obj == nil {
			if i == 0 {
				return "", errors.New("the response is not a JSON object")
			}
			return "", fmt.Errorf("field %s is not a JSON object", strings.Join(path[:i], "."))
		}
		var ok bool
		if v, ok = obj[name]; !ok {
			return "", fmt.Errorf("the response has no field %s", strings.Join(path[:i+1], "."))
		}
	}
	var x any
	d := json.NewDecoder(bytes.NewReader(v))
	d.UseNumber()
	if err := d.Decode(&x); err != nil {
		return "", err
	}
	switch x := x.(type) {
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return "", fmt.Errorf("field %s is %s, not a string, number or boolean", strings.Join(path, "."), describe(v))
}

// describe names the JSON type of v.
func describe(v json.RawMessage) string {
	switch t := bytes.TrimSpace(v); {
	case len(t) == 0:
		return "empty"
	case t[0] == '{':
		return "an object"
	case t[0] == '[':
		return "an array"
	}
	return "null"
}

// mostRestrictive returns the Cache-Control of an aggregate whose legs
// answered with ccs (one field value per leg, "" when a leg sent none):
// no-store if any leg says it; else private if any leg says it, and
// max-age of the smallest max-age of the legs, or no-cache instead if
// any leg has no max-age (no Cache-Control, no-cache, or no freshness
// given). s-maxage and other directives are dropped.
func mostRestrictive(ccs []string) string {
	private, noCache := false, false
	maxAge := -1
	for _, cc := range ccs {
		age := -1
		for d := range strings.SplitSeq(cc, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store":
				return "no-store"
			case "private":
				private = true
			case "no-cache":
				noCache = true
			case "max-age":
				if n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(value), `"`)); err == nil && n >= 0 {
					age = n
				}
			}
		}
		if age < 0 {
			noCache = true
		} else if maxAge < 0 || age < maxAge {
			maxAge = age
		}
	}
	var out []string
	if private {
		out = append(out, "private")
	}
	if noCache || maxAge < 0 {
		out = append(out, "no-cache")
	} else {
		out = append(out, "max-age="+strconv.Itoa(maxAge))
	}
	return strings.Join(out, ", ")
}
