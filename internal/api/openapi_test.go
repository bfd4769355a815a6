package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/poolmanagerd/pool-managerd/reconcile"
	"github.com/poolmanagerd/pool-managerd/schema"
	"github.com/poolmanagerd/pool-managerd/testkit/openapicheck"
)

// The tests in this file hold docs/openapi.yaml to the handler: every route
// is documented and every documented path is a route; every response of
// the handler tests matches its documented schema exactly (no property
// missing that the schema requires, none the schema does not list, nested
// objects too), and every documented response is produced by some case; the
// Go types have exactly the schemas' properties, the optional ones being
// those with omitempty or omitzero. The validator lives in package
// testkit/openapicheck, shared with internal/daemon's test that checks the real
// daemon's responses the same way.

const specPath = "../../docs/openapi.yaml"

type object = openapicheck.Object

func loadSpec(t *testing.T) *openapicheck.Spec {
	t.Helper()
	return openapicheck.Load(t, specPath)
}

// TestOpenAPIRoutes checks that the handler's routes and the spec's
// operations are the same, and the security of each.
func TestOpenAPIRoutes(t *testing.T) {
	spec := loadSpec(t)
	ops := spec.Operations(t)
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
			item := spec.Get(t, spec.Root, "paths", rt.path)
			params, _ := item["parameters"].([]any)
			if len(params) != 1 || spec.Deref(t, params[0].(object))["name"] != "id" {
				t.Errorf("%s: the path parameter id is not documented", key)
			}
		}
		_, hasBody := op["requestBody"]
		if wantBody := rt.path == "/v1/reset" || rt.path == "/v1/stop"; hasBody != wantBody {
			t.Errorf("%s: requestBody documented %v, want %v", key, hasBody, wantBody)
		}
	}
	slices.Sort(handlerOps)
	if d := cmp.Diff(handlerOps, openapicheck.SortedKeys(ops)); d != "" {
		t.Errorf("handler routes (-) and spec operations (+) differ:\n%s", d)
	}
	global, _ := spec.Root["security"].([]any)
	if len(global) == 0 || global[0].(object)["bearerAuth"] == nil {
		t.Errorf("the spec's global security %v does not name bearerAuth", spec.Root["security"])
	}
	scheme := spec.Get(t, spec.Root, "components", "securitySchemes", "bearerAuth")
	if scheme["type"] != "http" || scheme["scheme"] != "bearer" {
		t.Errorf("bearerAuth is %v, want type http, scheme bearer", scheme)
	}
}

// TestOpenAPIResponses runs the handler test cases and checks every response
// against the spec, and that every documented response is produced.
func TestOpenAPIResponses(t *testing.T) {
	spec := loadSpec(t)
	ops := spec.Operations(t)
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
			key, errs := spec.CheckResponse(t, s.pattern, s.resp, s.body)
			seen[key] = true
			for _, e := range errs {
				t.Error(e)
			}
			if s.resp.StatusCode == 200 && c.body != "" {
				var req any
				if err := json.Unmarshal([]byte(c.body), &req); err != nil {
					t.Fatal(err)
				}
				reqSchema := spec.Get(t, op, "requestBody", "content", "application/json", "schema")
				for _, e := range spec.Validate(t, "request", reqSchema, req) {
					t.Errorf("%s: a request the handler accepts does not match the spec: %s", s.pattern, e)
				}
			}
		})
	}
	documented := spec.Responses(t)
	if d := cmp.Diff(documented, openapicheck.SortedKeys(seen)); d != "" {
		t.Errorf("documented responses (-) and responses the cases produce (+) differ:\n%s", d)
	}
}

// TestOpenAPIRequestBodies checks that bodies the spec rejects are the
// handler's 400s.
func TestOpenAPIRequestBodies(t *testing.T) {
	spec := loadSpec(t)
	ops := spec.Operations(t)
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
		reqSchema := spec.Get(t, ops[tc.route], "requestBody", "content", "application/json", "schema")
		if errs := spec.Validate(t, "request", reqSchema, req); len(errs) == 0 {
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
	"Pool":          reflect.TypeFor[Pool](),
	"Fetch":         reflect.TypeFor[Fetch](),
	"Preload":       reflect.TypeFor[Preload](),
	"GPU":           reflect.TypeFor[GPU](),
	"LastError":     reflect.TypeFor[LastError](),
	"Config":        reflect.TypeFor[Config](),
	"Revision":      reflect.TypeFor[Revision](),
	"HeldBack":      reflect.TypeFor[HeldBack](),
	"GitSource":     reflect.TypeFor[GitSource](),
	"Diagnostic":    reflect.TypeFor[schema.Diagnostic](),
	"Pos":           reflect.TypeFor[schema.Pos](),
	"Readiness":     reflect.TypeFor[Readiness](),
	"PoolReadiness": reflect.TypeFor[PoolReadiness](),
	"ResetRequest":  reflect.TypeFor[ResetRequest](),
	"StopRequest":   reflect.TypeFor[StopRequest](),
	"Error":         reflect.TypeFor[Error](),
}

// TestOpenAPITypes checks each schema against its Go type: the same
// properties, required exactly when the field has no omitempty or omitzero,
// and property types that match the fields' types.
func TestOpenAPITypes(t *testing.T) {
	spec := loadSpec(t)
	schemas := spec.Get(t, spec.Root, "components", "schemas")
	if d := cmp.Diff(openapicheck.SortedKeys(specTypes), openapicheck.SortedKeys(schemas)); d != "" {
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
	for _, name := range openapicheck.SortedKeys(specTypes) {
		typ := specTypes[name]
		sch, ok := schemas[name].(object)
		if !ok {
			continue
		}
		props := spec.Get(t, sch, "properties")
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
		if d := cmp.Diff(fields, openapicheck.SortedKeys(props)); d != "" {
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
		for _, v := range spec.Get(t, spec.Root, keys...)["enum"].([]any) {
			out = append(out, v.(string))
		}
		return out
	}
	for _, tc := range []struct {
		keys []string
		want []string
	}{
		// The lifecycle's phases, in its order: a phase added there must be documented.
		{[]string{"components", "schemas", "Pool", "properties", "phase"}, phaseNames()},
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

func phaseNames() []string {
	var out []string
	for _, p := range reconcile.Phases() {
		out = append(out, string(p))
	}
	return out
}

// TestValidatorCatches makes sure the validator finds what it must.
func TestValidatorCatches(t *testing.T) {
	spec := loadSpec(t)
	pool := object{"$ref": "#/components/schemas/Pool"}
	good := func() map[string]any {
		return map[string]any{"pool": "a", "phase": "Ready", "ready": true, "gpus": []any{}, "restarts": 0.0, "breaker": "closed"}
	}
	if errs := spec.Validate(t, "body", pool, good()); len(errs) != 0 {
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
		if errs := spec.Validate(t, "body", pool, m); len(errs) == 0 {
			t.Errorf("%s: the validator found nothing", name)
		}
	}
}
