package fakeengine

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"time"
)

// llamaServer is llama-server's HTTP API, as far as a supervisor and a smoke
// test need it.
type llamaServer struct {
	cfg    LlamaConfig
	model  string
	nSlots int
	nCtx   int
	state  *engineState

	mu          sync.Mutex
	reqBusy     []bool // slots held by completion requests
	deferred    int
	promptTok   int
	predictTok  int
	decodeCalls int
}

func newLlamaServer(cfg LlamaConfig, model string, nSlots, nCtx int, state *engineState) *llamaServer {
	return &llamaServer{cfg: cfg, model: model, nSlots: nSlots, nCtx: nCtx, state: state, reqBusy: make([]bool, nSlots)}
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

// llamaError writes llama-server's error body.
func llamaError(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{"code": code, "message": msg, "type": typ}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	w.Write(body)
}

// publicPaths need no API key.
var publicPaths = map[string]bool{"/": true, "/health": true, "/v1/health": true, "/models": true, "/v1/models": true, "/api/tags": true}

func (s *llamaServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "llama.cpp")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	if _, ok := s.state.ready(); !ok {
		if r.URL.Path == "/" || strings.HasSuffix(r.URL.Path, ".html") {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "<html><body>The model is loading. Please wait.<br/>The user interface will appear soon.</body></html>")
			return
		}
		llamaError(w, http.StatusServiceUnavailable, "unavailable_error", "Loading model")
		return
	}
	if len(s.cfg.APIKeys) > 0 && !publicPaths[r.URL.Path] && r.Method != http.MethodOptions {
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if k := r.Header.Get("X-Api-Key"); k != "" {
			key = k
		}
		ok := false
		for _, k := range s.cfg.APIKeys {
			ok = ok || k == key
		}
		if !ok {
			llamaError(w, http.StatusUnauthorized, "authentication_error", "Invalid API Key")
			return
		}
	}
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	post := r.Method == http.MethodPost
	switch {
	case get && (r.URL.Path == "/health" || r.URL.Path == "/v1/health"):
		s.health(w, r)
	case get && r.URL.Path == "/props":
		s.props(w)
	case get && r.URL.Path == "/slots":
		s.slots(w, r)
	case get && r.URL.Path == "/metrics":
		s.metrics(w)
	case get && (r.URL.Path == "/models" || r.URL.Path == "/v1/models"):
		s.models(w)
	case get && r.URL.Path == "/":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<html><body>llama.cpp (fake-engine)</body></html>")
	case post && (r.URL.Path == "/completion" || r.URL.Path == "/completions" || r.URL.Path == "/v1/completions"):
		s.complete(w, r, false)
	case post && (r.URL.Path == "/chat/completions" || r.URL.Path == "/v1/chat/completions"):
		s.complete(w, r, true)
	default:
		llamaError(w, http.StatusNotFound, "not_found_error", "File Not Found")
	}
}

// busy says which slots are processing now.
func (s *llamaServer) busy(now time.Time) []bool {
	n := s.state.faultBusy(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]bool, s.nSlots)
	for i := range out {
		out[i] = i < n || s.reqBusy[i]
	}
	return out
}

func countTrue(b []bool) int {
	n := 0
	for _, x := range b {
		if x {
			n++
		}
	}
	return n
}

func (s *llamaServer) health(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if !s.state.healthy(now) {
		llamaError(w, http.StatusServiceUnavailable, "unavailable_error", "Service Unavailable")
		return
	}
	if r.URL.Query().Get("fail_on_no_slot") != "" && countTrue(s.busy(now)) == s.nSlots {
		llamaError(w, http.StatusServiceUnavailable, "unavailable_error", "no slot available")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

func (s *llamaServer) slotJSON(id int, busy bool) map[string]any {
	task := -1
	if busy {
		task = 1000 + id
	}
	return map[string]any{
		"id": id, "id_task": task, "n_ctx": s.nCtx, "speculative": false, "is_processing": busy,
		"params":     map[string]any{"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 4294967295, "stream": true},
		"next_token": []map[string]any{{"has_next_token": busy, "has_new_line": false, "n_remain": -1, "n_decoded": 0}},
	}
}

func (s *llamaServer) props(w http.ResponseWriter) {
	alias := s.cfg.Alias
	if alias == "" {
		alias = s.model
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"default_generation_settings": s.slotJSON(0, false),
		"total_slots":                 s.nSlots,
		"model_alias":                 alias,
		"model_path":                  s.model,
		"modalities":                  map[string]bool{"vision": false, "audio": false},
		"chat_template":               "{% for message in messages %}{{ message.content }}{% endfor %}",
		"bos_token":                   "<s>",
		"eos_token":                   "</s>",
		"build_info":                  fmt.Sprintf("b%d-%s", s.cfg.Build, llamaCommit),
		"webui":                       true,
		"is_sleeping":                 false,
	})
}

func (s *llamaServer) slots(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.Slots {
		llamaError(w, http.StatusNotImplemented, "not_supported_error", "This server does not support slots endpoint. Start it with `--slots`")
		return
	}
	busy := s.busy(time.Now())
	if r.URL.Query().Get("fail_on_no_slot") != "" && countTrue(busy) == s.nSlots {
		llamaError(w, http.StatusServiceUnavailable, "unavailable_error", "no slot available")
		return
	}
	out := make([]map[string]any, s.nSlots)
	for i := range out {
		out[i] = s.slotJSON(i, busy[i])
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *llamaServer) metrics(w http.ResponseWriter) {
	if !s.cfg.Metrics {
		llamaError(w, http.StatusNotImplemented, "not_supported_error", "This server does not support metrics endpoint. Start it with `--metrics`")
		return
	}
	processing := countTrue(s.busy(time.Now()))
	s.mu.Lock()
	type metric struct {
		name, typ, help string
		value           float64
	}
	ms := []metric{
		{"prompt_tokens_total", "counter", "Number of prompt tokens processed.", float64(s.promptTok)},
		{"prompt_seconds_total", "counter", "Prompt process time", float64(s.promptTok) * 0.001},
		{"tokens_predicted_total", "counter", "Number of generation tokens processed.", float64(s.predictTok)},
		{"tokens_predicted_seconds_total", "counter", "Predict process time", float64(s.predictTok) * 0.01},
		{"n_decode_total", "counter", "Total number of llama_decode() calls", float64(s.decodeCalls)},
		{"n_busy_slots_per_decode", "counter", "Average number of busy slots per llama_decode() call", 1},
		{"prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", 0},
		{"predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.", 0},
		{"requests_processing", "gauge", "Number of requests processing.", float64(processing)},
		{"requests_deferred", "gauge", "Number of requests deferred.", float64(s.deferred)},
	}
	s.mu.Unlock()
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "# HELP llamacpp:%s %s\n# TYPE llamacpp:%s %s\nllamacpp:%s %g\n", m.name, m.help, m.name, m.typ, m.name, m.value)
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	io.WriteString(w, b.String())
}

func (s *llamaServer) models(w http.ResponseWriter) {
	id := s.cfg.Alias
	if id == "" {
		id = s.model
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data":   []map[string]any{{"id": id, "object": "model", "created": time.Now().Unix(), "owned_by": "llamacpp", "meta": map[string]any{"n_ctx_train": llamaModelCtx}}},
	})
}

// complete takes an idle slot (waiting while none is: a deferred request),
// holds it for FAKE_ENGINE_GEN_DELAY and answers a fixed text.
func (s *llamaServer) complete(w http.ResponseWriter, r *http.Request, chat bool) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	// n_predict > 0 generates that many tokens, as llama-server does with
	// ignore_eos (stop_type "limit"); otherwise 16 and an end of stream.
	var params struct {
		NPredict int `json:"n_predict"`
	}
	_ = json.Unmarshal(body, &params)
	predicted, stopType := 16, "eos"
	if params.NPredict > 0 {
		predicted, stopType = params.NPredict, "limit"
	}
	slot, waited := -1, false
	for slot < 0 {
		busy := s.busy(time.Now())
		s.mu.Lock()
		for i, b := range busy {
			if !b {
				slot = i
				s.reqBusy[i] = true
				break
			}
		}
		if slot < 0 && !waited {
			s.deferred++
			waited = true
		} else if slot >= 0 && waited {
			s.deferred--
		}
		s.mu.Unlock()
		if slot < 0 {
			select {
			case <-r.Context().Done():
				s.mu.Lock()
				s.deferred--
				s.mu.Unlock()
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	time.Sleep(s.state.faults.GenDelay)
	s.mu.Lock()
	s.reqBusy[slot] = false
	s.promptTok += 8
	s.predictTok += predicted
	s.decodeCalls += predicted + 1
	s.mu.Unlock()
	text := "Hello from fake-engine."
	if chat {
		writeJSON(w, http.StatusOK, map[string]any{
			"id": "chatcmpl-fake", "object": "chat.completion", "created": time.Now().Unix(), "model": s.model,
			"choices": []map[string]any{{"index": 0, "finish_reason": "stop", "message": map[string]any{"role": "assistant", "content": text}}},
			"usage":   map[string]int{"prompt_tokens": 8, "completion_tokens": predicted, "total_tokens": 8 + predicted},
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"content": text, "id_slot": slot, "stop": true, "model": s.model,
		"tokens_predicted": predicted, "tokens_evaluated": 8, "stop_type": stopType,
	})
}
