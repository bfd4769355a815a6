// Package examples_test checks the deployment examples (the systemd units in
// systemd/, the DaemonSet in kubernetes/) and docs/deploy.md against the
// real pool-managerd: every flag and POOL_MANAGERD_* variable they use must
// be one that `pool-managerd serve` (or the command the doc runs) lists in
// its --help, the settings that keep engines alive across a daemon restart
// must be there, and the paths, ports and timeouts of each file must agree
// with each other and with the example configs beside them.
//
// The directory's other content is example config repositories (.cue files);
// this package has only tests.
package examples_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"cuelang.org/go/cue/cuecontext"
	cueyaml "cuelang.org/go/encoding/yaml"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/internal/cli"
	"github.com/poolmanagerd/pool-managerd/internal/gitsource"
	"github.com/poolmanagerd/pool-managerd/schema"
)

const (
	unitFile    = "systemd/pool-managerd.service"
	gitDropIn   = "systemd/pool-managerd.service.d/git.conf"
	envFile     = "systemd/pool-managerd.env"
	pullService = "systemd/pool-managerd-config-pull.service"
	pullTimer   = "systemd/pool-managerd-config-pull.timer"
	daemonSet   = "kubernetes/daemonset.yaml"
	deployDoc   = "../docs/deploy.md"
	readmeFile  = "../README.md"

	// envPrefix starts the environment variable of every serve flag.
	envPrefix = "POOL_MANAGERD_"
)

// ---- the real command line -------------------------------------------------

// flagSpec is what a command's --help says of its flags: name → whether it
// takes a value (a bool flag does not).
type flagSpec map[string]bool

// helpFlagLine matches a flag line of cobra's help: "  -h, --help   help",
// "      --config string   the config". The type word is absent for bools.
var helpFlagLine = regexp.MustCompile(`^\s+(?:-[A-Za-z0-9], )?--([a-z0-9][a-z0-9-]*)( [A-Za-z0-9]+)?(?:\s{2,}|$)`)

var helpCache = map[string]helpResult{}

type helpResult struct {
	flags flagSpec
	err   error
}

// commandFlags runs `pool-managerd CMD... --help` in-process and returns the
// flags its help lists.
func commandFlags(cmd ...string) (flagSpec, error) {
	key := strings.Join(cmd, " ")
	if r, ok := helpCache[key]; ok {
		return r.flags, r.err
	}
	var out, errOut bytes.Buffer
	code := cli.Main(append(slices.Clone(cmd), "--help"), &out, &errOut)
	var r helpResult
	if code != cli.ExitOK {
		r.err = fmt.Errorf("pool-managerd %s --help exited %d: %s", key, code, strings.TrimSpace(errOut.String()))
	} else if r.flags = parseHelpFlags(out.String()); len(r.flags) == 0 {
		r.err = fmt.Errorf("pool-managerd %s --help lists no flags:\n%s", key, out.String())
	}
	helpCache[key] = r
	return r.flags, r.err
}

// parseHelpFlags reads the "Flags:" and "Global Flags:" sections of a help.
func parseHelpFlags(help string) flagSpec {
	flags := flagSpec{}
	in := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case strings.HasSuffix(line, "Flags:") && !strings.HasPrefix(line, " "):
			in = true
		case strings.TrimSpace(line) == "":
			in = false
		case in:
			if m := helpFlagLine.FindStringSubmatch(line); m != nil {
				flags[m[1]] = m[2] != ""
			}
		}
	}
	return flags
}

// serveFlags returns serve's flags, or fails the test saying serve is missing.
func serveFlags(t *testing.T) flagSpec {
	t.Helper()
	flags, err := commandFlags("serve")
	if err != nil {
		t.Fatalf("%v\n(the examples run `pool-managerd serve`; is the command there yet?)", err)
	}
	return flags
}

// secretEnv are the POOL_MANAGERD_ variables that are not a flag's: the
// API's token and the token of an HTTPS --git, kept out of the command line
// so that they stay out of ps.
var secretEnv = []string{api.TokenEnv, cli.GitTokenEnv}

// flagOfEnv maps POOL_MANAGERD_STATE_DIR to state-dir; ok is false for a
// variable that is not a flag's (a token, or no POOL_MANAGERD_ prefix).
func flagOfEnv(name string) (flag string, ok bool) {
	rest, found := strings.CutPrefix(name, envPrefix)
	if !found || slices.Contains(secretEnv, name) {
		return "", false
	}
	return strings.ReplaceAll(strings.ToLower(rest), "_", "-"), true
}

// argFlag is one --flag of a command line, with its value.
type argFlag struct {
	name, value string
	hasValue    bool
}

// parseArgFlags reads the --flags of args (after the subcommand) using spec
// to know which take a value; a flag that spec lacks is returned as
// unknown. Positional arguments are skipped.
func parseArgFlags(args []string, spec flagSpec) (flags []argFlag, unknown []string, problems []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, value, inline := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		takes, known := spec[name]
		if !known {
			unknown = append(unknown, "--"+name)
			continue
		}
		f := argFlag{name: name, value: value, hasValue: inline}
		if takes && !inline {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "-") {
				problems = append(problems, fmt.Sprintf("--%s takes a value and has none", name))
			} else {
				f.value, f.hasValue = args[i+1], true
				i++
			}
		}
		flags = append(flags, f)
	}
	return flags, unknown, problems
}

func flagValue(flags []argFlag, name string) (string, bool) {
	for _, f := range flags {
		if f.name == name {
			return f.value, f.hasValue
		}
	}
	return "", false
}

// checkServeArgs checks a `serve ...` argument list (args[0] is "serve")
// against serve's flags.
func checkServeArgs(t *testing.T, where string, args []string) []argFlag {
	t.Helper()
	flags, unknown, problems := parseArgFlags(args[1:], serveFlags(t))
	for _, u := range unknown {
		t.Errorf("%s: %s is not a flag of pool-managerd serve", where, u)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", where, p)
	}
	return flags
}

// checkEnvNames checks that each POOL_MANAGERD_* name is a serve flag's.
func checkEnvNames(t *testing.T, where string, names []string) {
	t.Helper()
	spec := serveFlags(t)
	for _, n := range names {
		flag, ok := flagOfEnv(n)
		if !ok {
			if !slices.Contains(secretEnv, n) {
				t.Errorf("%s: %s is not a POOL_MANAGERD_ variable", where, n)
			}
			continue
		}
		if _, known := spec[flag]; !known {
			t.Errorf("%s: %s would set --%s, which pool-managerd serve does not have", where, n, flag)
		}
	}
}

// ---- systemd ---------------------------------------------------------------

// unit is a systemd unit file: section → key → values, in file order.
type unit struct {
	path     string
	sections map[string]map[string][]string
}

// parseUnit reads a unit file as systemd.syntax(7) describes it: [Section]
// headers, Key=Value lines, comments starting with # or ;, and lines
// continued by a trailing backslash.
func parseUnit(t *testing.T, file string) *unit {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u := &unit{path: file, sections: map[string]map[string][]string{}}
	section := ""
	var pending string // a continued line so far
	pendingLine := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if pending != "" && line != "" && (line[0] == '#' || line[0] == ';') {
			continue // comments inside a continued line are dropped
		}
		if strings.HasSuffix(line, `\`) {
			if pending == "" {
				pendingLine = n
			}
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		if pending != "" {
			line, n = pending+line, pendingLine
			pending = ""
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				t.Fatalf("%s:%d: bad section header %q", file, n, line)
			}
			section = line[1 : len(line)-1]
			if u.sections[section] == nil {
				u.sections[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s:%d: not Key=Value: %q", file, n, line)
		}
		if section == "" {
			t.Fatalf("%s:%d: %s before the first [Section]", file, n, key)
		}
		key = strings.TrimSpace(key)
		u.sections[section][key] = append(u.sections[section][key], strings.TrimSpace(value))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if pending != "" {
		t.Fatalf("%s:%d: continued line never ends", file, pendingLine)
	}
	return u
}

// get returns the last value of section.key (the one systemd uses for a
// single-valued setting).
func (u *unit) get(section, key string) (string, bool) {
	vs := u.sections[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

func (u *unit) want(t *testing.T, section, key, want string) {
	t.Helper()
	got, ok := u.get(section, key)
	switch {
	case !ok:
		t.Errorf("%s: [%s] has no %s= (want %s)", u.path, section, key, want)
	case got != want:
		t.Errorf("%s: [%s] %s=%s, want %s", u.path, section, key, got, want)
	}
}

// command splits an Exec*= value into its words, as systemd does for words
// without specifiers: prefixes (-, @, :, +, !) on the first word are dropped,
// "..." and '...' quote.
func command(t *testing.T, value string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range value {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", value)
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		t.Fatalf("empty command %q", value)
	}
	words[0] = strings.TrimLeft(words[0], "-@:+!")
	return words
}

var spanPart = regexp.MustCompile(`^(\d+(?:\.\d+)?)\s*([a-z]*)\s*`)

// timespan parses a systemd time span: "90", "90s", "3min", "1min 30s".
func timespan(t *testing.T, s string) time.Duration {
	t.Helper()
	if s == "infinity" {
		return time.Duration(1<<63 - 1)
	}
	units := map[string]time.Duration{
		"": time.Second, "s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
		"ms": time.Millisecond, "msec": time.Millisecond,
		"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	}
	var total time.Duration
	rest := strings.TrimSpace(s)
	if rest == "" {
		t.Fatalf("empty time span")
	}
	for rest != "" {
		m := spanPart.FindStringSubmatch(rest)
		if m == nil {
			t.Fatalf("not a systemd time span: %q", s)
		}
		unit, ok := units[m[2]]
		if !ok {
			t.Fatalf("not a systemd time span: %q (unit %q)", s, m[2])
		}
		f, _ := strconv.ParseFloat(m[1], 64)
		total += time.Duration(f * float64(unit))
		rest = rest[len(m[0]):]
	}
	return total
}

// longestEngineStop is the longest restart.drainTimeout + restart.stopGrace
// of any pool of the example configs: how long a daemon that stops its
// engines on exit may take.
func longestEngineStop(t *testing.T) (time.Duration, string) {
	t.Helper()
	var longest time.Duration
	var which string
	for _, dir := range exampleConfigs(t) {
		d, err := schema.Load(context.Background(), dir)
		if err != nil {
			t.Fatalf("load %s: %v", dir, err)
		}
		for _, id := range d.SortedPoolIDs() {
			r := d.Pools[id].Restart
			if stop := r.DrainTimeout + r.StopGrace; stop > longest {
				longest, which = stop, fmt.Sprintf("pool %s of %s (drainTimeout %s + stopGrace %s)", id, dir, r.DrainTimeout, r.StopGrace)
			}
		}
	}
	return longest, which
}

// exampleConfigs lists the example config repositories: the directories
// here that hold .cue files.
func exampleConfigs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		hasCUE := false
		_ = filepath.WalkDir(e.Name(), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(p, ".cue") {
				hasCUE = true
				return filepath.SkipAll
			}
			return err
		})
		if hasCUE {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no example config repositories")
	}
	return dirs
}

// forbidden are service settings that break GPUs or engines, with why.
var forbidden = map[string]string{
	"PrivateDevices":         "hides /dev/nvidia*",
	"DevicePolicy":           "an allow-list of devices shuts out /dev/nvidia*",
	"DeviceAllow":            "any entry turns on the device allow-list, which shuts out /dev/nvidia*",
	"ProtectClock":           "implies a DeviceAllow= entry, which shuts out /dev/nvidia*",
	"PrivateTmp":             "the private /tmp is deleted when the unit stops, under engines that outlive the daemon",
	"MemoryDenyWriteExecute": "breaks the JIT compilers in the engines",
	"PrivatePIDs":            "the daemon must see the host pids that NVML reports",
	"MemoryMax":              "would cap the engines, which run in this unit's cgroup",
	"MemoryHigh":             "would throttle the engines, which run in this unit's cgroup",
	"CPUQuota":               "would cap the engines, which run in this unit's cgroup",
}

func isOff(v string) bool {
	switch strings.ToLower(v) {
	case "no", "false", "0", "off", "":
		return true
	}
	return false
}

// TestSystemdUnit checks pool-managerd.service: the settings that make
// systemd and the daemon work together and keep engines alive across a
// restart of the daemon, none of the hardening that would break GPU access,
// and a serve command line that pool-managerd accepts.
func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, unitFile)
	u.want(t, "Service", "Type", "notify")
	u.want(t, "Service", "NotifyAccess", "main")
	u.want(t, "Service", "KillMode", "process")
	u.want(t, "Service", "OOMPolicy", "continue")
	u.want(t, "Service", "EnvironmentFile", "-/etc/pool-managerd/env")
	u.want(t, "Install", "WantedBy", "multi-user.target")
	if r, _ := u.get("Service", "Restart"); r != "on-failure" && r != "always" {
		t.Errorf("%s: Restart=%s, want on-failure or always", u.path, r)
	}
	if reload, ok := u.get("Service", "ExecReload"); !ok {
		t.Errorf("%s: no ExecReload=: systemctl reload must send SIGHUP", u.path)
	} else {
		words := command(t, reload)
		if path.Base(words[0]) != "kill" || !slices.Contains(words, "$MAINPID") ||
			!(slices.Contains(words, "-HUP") || slices.Contains(words, "-SIGHUP") || slices.Contains(words, "-1")) {
			t.Errorf("%s: ExecReload=%s does not send SIGHUP to $MAINPID", u.path, reload)
		}
	}
	if w, ok := u.get("Service", "WatchdogSec"); !ok || timespan(t, w) <= 0 {
		t.Errorf("%s: WatchdogSec=%q: want a watchdog, the daemon sends WATCHDOG=1", u.path, w)
	}
	for key, why := range forbidden {
		if v, ok := u.get("Service", key); ok && !isOff(v) {
			t.Errorf("%s: %s=%s: %s", u.path, key, v, why)
		}
	}
	if v, _ := u.get("Service", "ProtectProc"); v == "invisible" || v == "noaccess" || v == "ptraceable" {
		t.Errorf("%s: ProtectProc=%s: the daemon reads /proc of the pids NVML reports", u.path, v)
	}

	start, ok := u.get("Service", "ExecStart")
	if !ok {
		t.Fatalf("%s: no ExecStart=", u.path)
	}
	args := command(t, start)
	if path.Base(args[0]) != "pool-managerd" || len(args) < 2 || args[1] != "serve" {
		t.Fatalf("%s: ExecStart=%s does not run pool-managerd serve", u.path, start)
	}

	// Stopping engines on exit (a flag, or the environment file) takes up to
	// the longest drain + grace; the stop timeout must leave room for it.
	stop, ok := u.get("Service", "TimeoutStopSec")
	if !ok {
		t.Errorf("%s: no TimeoutStopSec=", u.path)
	} else if longest, which := longestEngineStop(t); timespan(t, stop) <= longest {
		t.Errorf("%s: TimeoutStopSec=%s leaves no room to stop the engines of %s", u.path, stop, which)
	}

	t.Run("serve flags", func(t *testing.T) {
		flags := checkServeArgs(t, u.path+": ExecStart", args[1:])
		for _, name := range []string{"config", "state-dir"} {
			if _, ok := flagValue(flags, name); !ok {
				t.Errorf("%s: ExecStart has no --%s", u.path, name)
			}
		}
		// systemd creates the state directory (StateDirectory=, under
		// /var/lib) for the unit's user: it must be --state-dir.
		stateDir, _ := flagValue(flags, "state-dir")
		if sd, ok := u.get("Service", "StateDirectory"); !ok || filepath.Join("/var/lib", sd) != stateDir {
			t.Errorf("%s: StateDirectory=%s is not --state-dir %s", u.path, sd, stateDir)
		}
	})
}

// TestSystemdConfigPull checks the timer that pulls the fleet's config: it
// pulls, fast-forward only, the directory the daemon watches.
func TestSystemdConfigPull(t *testing.T) {
	svc := parseUnit(t, pullService)
	svc.want(t, "Service", "Type", "oneshot")
	start, _ := svc.get("Service", "ExecStart")
	git := command(t, start)
	if path.Base(git[0]) != "git" || !slices.Contains(git, "pull") || !slices.Contains(git, "--ff-only") {
		t.Errorf("%s: ExecStart=%s is not a git pull --ff-only", svc.path, start)
	}
	repo := ""
	if i := slices.Index(git, "-C"); i >= 0 && i+1 < len(git) {
		repo = git[i+1]
	}
	daemon := command(t, mustGet(t, parseUnit(t, unitFile), "Service", "ExecStart"))
	config := ""
	for i, a := range daemon {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			config = v
		} else if a == "--config" && i+1 < len(daemon) {
			config = daemon[i+1]
		}
	}
	if repo == "" || repo != config {
		t.Errorf("%s pulls %q (git -C), but the daemon watches --config %q", svc.path, repo, config)
	}
	if user, _ := svc.get("Service", "User"); user == "" || user == "root" {
		t.Errorf("%s: User=%q: pull as the user that owns the clone, not root", svc.path, user)
	}

	tm := parseUnit(t, pullTimer)
	_, active := tm.get("Timer", "OnUnitActiveSec")
	_, inactive := tm.get("Timer", "OnUnitInactiveSec")
	_, calendar := tm.get("Timer", "OnCalendar")
	if !active && !inactive && !calendar {
		t.Errorf("%s: no OnUnitActiveSec=, OnUnitInactiveSec= or OnCalendar=: it never repeats", tm.path)
	}
	target := strings.TrimSuffix(filepath.Base(pullTimer), ".timer") + ".service"
	if v, ok := tm.get("Timer", "Unit"); ok {
		target = v
	}
	if target != filepath.Base(pullService) {
		t.Errorf("%s starts %s, want %s", tm.path, target, filepath.Base(pullService))
	}
	tm.want(t, "Install", "WantedBy", "timers.target")
}

// ---- the built-in Git source ------------------------------------------------

// gitSettings is how a deployment sets up serve's built-in Git source.
type gitSettings struct {
	url, ref, path, interval      string
	sshKey, knownHosts, tokenFile string
	// token: POOL_MANAGERD_GIT_TOKEN is set.
	token bool
}

// checkGitSource hands a deployment's settings to the Git source that serve
// builds from them (gitsource.New: it checks the URL, the ref and the path,
// refuses credentials that do not fit the URL, and reads the key files, as
// serve does at start, with exit 2 for what can never work). A generated
// key and a known_hosts line for the URL's host stand in for the
// deployment's files. New fetches nothing: no network.
func checkGitSource(t *testing.T, where string, g gitSettings) {
	t.Helper()
	opts := gitsource.Options{URL: g.url, Ref: g.ref, Path: g.path, Dir: t.TempDir()}
	if g.interval != "" {
		d, err := time.ParseDuration(g.interval)
		if err != nil {
			t.Errorf("%s: --git-interval %s: %v", where, g.interval, err)
		}
		opts.Interval = d
	}
	if g.token || g.tokenFile != "" {
		opts.Auth.Token = "a-token"
	}
	for _, f := range []struct{ flag, file string }{{"git-ssh-key", g.sshKey}, {"git-known-hosts", g.knownHosts}, {"git-token-file", g.tokenFile}} {
		if f.file != "" && !path.IsAbs(f.file) {
			t.Errorf("%s: --%s %s is not an absolute path", where, f.flag, f.file)
		}
	}
	ep, err := transport.NewEndpoint(g.url)
	if err != nil {
		t.Errorf("%s: --git %s: %v", where, g.url, err)
		return
	}
	if ep.Protocol == "ssh" && g.knownHosts == "" {
		t.Errorf("%s: the SSH --git %s has no --git-known-hosts: the daemon would rely on ~/.ssh/known_hosts of its user", where, g.url)
	}
	if g.sshKey != "" || g.knownHosts != "" {
		key, hosts := sshFiles(t, ep)
		if g.sshKey != "" {
			opts.Auth.SSHKeyFile = key
		}
		if g.knownHosts != "" {
			opts.Auth.KnownHostsFile = hosts
		}
	}
	if _, err := gitsource.New(opts); err != nil {
		t.Errorf("%s: the Git source refuses these settings: %v", where, err)
	}
}

// sshFiles writes a private key without a passphrase, as a deploy key is,
// and a known_hosts file that names ep's host.
func sshFiles(t *testing.T, ep *transport.Endpoint) (keyFile, knownHostsFile string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	port := ep.Port
	if port == 0 {
		port = 22
	}
	dir := t.TempDir()
	keyFile, knownHostsFile = filepath.Join(dir, "deploy_key"), filepath.Join(dir, "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(ep.Host, strconv.Itoa(port)))}, sshPub)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(knownHostsFile, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return keyFile, knownHostsFile
}

// TestSystemdGitDropIn checks the drop-in that runs pool-managerd.service
// with the built-in Git source: it replaces the unit's ExecStart= (clearing
// it first, as a service that is not Type=oneshot may have only one), with
// --git instead of --config and the unit's other flags kept, on a command
// line that pool-managerd accepts.
func TestSystemdGitDropIn(t *testing.T) {
	if dir, want := filepath.Base(filepath.Dir(gitDropIn)), filepath.Base(unitFile)+".d"; dir != want {
		t.Errorf("%s is in %s, but a drop-in of %s goes in %s", gitDropIn, dir, filepath.Base(unitFile), want)
	}
	d := parseUnit(t, gitDropIn)
	starts := d.sections["Service"]["ExecStart"]
	if len(starts) != 2 || starts[0] != "" || starts[1] == "" {
		t.Fatalf("%s: ExecStart= %q: want an empty ExecStart= that clears the unit's, then the new one", gitDropIn, starts)
	}
	args := command(t, starts[1])
	if path.Base(args[0]) != "pool-managerd" || len(args) < 2 || args[1] != "serve" {
		t.Fatalf("%s: ExecStart=%s does not run pool-managerd serve", gitDropIn, starts[1])
	}
	u := parseUnit(t, unitFile)
	unitArgs := command(t, mustGet(t, u, "Service", "ExecStart"))
	if args[0] != unitArgs[0] {
		t.Errorf("%s runs %s, but %s runs %s", gitDropIn, args[0], unitFile, unitArgs[0])
	}

	flags := checkServeArgs(t, gitDropIn+": ExecStart", args[1:])
	if v, ok := flagValue(flags, "config"); ok {
		t.Errorf("%s: ExecStart has --config %s: --config and --git exclude each other", gitDropIn, v)
	}
	url, ok := flagValue(flags, "git")
	if !ok {
		t.Fatalf("%s: ExecStart has no --git", gitDropIn)
	}
	// The unit's other flags stay as they were: the state directory that
	// StateDirectory= creates (and that holds the clone, in git/), the log
	// format, ...
	for _, f := range checkServeArgs(t, unitFile+": ExecStart", unitArgs[1:]) {
		if f.name == "config" {
			continue
		}
		if v, ok := flagValue(flags, f.name); !ok || v != f.value {
			t.Errorf("%s: ExecStart drops or changes the unit's --%s %s", gitDropIn, f.name, f.value)
		}
	}
	get := func(name string) string { v, _ := flagValue(flags, name); return v }
	checkGitSource(t, gitDropIn, gitSettings{
		url: url, ref: get("git-ref"), path: get("git-path"), interval: get("git-interval"),
		sshKey: get("git-ssh-key"), knownHosts: get("git-known-hosts"), tokenFile: get("git-token-file"),
	})
}

func mustGet(t *testing.T, u *unit, section, key string) string {
	t.Helper()
	v, ok := u.get(section, key)
	if !ok {
		t.Fatalf("%s: [%s] has no %s=", u.path, section, key)
	}
	return v
}

// envLine matches a variable of an EnvironmentFile, set or commented out.
var envLine = regexp.MustCompile(`^#?\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)

// TestSystemdEnvFile checks the EnvironmentFile example: each line is a
// comment or VAR=value, and every POOL_MANAGERD_ variable it sets or shows
// (commented out) is one serve reads.
func TestSystemdEnvFile(t *testing.T) {
	data, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		m := envLine.FindStringSubmatch(line)
		switch {
		case m != nil && strings.HasPrefix(m[1], envPrefix):
			names = append(names, m[1])
		case line == "" || strings.HasPrefix(line, "#"):
		default:
			t.Errorf("%s:%d: neither a comment nor POOL_MANAGERD_VAR=value: %q", envFile, i+1, line)
		}
	}
	if len(names) == 0 {
		t.Fatalf("%s shows no POOL_MANAGERD_ variable", envFile)
	}
	if !slices.Contains(names, api.TokenEnv) {
		t.Errorf("%s does not show %s, which a non-loopback --listen needs", envFile, api.TokenEnv)
	}
	t.Run("serve flags", func(t *testing.T) {
		checkEnvNames(t, envFile, names)
	})
}

// ---- Kubernetes ------------------------------------------------------------

// The parts of Kubernetes objects that the checks read.
type (
	k8sObject struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	daemonSetSpec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec podSpec `json:"spec"`
		} `json:"template"`
	}
	podSpec struct {
		HostPID                       bool              `json:"hostPID"`
		PriorityClassName             string            `json:"priorityClassName"`
		AutomountServiceAccountToken  *bool             `json:"automountServiceAccountToken"`
		NodeSelector                  map[string]string `json:"nodeSelector"`
		TerminationGracePeriodSeconds *int64            `json:"terminationGracePeriodSeconds"`
		InitContainers                []container       `json:"initContainers"`
		Containers                    []container       `json:"containers"`
		Volumes                       []volume          `json:"volumes"`
	}
	container struct {
		Name    string   `json:"name"`
		Image   string   `json:"image"`
		Command []string `json:"command"`
		Args    []string `json:"args"`
		Env     []envVar `json:"env"`
		Ports   []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
		} `json:"ports"`
		LivenessProbe   *probe           `json:"livenessProbe"`
		ReadinessProbe  *probe           `json:"readinessProbe"`
		StartupProbe    *probe           `json:"startupProbe"`
		VolumeMounts    []volumeMount    `json:"volumeMounts"`
		SecurityContext *securityContext `json:"securityContext"`
	}
	securityContext struct {
		Privileged               *bool `json:"privileged"`
		AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
		Capabilities             *struct {
			Add  []string `json:"add"`
			Drop []string `json:"drop"`
		} `json:"capabilities"`
		SeccompProfile *struct {
			Type string `json:"type"`
		} `json:"seccompProfile"`
	}
	volumeMount struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
		ReadOnly  bool   `json:"readOnly"`
	}
	envVar struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `json:"fieldPath"`
			} `json:"fieldRef"`
			SecretKeyRef *struct {
				Name string `json:"name"`
				Key  string `json:"key"`
			} `json:"secretKeyRef"`
		} `json:"valueFrom"`
	}
	probe struct {
		HTTPGet *struct {
			Path string          `json:"path"`
			Port json.RawMessage `json:"port"` // a number or a port's name
		} `json:"httpGet"`
		PeriodSeconds    int `json:"periodSeconds"`
		FailureThreshold int `json:"failureThreshold"`
	}
	volume struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
		} `json:"hostPath"`
		Secret *struct {
			SecretName string       `json:"secretName"`
			Items      []secretItem `json:"items"`
		} `json:"secret"`
	}
	// secretItem puts a key of a Secret volume at a path of its own.
	secretItem struct {
		Key  string `json:"key"`
		Path string `json:"path"`
	}
)

// readManifest decodes a multi-document YAML file with CUE's YAML decoder.
func readManifest(t *testing.T, file string) []k8sObject {
	t.Helper()
	f, err := cueyaml.Extract(file, nil)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	v := cuecontext.New().BuildFile(f)
	if err := v.Err(); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	data, err := v.MarshalJSON()
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var objs []k8sObject
	if err := json.Unmarshal(data, &objs); err != nil {
		t.Fatalf("%s: want several YAML documents (---), each a Kubernetes object: %v", file, err)
	}
	for i, o := range objs {
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name", file, i+1)
		}
	}
	return objs
}

// theDaemonSet returns the manifest's one DaemonSet and its serve container.
func theDaemonSet(t *testing.T) (*daemonSetSpec, *container) {
	t.Helper()
	var found []*daemonSetSpec
	for _, o := range readManifest(t, daemonSet) {
		if o.Kind != "DaemonSet" {
			continue
		}
		var ds daemonSetSpec
		if err := json.Unmarshal(o.Spec, &ds); err != nil {
			t.Fatalf("%s: DaemonSet %s: %v", daemonSet, o.Metadata.Name, err)
		}
		found = append(found, &ds)
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d DaemonSets, want 1", daemonSet, len(found))
	}
	ds := found[0]
	for i := range ds.Template.Spec.Containers {
		c := &ds.Template.Spec.Containers[i]
		if len(c.Args) > 0 && c.Args[0] == "serve" {
			return ds, c
		}
	}
	t.Fatalf("%s: no container runs serve (args: [serve, ...])", daemonSet)
	return nil, nil
}

func (c *container) env(name string) *envVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// setting returns serve's setting of flag in a container: the argument
// first (a flag wins), then the POOL_MANAGERD_ variable.
func (c *container) setting(flag string) (string, bool) {
	for i, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
			return v, true
		}
		if a == "--"+flag && i+1 < len(c.Args) {
			return c.Args[i+1], true
		}
	}
	if e := c.env(envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))); e != nil && e.ValueFrom == nil {
		return e.Value, true
	}
	return "", false
}

// mountOf returns the volume mounted at dir in c, or the one that holds it.
func (c *container) mountOf(dir string) (name, mountPath string) {
	for _, m := range c.VolumeMounts {
		if (dir == m.MountPath || strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(mountPath) {
			name, mountPath = m.Name, m.MountPath
		}
	}
	return name, mountPath
}

func (c *container) probePort(t *testing.T, p *probe) int {
	t.Helper()
	var n int
	if err := json.Unmarshal(p.HTTPGet.Port, &n); err == nil {
		return n
	}
	var name string
	if err := json.Unmarshal(p.HTTPGet.Port, &name); err != nil {
		t.Fatalf("probe port %s is neither a number nor a name", p.HTTPGet.Port)
	}
	for _, cp := range c.Ports {
		if cp.Name == name {
			return cp.ContainerPort
		}
	}
	t.Errorf("probe port %q names no port of container %s", name, c.Name)
	return 0
}

// TestDaemonSet checks the DaemonSet: hostPID, the node name from the
// downward API, the token from a Secret, the state directory (and with it
// the Git source's clone) on the host, probes on the API's port, the config
// from the built-in Git source with its credentials in a mounted Secret,
// the models of the example configs visible in the container, and a serve
// command line and environment that pool-managerd accepts.
func TestDaemonSet(t *testing.T) {
	ds, c := theDaemonSet(t)
	pod := ds.Template.Spec

	for k, v := range ds.Selector.MatchLabels {
		if ds.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, ds.Template.Metadata.Labels)
		}
	}
	if !pod.HostPID {
		t.Error("hostPID is not true: NVML reports host pids, which the daemon must match to its engines")
	}
	if pod.NodeSelector["nvidia.com/gpu.present"] != "true" {
		t.Errorf("nodeSelector %v does not pick GPU nodes (nvidia.com/gpu.present: \"true\")", pod.NodeSelector)
	}

	if e := c.env("POOL_MANAGERD_NODE"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Error("POOL_MANAGERD_NODE does not come from the downward API (fieldRef spec.nodeName)")
	}
	if e := c.env(api.TokenEnv); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Name == "" || e.ValueFrom.SecretKeyRef.Key == "" {
		t.Errorf("%s does not come from a Secret (secretKeyRef)", api.TokenEnv)
	}
	if e := c.env(api.TokenEnv); e != nil && e.Value != "" {
		t.Errorf("%s has a literal value in the manifest: keep it in a Secret", api.TokenEnv)
	}

	// The API's port: the probes and the container port use it; a
	// non-loopback address needs the token (api.CheckListen).
	listen, ok := c.setting("listen")
	if !ok {
		t.Fatal("the serve container sets no --listen / POOL_MANAGERD_LISTEN: on 127.0.0.1 the kubelet cannot probe it")
	}
	_, portText, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("listen address %q: %v", listen, err)
	}
	port, _ := strconv.Atoi(portText)
	if err := api.CheckListen(listen, ""); errors.Is(err, api.ErrTokenRequired) && c.env(api.TokenEnv) == nil {
		t.Errorf("listen %s needs %s: the daemon would refuse to start", listen, api.TokenEnv)
	}
	for _, pr := range []struct {
		name string
		p    *probe
		path string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}, {"startupProbe", c.StartupProbe, "/healthz"}} {
		switch {
		case pr.p == nil || pr.p.HTTPGet == nil:
			t.Errorf("%s: want an httpGet of %s", pr.name, pr.path)
		case pr.p.HTTPGet.Path != pr.path:
			t.Errorf("%s: path %s, want %s", pr.name, pr.p.HTTPGet.Path, pr.path)
		case c.probePort(t, pr.p) != port:
			t.Errorf("%s: port %s, but the API listens on %s", pr.name, pr.p.HTTPGet.Port, listen)
		}
	}

	// The state directory is on the host, so its engine logs and records
	// outlive the pod.
	stateDir, ok := c.setting("state-dir")
	if !ok {
		t.Error("the serve container sets no --state-dir")
	}
	volumes := map[string]volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, ct := range slices.Concat(pod.InitContainers, pod.Containers) {
		for _, m := range ct.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("container %s mounts volume %s, which the pod does not have", ct.Name, m.Name)
			}
		}
	}
	// It holds the Git source's clone and the checkout in force (STATE_DIR/git),
	// which a new pod starts from before its first fetch.
	if name, mp := c.mountOf(stateDir); mp != stateDir || volumes[name].HostPath == nil || volumes[name].HostPath.Path != stateDir {
		t.Errorf("--state-dir %s is not a hostPath volume of the same path mounted there", stateDir)
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath == stateDir && m.ReadOnly {
			t.Errorf("--state-dir %s is mounted read-only: the daemon writes its state, logs and Git checkouts there", stateDir)
		}
	}

	// The models the example configs name are inside a mount.
	for _, dir := range exampleConfigs(t) {
		d, err := schema.Load(context.Background(), dir)
		if err != nil {
			t.Fatalf("load %s: %v", dir, err)
		}
		for _, id := range d.SortedPoolIDs() {
			p := d.Pools[id].Model.Path
			if name, _ := c.mountOf(p); name == "" || volumes[name].HostPath == nil {
				t.Errorf("model %s of pool %s (%s) is on no hostPath mount of the serve container", p, id, dir)
			}
		}
	}

	// Stopping engines on exit must fit in the grace period.
	if stopping, _ := c.setting("stop-engines-on-exit"); stopping == "true" {
		longest, which := longestEngineStop(t)
		if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= longest {
			t.Errorf("terminationGracePeriodSeconds leaves no room to stop the engines of %s", which)
		}
	}

	// The config comes from the built-in Git source; its credentials are
	// files of a Secret mounted in the serve container, under the keys that
	// docs/deploy.md's kubectl commands create.
	if config, ok := c.setting("config"); ok {
		t.Errorf("the serve container sets --config %s: the DaemonSet follows its repository with --git, and the two exclude each other", config)
	}
	git, ok := c.setting("git")
	if !ok {
		t.Error("the serve container sets no --git / POOL_MANAGERD_GIT: where does the config come from?")
	}
	for _, ct := range slices.Concat(pod.InitContainers, pod.Containers) {
		if strings.Contains(ct.Image, "git-sync") {
			t.Errorf("container %s runs git-sync: the daemon fetches the repository itself (--git)", ct.Name)
		}
	}
	secrets := docSecretKeys(t)
	for _, flag := range []string{"git-ssh-key", "git-known-hosts", "git-token-file"} {
		file, ok := c.setting(flag)
		if !ok {
			continue
		}
		name, mp := c.mountOf(file)
		v := volumes[name]
		if name == "" || v.Secret == nil {
			t.Errorf("--%s %s is in no Secret volume mounted in the serve container", flag, file)
			continue
		}
		key := strings.TrimPrefix(file, strings.TrimSuffix(mp, "/")+"/")
		if len(v.Secret.Items) > 0 {
			i := slices.IndexFunc(v.Secret.Items, func(it secretItem) bool { return it.Path == key })
			if i < 0 {
				t.Errorf("--%s %s: the items of Secret volume %s put no file at %s", flag, file, name, key)
				continue
			}
			key = v.Secret.Items[i].Key
		}
		switch keys, known := secrets[v.Secret.SecretName]; {
		case !known:
			t.Errorf("--%s %s is in Secret %s, which %s never creates (kubectl create secret generic)", flag, file, v.Secret.SecretName, deployDoc)
		case !slices.Contains(keys, key):
			t.Errorf("--%s %s is key %s of Secret %s, which %s creates with the keys %v", flag, file, key, v.Secret.SecretName, deployDoc, keys)
		}
	}
	token := c.env(cli.GitTokenEnv)
	if token != nil && (token.ValueFrom == nil || token.ValueFrom.SecretKeyRef == nil) {
		t.Errorf("%s does not come from a Secret (secretKeyRef)", cli.GitTokenEnv)
	}
	if git != "" {
		get := func(flag string) string { v, _ := c.setting(flag); return v }
		checkGitSource(t, daemonSet, gitSettings{
			url: git, ref: get("git-ref"), path: get("git-path"), interval: get("git-interval"),
			sshKey: get("git-ssh-key"), knownHosts: get("git-known-hosts"), tokenFile: get("git-token-file"),
			token: token != nil,
		})
	}

	t.Run("serve flags", func(t *testing.T) {
		flags := checkServeArgs(t, daemonSet+": args", c.Args)
		for _, name := range []string{"git", "state-dir"} {
			if _, ok := flagValue(flags, name); !ok {
				t.Errorf("%s: the serve container's args have no --%s", daemonSet, name)
			}
		}
		var names []string
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, envPrefix) {
				names = append(names, e.Name)
			}
		}
		checkEnvNames(t, daemonSet+": env", names)
	})
}

// secretCreate matches `kubectl create secret generic NAME --from-...`.
var (
	secretCreate = regexp.MustCompile(`\bcreate secret generic ([a-z0-9][a-z0-9.-]*)((?:\s+--from-(?:file|literal)=\S+)+)`)
	secretSource = regexp.MustCompile(`--from-(file|literal)=(\S+)`)
)

// docSecretKeys returns the Secrets that docs/deploy.md has the reader
// create with kubectl, and the keys of each.
func docSecretKeys(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(deployDoc)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, m := range secretCreate.FindAllStringSubmatch(string(data), -1) {
		for _, src := range secretSource.FindAllStringSubmatch(m[2], -1) {
			key, _, named := strings.Cut(src[2], "=")
			if src[1] == "file" && !named {
				key = path.Base(src[2]) // --from-file=PATH: the file's name
			}
			out[m[1]] = append(out[m[1]], key)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s creates no Secret (kubectl create secret generic NAME --from-file=KEY=FILE)", deployDoc)
	}
	return out
}

// probeSource is an api.Source for a daemon that has done its first reconcile.
type probeSource struct{}

func (probeSource) Ready() bool                                { return true }
func (probeSource) Pools() []api.Pool                          { return nil }
func (probeSource) Pool(string) (api.Pool, bool)               { return api.Pool{}, false }
func (probeSource) Config() api.Config                         { return api.Config{} }
func (probeSource) Reset(context.Context, []string) error      { return nil }
func (probeSource) Stop(context.Context, []string, bool) error { return nil }

var _ api.Source = probeSource{}

// TestDaemonSetProbesNeedNoToken sends the kubelet's probes, which cannot
// carry the token (an httpGet probe's headers are literals in the manifest),
// to the daemon's real API handler, set up with a token as in the DaemonSet.
func TestDaemonSetProbesNeedNoToken(t *testing.T) {
	_, c := theDaemonSet(t)
	h := api.NewHandler(probeSource{}, nil, "a-token-the-kubelet-does-not-have")
	for _, p := range []*probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			continue // TestDaemonSet reports it
		}
		req := httptest.NewRequest(http.MethodGet, p.HTTPGet.Path, nil)
		req.Host = "10.0.0.7:9200" // the kubelet probes the pod's IP
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s without a token: %d %s\nthe kubelet's probe would fail: the route must be open like /healthz, or the probe must change",
				p.HTTPGet.Path, rec.Code, strings.TrimSpace(rec.Body.String()))
		}
	}
}

// ---- config layouts ------------------------------------------------------

// copyTree copies the regular files of src into dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestConfigLayouts loads the fleet example the ways docs/deploy.md's
// alternatives to the built-in Git source hand it to the daemon in
// Kubernetes: through git-sync's link (--config is a symbolic link to a
// worktree) and as a ConfigMap volume (the kubelet's ..data link, hidden
// timestamped directory and one link per top-level entry); each must load
// the same config as the plain directory.
func TestConfigLayouts(t *testing.T) {
	const example = "fleet"
	want, err := schema.Load(context.Background(), example)
	if err != nil {
		t.Fatal(err)
	}
	summary := func(d *schema.Desired) []string {
		out := []string{}
		for _, n := range d.SortedNodeNames() {
			out = append(out, "node "+n)
		}
		for _, id := range d.SortedPoolIDs() {
			out = append(out, "pool "+id+" on "+d.Pools[id].Node)
		}
		return append(out, d.Files...)
	}

	gitSync := t.TempDir()
	copyTree(t, example, filepath.Join(gitSync, ".worktrees", "0123abcd"))
	symlink(t, filepath.Join(".worktrees", "0123abcd"), filepath.Join(gitSync, "repo"))

	configMap := t.TempDir()
	const stamp = "..2026_01_02_03_04_05.123456789"
	copyTree(t, example, filepath.Join(configMap, stamp))
	symlink(t, stamp, filepath.Join(configMap, "..data"))
	entries, err := os.ReadDir(example)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		symlink(t, filepath.Join("..data", e.Name()), filepath.Join(configMap, e.Name()))
	}

	for name, dir := range map[string]string{
		"git-sync link": filepath.Join(gitSync, "repo"),
		"ConfigMap":     configMap,
	} {
		t.Run(name, func(t *testing.T) {
			got, err := schema.Load(context.Background(), dir)
			if err != nil {
				t.Fatalf("Load(%s): %v", dir, err)
			}
			if diff := cmp.Diff(summary(want), summary(got)); diff != "" {
				t.Errorf("loaded through %s (-plain +%s):\n%s", name, name, diff)
			}
		})
	}
}

// ---- docs/deploy.md ------------------------------------------------------

var (
	mdLink      = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	examplePath = regexp.MustCompile(`\bexamples/[A-Za-z0-9_.\-/]*[A-Za-z0-9_\-]`)
	envName     = regexp.MustCompile(`\bPOOL_MANAGERD_[A-Z0-9_]*[A-Z0-9]`)
	readmeMark  = regexp.MustCompile(`<!-- (/?)README: ([a-z-]+) -->`)
)

var (
	shellSeparator = regexp.MustCompile(`\s*(?:\||;|&&|>|#)\s*`)
	envAssignment  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
)

// docCommands returns the arguments of the pool-managerd commands in the
// doc's code blocks. A command is a shell command (up to a pipe, ;, &&, >
// or a comment) whose first word, after "$", "sudo [-u USER]", VAR=value
// assignments and anything before a "--" (kubectl exec POD -- CMD), is
// pool-managerd or a path to it (ExecStart=/usr/local/bin/pool-managerd).
func docCommands(doc string) [][]string {
	var cmds [][]string
	inCode := false
	for _, line := range strings.Split(doc, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			inCode = !inCode
			continue
		}
		if !inCode {
			continue
		}
		for _, part := range shellSeparator.Split(trimmed, -1) {
			if words := commandArgs(strings.Fields(part)); words != nil {
				cmds = append(cmds, words)
			}
		}
	}
	return cmds
}

func commandArgs(words []string) []string {
	if i := slices.Index(words, "--"); i >= 0 {
		words = words[i+1:]
	}
	sudo := false
	for len(words) > 0 {
		w := words[0]
		switch {
		case w == "$":
		case w == "sudo":
			sudo = true
		case sudo && w == "-u" && len(words) > 1:
			words = words[1:]
		case sudo && strings.HasPrefix(w, "-"):
		case envAssignment.MatchString(w) && !strings.HasPrefix(w, "ExecStart="):
		default:
			first := strings.TrimPrefix(w, "ExecStart=")
			if first != "pool-managerd" && !strings.HasSuffix(first, "/pool-managerd") || len(words) < 2 {
				return nil
			}
			return words[1:]
		}
		words = words[1:]
	}
	return nil
}

// TestDeployDoc checks docs/deploy.md: its links and the example paths it
// names exist, the README sections are marked in pairs and appear in the
// README word for word, and every pool-managerd command and POOL_MANAGERD_
// variable it shows is real.
func TestDeployDoc(t *testing.T) {
	data, err := os.ReadFile(deployDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	docDir := filepath.Dir(deployDoc)

	for _, m := range mdLink.FindAllStringSubmatch(doc, -1) {
		target := m[1]
		if strings.Contains(target, "://") || strings.HasPrefix(target, "#") || strings.HasPrefix(target, "mailto:") {
			continue
		}
		target, _, _ = strings.Cut(target, "#")
		if _, err := os.Stat(filepath.Join(docDir, target)); err != nil {
			t.Errorf("%s links to %s, which does not exist", deployDoc, m[1])
		}
	}
	for _, p := range examplePath.FindAllString(doc, -1) {
		if _, err := os.Stat(filepath.Join("..", p)); err != nil {
			t.Errorf("%s names %s, which does not exist", deployDoc, p)
		}
	}

	readme, err := os.ReadFile(readmeFile)
	if err != nil {
		t.Fatal(err)
	}
	open := map[string]int{}
	sections := 0
	for _, m := range readmeMark.FindAllStringSubmatchIndex(doc, -1) {
		closing, name := doc[m[2]:m[3]] == "/", doc[m[4]:m[5]]
		if !closing {
			if _, dup := open[name]; dup {
				t.Errorf("%s: <!-- README: %s --> opened twice", deployDoc, name)
			}
			open[name] = m[1]
			continue
		}
		start, ok := open[name]
		if !ok {
			t.Errorf("%s: <!-- /README: %s --> closes nothing", deployDoc, name)
			continue
		}
		delete(open, name)
		section := strings.TrimSpace(doc[start:m[0]])
		if section == "" {
			t.Errorf("%s: README section %s is empty", deployDoc, name)
		}
		if !strings.Contains(string(readme), section) {
			t.Errorf("%s: the README section %s is not in %s as it is here: copy it there whole", deployDoc, name, readmeFile)
		}
		sections++
	}
	for name := range open {
		t.Errorf("%s: <!-- README: %s --> is never closed", deployDoc, name)
	}
	if sections == 0 {
		t.Errorf("%s marks no section for the README (<!-- README: NAME --> ... <!-- /README: NAME -->)", deployDoc)
	}

	t.Run("commands and variables", func(t *testing.T) {
		cmds := docCommands(doc)
		if len(cmds) == 0 {
			t.Fatalf("%s shows no pool-managerd command", deployDoc)
		}
		for _, words := range cmds {
			// Cobra finds the (sub)command from the words before the first
			// flag; the rest are its arguments.
			var sub []string
			for _, w := range words {
				if strings.HasPrefix(w, "-") {
					break
				}
				sub = append(sub, w)
			}
			spec, err := commandFlags(sub...)
			if err != nil {
				t.Errorf("%s shows `pool-managerd %s`: %v", deployDoc, strings.Join(words, " "), err)
				continue
			}
			_, unknown, problems := parseArgFlags(words, spec)
			for _, u := range unknown {
				t.Errorf("%s shows `pool-managerd %s`: no flag %s", deployDoc, strings.Join(words, " "), u)
			}
			for _, p := range problems {
				t.Errorf("%s shows `pool-managerd %s`: %s", deployDoc, strings.Join(words, " "), p)
			}
		}
		names := envName.FindAllString(doc, -1)
		sort.Strings(names)
		checkEnvNames(t, deployDoc, slices.Compact(names))
	})
}

// TestSystemdDocumentation: every unit says where its documentation is
// (Documentation=, for systemctl help), with URIs systemd takes, and the
// links into docs/deploy.md name one of its sections.
func TestSystemdDocumentation(t *testing.T) {
	doc, err := os.ReadFile(deployDoc)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " "); ok && strings.HasPrefix(line, "#") {
			anchors[githubAnchor(title)] = true
		}
	}
	for _, file := range []string{unitFile, pullService, pullTimer} {
		u := parseUnit(t, file)
		var uris []string
		for _, v := range u.sections["Unit"]["Documentation"] {
			uris = append(uris, strings.Fields(v)...)
		}
		if len(uris) == 0 {
			t.Errorf("%s: no Documentation= in [Unit]", file)
		}
		toDoc := false
		for _, uri := range uris {
			scheme, rest, _ := strings.Cut(uri, ":")
			if !slices.Contains([]string{"http", "https", "file", "info", "man"}, scheme) || rest == "" {
				t.Errorf("%s: Documentation=%s: systemd takes http:, https:, file:, info: and man: URIs only", file, uri)
			}
			page, fragment, _ := strings.Cut(uri, "#")
			if strings.HasSuffix(page, "/docs/deploy.md") {
				toDoc = true
				if fragment != "" && !anchors[fragment] {
					t.Errorf("%s: Documentation=%s: %s has no section #%s", file, uri, deployDoc, fragment)
				}
			}
		}
		if !toDoc {
			t.Errorf("%s: no Documentation= link to docs/deploy.md", file)
		}
	}
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(title)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestDaemonSetHardening: the DaemonSet's pod and serve container are as
// tight as the daemon allows (no service-account token, a priority class, no
// privilege or capability, the runtime's seccomp profile, a startup probe
// long enough for a slow start), and docs/deploy.md says why each privilege
// that remains is needed.
func TestDaemonSetHardening(t *testing.T) {
	ds, c := theDaemonSet(t)
	pod := ds.Template.Spec
	if a := pod.AutomountServiceAccountToken; a == nil || *a {
		t.Error("automountServiceAccountToken is not false: the daemon never uses the Kubernetes API")
	}
	classes := map[string]bool{"system-node-critical": true, "system-cluster-critical": true}
	for _, o := range readManifest(t, daemonSet) {
		if o.Kind == "PriorityClass" {
			classes[o.Metadata.Name] = true
		}
	}
	if !classes[pod.PriorityClassName] {
		t.Errorf("priorityClassName %q: want a PriorityClass of the manifest or a system one", pod.PriorityClassName)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("the serve container has no securityContext")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("securityContext.privileged is true")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("securityContext.allowPrivilegeEscalation is not false")
	case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
		t.Errorf("securityContext.capabilities %+v: want drop [ALL] and nothing added", sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != "RuntimeDefault":
		t.Errorf("securityContext.seccompProfile %+v: want RuntimeDefault", sc.SeccompProfile)
	}
	if p := c.StartupProbe; p == nil {
		t.Error("no startupProbe: a slow start (NVML, adopting engines) would meet the liveness probe")
	} else if budget, live := p.PeriodSeconds*p.FailureThreshold, c.LivenessProbe; live != nil && budget <= live.PeriodSeconds*live.FailureThreshold {
		t.Errorf("startupProbe allows %ds, no more than the liveness probe's %ds: it protects nothing", budget, live.PeriodSeconds*live.FailureThreshold)
	}

	doc, err := os.ReadFile(deployDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, privilege := range []string{"hostPID", "hostNetwork", "hostPath", "runAsNonRoot", "readOnlyRootFilesystem", "automountServiceAccountToken", "priorityClassName", "startupProbe", "capabilities"} {
		if !regexp.MustCompile("`" + privilege + "[`:]").Match(doc) {
			t.Errorf("%s does not say (as `%s`) why the DaemonSet has it or leaves it as it is", deployDoc, privilege)
		}
	}
}
