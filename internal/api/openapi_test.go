package api

import (
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
)

// The tests in this file hold docs/openapi.yaml to the handler: every route
// is documented and every documented path is a route; every response of
// the handler tests matches its documented schema exactly (no property
// missing that the schema requires, none the schema does not list, nested
// objects too), and every documented response is produced by some case; the
// Go types have exactly the schemas' properties, the optional ones being
// those with omitempty or omitzero.

const specPath = "../../docs/openapi.yaml"

type object = map[string]any

// openAPI is the parsed spec.
type openAPI struct {
	root object
}

func loadSpec(t *testing.T) *openAPI {
	t.Helper()
	data, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	var root object
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatalf("%s: %v", specPath, err)
	}
	if v, _ := root["openapi"].(string); !strings.HasPrefix(v, "3.0.") {
		t.Fatalf("%s: openapi %q, want 3.0.x", specPath, root["openapi"])
	}
	return &openAPI{root: root}
}

func (s *openAPI) get(t *testing.T, o object, keys ...string) object {
	t.Helper()
	for _, k := range keys {
		next, ok := o[k].(object)
		if !ok {
			t.Fatalf("%s: no object at %s", specPath, strings.Join(keys, "."))
		}
		o = next
	}
	return o
}

// deref follows a local $ref ("#/components/...").
func (s *openAPI) deref(t *testing.T, o object) object {
	t.Helper()
	for {
		ref, ok := o["$ref"].(string)
		if !ok {
			return o
		}
		if !strings.HasPrefix(ref, "#/") {
			t.Fatalf("%s: $ref %q is not local", specPath, ref)
		}
		o = s.get(t, s.root, strings.Split(strings.TrimPrefix(ref, "#/"), "/")...)
	}
}

// operations returns "METHOD /path" → operation.
func (s *openAPI) operations(t *testing.T) map[string]object {
	t.Helper()
	ops := map[string]object{}
	for path, item := range s.get(t, s.root, "paths") {
		for method, op := range item.(object) {
			if method == "parameters" {
				continue
			}
			ops[strings.ToUpper(method)+" "+path] = op.(object)
		}
	}
	return ops
}

// validate checks v (decoded JSON) against schema and returns what is wrong.
func (s *openAPI) validate(t *testing.T, where string, schema object, v any) []string {
	t.Helper()
	schema = s.deref(t, schema)
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
		props, _ := schema["properties"].(object)
		required, _ := schema["required"].([]any)
		for _, r := range required {
			if _, ok := o[r.(string)]; !ok {
				bad("required property %q missing", r)
			}
		}
		for _, k := range sortedKeys(o) {
			p, ok := props[k].(object)
			if !ok {
				bad("property %q is not documented", k)
				continue
			}
			errs = append(errs, s.validate(t, where+"."+k, p, o[k])...)
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
			errs = append(errs, s.validate(t, fmt.Sprintf("%s[%d]", where, i), schema["items"].(object), e)...)
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestOpenAPIRoutes checks that the handler's routes and the spec's
// operations are the same, and the security of each.
func TestOpenAPIRoutes(t *testing.T) {
	spec := loadSpec(t)
	ops := spec.operations(t)
	var handlerOps []string
	for _, rt := range routes {
		key := rt.method + " " + rt.path
		handlerOps = append(handlerOps, key)
		op, ok := ops[key]
		if !ok {
			t.Errorf("route %s is not in %s", key, specPath)
			continue
		}
		sec, hasSec := op["security"].([]any)
		if rt.open != (hasSec && len(sec) == 0) {
			t.Errorf("%s: open %v, but the spec's security is %v", key, rt.open, op["security"])
		}
		if strings.Contains(rt.path, "{id}") {
			item := spec.get(t, spec.root, "paths", rt.path)
			params, _ := item["parameters"].([]any)
			if len(params) != 1 || spec.deref(t, params[0].(object))["name"] != "id" {
				t.Errorf("%s: the path parameter id is not documented", key)
			}
		}
		_, hasBody := op["requestBody"]
		if wantBody := rt.path == "/v1/reset" || rt.path == "/v1/stop"; hasBody != wantBody {
			t.Errorf("%s: requestBody documented %v, want %v", key, hasBody, wantBody)
		}
	}
	slices.Sort(handlerOps)
	if d := cmp.Diff(handlerOps, sortedKeys(ops)); d != "" {
		t.Errorf("handler routes (-) and spec operations (+) differ:\n%s", d)
	}
	global, _ := spec.root["security"].([]any)
	if len(global) == 0 || global[0].(object)["bearerAuth"] == nil {
		t.Errorf("the spec's global security %v does not name bearerAuth", spec.root["security"])
	}
	scheme := spec.get(t, spec.root, "components", "securitySchemes", "bearerAuth")
	if scheme["type"] != "http" || scheme["scheme"] != "bearer" {
		t.Errorf("bearerAuth is %v, want type http, scheme bearer", scheme)
	}
}

// TestOpenAPIResponses runs the handler test cases and checks every response
// against the spec, and that every documented response is produced.
func TestOpenAPIResponses(t *testing.T) {
	spec := loadSpec(t)
	ops := spec.operations(t)
	seen := map[string]bool{}
	for _, c := range apiCases() {
		t.Run(c.name, func(t *testing.T) {
			s := serve(t, c)
			if s.pattern == "" {
				t.Fatalf("%s %s matched no route", c.method, c.path)
			}
			op, ok := ops[s.pattern]
			if !ok {
				t.Fatalf("%s is not in the spec", s.pattern)
			}
			status := strconv.Itoa(s.resp.StatusCode)
			seen[s.pattern+" "+status] = true
			responses := spec.get(t, op, "responses")
			r, ok := responses[status].(object)
			if !ok {
				t.Fatalf("%s: response %s is not documented", s.pattern, status)
			}
			r = spec.deref(t, r)
			content := spec.get(t, r, "content")
			mt, _, err := mime.ParseMediaType(s.resp.Header.Get("Content-Type"))
			if err != nil {
				t.Fatalf("Content-Type %q: %v", s.resp.Header.Get("Content-Type"), err)
			}
			media, ok := content[mt].(object)
			if !ok {
				t.Fatalf("%s %s: media type %s not documented (have %v)", s.pattern, status, mt, sortedKeys(content))
			}
			if h, ok := r["headers"].(object); ok {
				for name := range h {
					if s.resp.Header.Get(name) == "" {
						t.Errorf("%s %s: documented header %s missing", s.pattern, status, name)
					}
				}
			}
			schema := spec.get(t, media, "schema")
			if mt != "application/json" {
				if enum, ok := schema["enum"].([]any); ok && !slices.Contains(enum, any(string(s.body))) {
					t.Errorf("%s %s: body %q not one of %v", s.pattern, status, s.body, enum)
				}
				return
			}
			var v any
			if err := json.Unmarshal(s.body, &v); err != nil {
				t.Fatalf("%s: %v", s.body, err)
			}
			for _, e := range spec.validate(t, "body", schema, v) {
				t.Errorf("%s %s: %s", s.pattern, status, e)
			}
			if s.resp.StatusCode == 200 && c.body != "" {
				var req any
				if err := json.Unmarshal([]byte(c.body), &req); err != nil {
					t.Fatal(err)
				}
				reqSchema := spec.get(t, op, "requestBody", "content", "application/json", "schema")
				for _, e := range spec.validate(t, "request", reqSchema, req) {
					t.Errorf("%s: a request the handler accepts does not match the spec: %s", s.pattern, e)
				}
			}
		})
	}
	var documented []string
	for key, op := range ops {
		for status := range spec.get(t, op, "responses") {
			documented = append(documented, key+" "+status)
		}
	}
	slices.Sort(documented)
	if d := cmp.Diff(documented, sortedKeys(seen)); d != "" {
		t.Errorf("documented responses (-) and responses the cases produce (+) differ:\n%s", d)
	}
}

// TestOpenAPIRequestBodies checks that bodies the spec rejects are the
// handler's 400s.
func TestOpenAPIRequestBodies(t *testing.T) {
	spec := loadSpec(t)
	ops := spec.operations(t)
	for _, tc := range []struct{ route, body string }{
		{"POST /v1/reset", `{"pools": []}`},
		{"POST /v1/reset", `{"pools": [""]}`},
		{"POST /v1/reset", `{"pool": ["big"]}`},
		{"POST /v1/reset", `{}`},
		{"POST /v1/stop", `{"pools": [""]}`},
		{"POST /v1/stop", `{"every": true}`},
	} {
		var req any
		if err := json.Unmarshal([]byte(tc.body), &req); err != nil {
			t.Fatal(err)
		}
		reqSchema := spec.get(t, ops[tc.route], "requestBody", "content", "application/json", "schema")
		if errs := spec.validate(t, "request", reqSchema, req); len(errs) == 0 {
			t.Errorf("%s %s: the spec accepts it", tc.route, tc.body)
		}
		method, path, _ := strings.Cut(tc.route, " ")
		if s := serve(t, apiCase{method: method, path: path, body: tc.body}); s.resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, want 400", tc.route, tc.body, s.resp.StatusCode)
		}
	}
}

// specTypes are the Go types behind the spec's schemas.
var specTypes = map[string]reflect.Type{
	"Pool":         reflect.TypeFor[Pool](),
	"Preload":      reflect.TypeFor[Preload](),
	"GPU":          reflect.TypeFor[GPU](),
	"LastError":    reflect.TypeFor[LastError](),
	"Config":       reflect.TypeFor[Config](),
	"Diagnostic":   reflect.TypeFor[schema.Diagnostic](),
	"Pos":          reflect.TypeFor[schema.Pos](),
	"Readiness":    reflect.TypeFor[Readiness](),
	"ResetRequest": reflect.TypeFor[ResetRequest](),
	"StopRequest":  reflect.TypeFor[StopRequest](),
	"Error":        reflect.TypeFor[Error](),
}

// TestOpenAPITypes checks each schema against its Go type: the same
// properties, required exactly when the field has no omitempty or omitzero,
// and property types that match the fields' types.
func TestOpenAPITypes(t *testing.T) {
	spec := loadSpec(t)
	schemas := spec.get(t, spec.root, "components", "schemas")
	if d := cmp.Diff(sortedKeys(specTypes), sortedKeys(schemas)); d != "" {
		t.Errorf("Go types (-) and spec schemas (+) differ:\n%s", d)
	}
	schemaOf := map[reflect.Type]string{}
	for name, typ := range specTypes {
		schemaOf[typ] = name
	}
	timeType := reflect.TypeFor[time.Time]()
	var checkType func(where string, prop object, typ reflect.Type)
	checkType = func(where string, prop object, typ reflect.Type) {
		if typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if name, ok := schemaOf[typ]; ok {
			if prop["$ref"] != "#/components/schemas/"+name {
				t.Errorf("%s: %v, want a $ref to %s", where, prop, name)
			}
			return
		}
		want := ""
		switch {
		case typ == timeType:
			want = "string"
			if prop["format"] != "date-time" {
				t.Errorf("%s: a time without format date-time", where)
			}
		case typ.Kind() == reflect.String:
			want = "string"
		case typ.Kind() == reflect.Bool:
			want = "boolean"
		case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
			want = "integer"
		case typ.Kind() == reflect.Float64 || typ.Kind() == reflect.Float32:
			want = "number"
		case typ.Kind() == reflect.Slice:
			want = "array"
			items, ok := prop["items"].(object)
			if !ok {
				t.Errorf("%s: an array without items", where)
			} else {
				checkType(where+"[]", items, typ.Elem())
			}
		default:
			t.Errorf("%s: Go type %v has no schema", where, typ)
			return
		}
		if prop["type"] != want {
			t.Errorf("%s: type %v, want %s (Go %v)", where, prop["type"], want, typ)
		}
	}
	for _, name := range sortedKeys(specTypes) {
		typ := specTypes[name]
		sch, ok := schemas[name].(object)
		if !ok {
			continue
		}
		props := spec.get(t, sch, "properties")
		var fields, required []string
		for f := range typ.Fields() {
			tag := f.Tag.Get("json")
			jsonName, opts, _ := strings.Cut(tag, ",")
			if !f.IsExported() || jsonName == "-" {
				continue
			}
			if jsonName == "" {
				jsonName = f.Name
			}
			fields = append(fields, jsonName)
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				required = append(required, jsonName)
			}
			prop, ok := props[jsonName].(object)
			if !ok {
				continue
			}
			checkType(name+"."+jsonName, prop, f.Type)
		}
		slices.Sort(fields)
		slices.Sort(required)
		if d := cmp.Diff(fields, sortedKeys(props)); d != "" {
			t.Errorf("%s: Go fields (-) and schema properties (+) differ:\n%s", name, d)
		}
		var specRequired []string
		if r, ok := sch["required"].([]any); ok {
			for _, x := range r {
				specRequired = append(specRequired, x.(string))
			}
		}
		slices.Sort(specRequired)
		if d := cmp.Diff(required, specRequired); d != "" {
			t.Errorf("%s: required fields in Go (-) and the spec (+) differ:\n%s", name, d)
		}
	}
}

// TestOpenAPIEnums checks the spec's enums against the Go constants.
func TestOpenAPIEnums(t *testing.T) {
	spec := loadSpec(t)
	enum := func(keys ...string) []string {
		var out []string
		for _, v := range spec.get(t, spec.root, keys...)["enum"].([]any) {
			out = append(out, v.(string))
		}
		return out
	}
	for _, tc := range []struct {
		keys []string
		want []string
	}{
		{[]string{"components", "schemas", "Pool", "properties", "phase"}, []string{
			string(reconcile.Pending), string(reconcile.Preloading), string(reconcile.Ready), string(reconcile.Unready),
			string(reconcile.Draining), string(reconcile.Failed), string(reconcile.Stopped)}},
		{[]string{"components", "schemas", "Pool", "properties", "breaker"}, []string{BreakerClosed, BreakerOpen, BreakerHalfOpen}},
		{[]string{"components", "schemas", "Preload", "properties", "state"}, []string{PreloadPending, PreloadLoading, PreloadLoaded, PreloadFailed}},
		{[]string{"components", "schemas", "Error", "properties", "error"}, []string{
			CodeBadRequest, CodeUnauthorized, CodeForbidden, CodeNotFound, CodeUnknownPool, CodeTooLarge, CodeInternal, CodeNotReady}},
	} {
		if d := cmp.Diff(tc.want, enum(tc.keys...)); d != "" {
			t.Errorf("%s: Go (-) and spec (+) differ:\n%s", strings.Join(tc.keys, "."), d)
		}
	}
}

// TestValidatorCatches makes sure the validator finds what it must.
func TestValidatorCatches(t *testing.T) {
	spec := loadSpec(t)
	pool := object{"$ref": "#/components/schemas/Pool"}
	good := func() map[string]any {
		return map[string]any{"pool": "a", "phase": "Ready", "ready": true, "gpus": []any{}, "restarts": 0.0, "breaker": "closed"}
	}
	if errs := spec.validate(t, "body", pool, good()); len(errs) != 0 {
		t.Fatalf("a good pool: %v", errs)
	}
	for name, mutate := range map[string]func(map[string]any){
		"missing required": func(m map[string]any) { delete(m, "ready") },
		"undocumented":     func(m map[string]any) { m["extra"] = 1.0 },
		"nested undocumented": func(m map[string]any) {
			m["lastError"] = map[string]any{"class": "x", "message": "y", "hint": "z", "time": "2026-01-01T00:00:00Z", "extra": true}
		},
		"nested missing": func(m map[string]any) { m["preload"] = map[string]any{} },
		"array item":     func(m map[string]any) { m["gpus"] = []any{map[string]any{"index": 0.0, "uuid": "u"}} },
		"enum":           func(m map[string]any) { m["breaker"] = "ajar" },
		"type":           func(m map[string]any) { m["restarts"] = "3" },
		"integer":        func(m map[string]any) { m["restarts"] = 1.5 },
		"date-time":      func(m map[string]any) { m["nextRetry"] = "tomorrow" },
		"null for array": func(m map[string]any) { m["gpus"] = nil },
	} {
		m := good()
		mutate(m)
		if errs := spec.validate(t, "body", pool, m); len(errs) == 0 {
			t.Errorf("%s: the validator found nothing", name)
		}
	}
}
