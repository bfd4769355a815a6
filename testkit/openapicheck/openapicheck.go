// Package openapicheck holds the daemon API's responses to docs/openapi.yaml.
// It is used only by tests: those of package api, which run the handler
// against a fake Source, and those of package daemon, which run it against
// the real daemon. Both check every response with the same validator.
//
// The validator is strict: an object must have every property its schema
// requires and no property the schema does not list (the schema must say
// additionalProperties: false), nested objects and array items too; enums,
// types, integers, minItems, minLength and date-time strings are checked.
package openapicheck

import (
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// TB is the part of testing.TB the checks use: a malformed spec fails the
// test at once.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Object is a decoded YAML or JSON object.
type Object = map[string]any

// Spec is a parsed OpenAPI 3.0 document.
type Spec struct {
	// Path is the file it was read from, for messages.
	Path string
	Root Object
}

// Load reads and parses the spec at path; it must be OpenAPI 3.0.x.
func Load(t TB, path string) *Spec {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	var root Object
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if v, _ := root["openapi"].(string); !strings.HasPrefix(v, "3.0.") {
		t.Fatalf("%s: openapi %q, want 3.0.x", path, root["openapi"])
	}
	return &Spec{Path: path, Root: root}
}

// Get returns the object at keys under o.
func (s *Spec) Get(t TB, o Object, keys ...string) Object {
	t.Helper()
	for _, k := range keys {
		next, ok := o[k].(Object)
		if !ok {
			t.Fatalf("%s: no object at %s", s.Path, strings.Join(keys, "."))
		}
		o = next
	}
	return o
}

// Deref follows a local $ref ("#/components/...").
func (s *Spec) Deref(t TB, o Object) Object {
	t.Helper()
	for {
		ref, ok := o["$ref"].(string)
		if !ok {
			return o
		}
		if !strings.HasPrefix(ref, "#/") {
			t.Fatalf("%s: $ref %q is not local", s.Path, ref)
		}
		o = s.Get(t, s.Root, strings.Split(strings.TrimPrefix(ref, "#/"), "/")...)
	}
}

// Operations returns "METHOD /path" → operation, the same keys as the
// patterns of the handler's ServeMux.
func (s *Spec) Operations(t TB) map[string]Object {
	t.Helper()
	ops := map[string]Object{}
	for path, item := range s.Get(t, s.Root, "paths") {
		for method, op := range item.(Object) {
			if method == "parameters" {
				continue
			}
			ops[strings.ToUpper(method)+" "+path] = op.(Object)
		}
	}
	return ops
}

// Responses returns every documented response, as "METHOD /path STATUS", sorted.
func (s *Spec) Responses(t TB) []string {
	t.Helper()
	var out []string
	for key, op := range s.Operations(t) {
		for status := range s.Get(t, op, "responses") {
			out = append(out, key+" "+status)
		}
	}
	slices.Sort(out)
	return out
}

// Validate checks v (decoded JSON) against schema and returns what is wrong,
// each problem prefixed with where.
func (s *Spec) Validate(t TB, where string, schema Object, v any) []string {
	t.Helper()
	schema = s.Deref(t, schema)
	var errs []string
	bad := func(format string, args ...any) {
		errs = append(errs, where+": "+fmt.Sprintf(format, args...))
	}
	if enum, ok := schema["enum"].([]any); ok && !slices.Contains(enum, v) {
		bad("%v is not one of %v", v, enum)
	}
	switch typ := schema["type"]; typ {
	case "object":
		o, ok := v.(map[string]any)
		if !ok {
			bad("%T, want an object", v)
			break
		}
		if ap, ok := schema["additionalProperties"]; !ok || ap != false {
			bad("the schema must say additionalProperties: false")
		}
		props, _ := schema["properties"].(Object)
		required, _ := schema["required"].([]any)
		for _, r := range required {
			if _, ok := o[r.(string)]; !ok {
				bad("required property %q missing", r)
			}
		}
		for _, k := range SortedKeys(o) {
			p, ok := props[k].(Object)
			if !ok {
				bad("property %q is not documented", k)
				continue
			}
			errs = append(errs, s.Validate(t, where+"."+k, p, o[k])...)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			bad("%T, want an array", v)
			break
		}
		if min, ok := schema["minItems"].(int); ok && len(a) < min {
			bad("%d items, want at least %d", len(a), min)
		}
		for i, e := range a {
			errs = append(errs, s.Validate(t, fmt.Sprintf("%s[%d]", where, i), schema["items"].(Object), e)...)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			bad("%T, want a string", v)
			break
		}
		if min, ok := schema["minLength"].(int); ok && len(str) < min {
			bad("%q is shorter than %d", str, min)
		}
		if schema["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				bad("not a date-time: %v", err)
			}
		}
	case "integer":
		if n, ok := v.(float64); !ok || n != math.Trunc(n) {
			bad("%v, want an integer", v)
		}
	case "number":
		if _, ok := v.(float64); !ok {
			bad("%v, want a number", v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("%v, want a boolean", v)
		}
	default:
		bad("schema without a known type: %v", typ)
	}
	return errs
}

// CheckResponse checks one response of the operation pattern ("METHOD
// /path", as the ServeMux matched it) against the spec: the status is
// documented for the operation, the Content-Type is one of its media types,
// its documented headers are present, and the body matches the media
// type's schema (a JSON body exactly; a text body against an enum, when the
// schema has one). It returns the response's key, "METHOD /path STATUS",
// and the problems found; a problem that makes the rest moot (an
// undocumented operation or status) is the only one returned.
func (s *Spec) CheckResponse(t TB, pattern string, resp *http.Response, body []byte) (string, []string) {
	t.Helper()
	status := strconv.Itoa(resp.StatusCode)
	key := pattern + " " + status
	op, ok := s.Operations(t)[pattern]
	if !ok {
		return key, []string{fmt.Sprintf("%s is not in %s", pattern, s.Path)}
	}
	r, ok := s.Get(t, op, "responses")[status].(Object)
	if !ok {
		return key, []string{fmt.Sprintf("%s: response %s is not documented (body %q)", pattern, status, body)}
	}
	r = s.Deref(t, r)
	var errs []string
	if h, ok := r["headers"].(Object); ok {
		for _, name := range SortedKeys(h) {
			if resp.Header.Get(name) == "" {
				errs = append(errs, fmt.Sprintf("%s: documented header %s missing", key, name))
			}
		}
	}
	content := s.Get(t, r, "content")
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		return key, append(errs, fmt.Sprintf("%s: Content-Type %q: %v", key, resp.Header.Get("Content-Type"), err))
	}
	media, ok := content[mt].(Object)
	if !ok {
		return key, append(errs, fmt.Sprintf("%s: media type %s not documented (have %v)", key, mt, SortedKeys(content)))
	}
	schema := s.Get(t, media, "schema")
	if mt != "application/json" {
		if enum, ok := schema["enum"].([]any); ok && !slices.Contains(enum, any(string(body))) {
			errs = append(errs, fmt.Sprintf("%s: body %q not one of %v", key, body, enum))
		}
		return key, errs
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return key, append(errs, fmt.Sprintf("%s: body is not JSON: %v: %q", key, err, body))
	}
	for _, e := range s.Validate(t, "body", schema, v) {
		errs = append(errs, key+": "+e)
	}
	return key, errs
}

// SortedKeys returns m's keys in order.
func SortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
