package features

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cucumber/godog"

	"github.com/poolmanagerd/pool-managerd/internal/api"
	"github.com/poolmanagerd/pool-managerd/testkit/gitrepo"
	"github.com/poolmanagerd/pool-managerd/testkit/testenv"
)

// The steps of gitsource.feature: a bare repository (testkit/gitrepo) in
// the scenario's workspace stands in for the config remote, and the daemon
// follows it with serve --git. Commits are named in the scenarios ("first",
// "bad"); the steps keep their hashes.

// gitSteps is one scenario's repository and what the steps noted of it.
type gitSteps struct {
	w    *world
	repo *gitrepo.Repo
	// commits are the hashes of the commits the scenario made, by name.
	commits map[string]string
	// gaps are the waits between a failed fetch and the next that the
	// daemon reported, by count of failures in a row.
	gaps map[int]time.Duration
}

// registerGit registers the steps; each scenario has its own gitSteps.
func (w *world) registerGit(sc *godog.ScenarioContext) {
	g := &gitSteps{w: w, commits: map[string]string{}, gaps: map[int]time.Duration{}}
	sc.Step(`^a Git repository standing in for the config remote$`, g.newRepo)
	sc.Step(`^the repository holds a node "([^"]*)" with GPUs of (\d+) GiB and (\d+) GiB$`, g.node)
	sc.Step(`^I write the repository's file "([^"]*)":$`, g.writeFile)
	sc.Step(`^I remove the repository's file "([^"]*)"$`, g.removeFile)
	sc.Step(`^I commit and (push|force-push) it as "([^"]*)"$`, g.commit)
	sc.Step(`^I reset the repository's branch to commit "([^"]*)"$`, g.reset)
	sc.Step(`^the repository becomes unreachable$`, g.hide)
	sc.Step(`^the repository is reachable again$`, g.unhide)
	sc.Step(`^the daemon is started following the repository every (\S+)(?: with "([^"]*)")?$`, g.startDaemon)
	sc.Step(`^the daemon has applied commit "([^"]*)"$`, g.applied)
	sc.Step(`^the daemon's applied revision is still commit "([^"]*)"$`, g.stillApplied)
	sc.Step(`^the daemon has refused commit "([^"]*)" with an error containing "(.*)"$`, g.refused)
	sc.Step(`^the daemon holds commit "([^"]*)" back with a reason containing "(.*)"$`, g.heldBack)
	sc.Step(`^the daemon has logged "([^"]*)" for commit "([^"]*)"$`, g.loggedFor)
	sc.Step(`^the metric pool_managerd_config_revision_info names commit "([^"]*)"$`, g.revisionMetric)
	sc.Step(`^the daemon reports (\d+) failed fetches in a row with an error containing "(.*)"$`, g.failing)
	sc.Step(`^the fetch retries back off$`, g.backsOff)
	sc.Step(`^stdout names commit "([^"]*)" as the applied revision$`, g.statusNames)
}

// stepTB lets gitrepo fail a step: its Fatalf panics with a gitFailure,
// which do turns into the step's error.
type stepTB struct{}

type gitFailure struct{ err error }

func (stepTB) Helper() {}

func (stepTB) Fatalf(format string, args ...any) { panic(gitFailure{fmt.Errorf(format, args...)}) }

// catch runs f, which calls gitrepo, and returns the error it failed with.
func catch(f func()) (err error) {
	defer func() {
		if p := recover(); p != nil {
			gf, ok := p.(gitFailure)
			if !ok {
				panic(p)
			}
			err = gf.err
		}
	}()
	f()
	return nil
}

// do is catch for a step that needs the repository.
func (g *gitSteps) do(f func()) error {
	if g.repo == nil {
		return errors.New(`no Git repository: start the scenario with "a Git repository standing in for the config remote"`)
	}
	return catch(f)
}

func (g *gitSteps) newRepo() error {
	dir := filepath.Join(g.w.workspace, "git")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return catch(func() { g.repo = gitrepo.NewIn(stepTB{}, dir) })
}

func (g *gitSteps) node(name string, a, b int) error {
	decl := testenv.NodeDecl{Name: name, GPUs: []testenv.GPUDecl{
		{Index: 0, VRAM: fmt.Sprintf("%dGi", a)},
		{Index: 1, VRAM: fmt.Sprintf("%dGi", b)},
	}}
	return g.do(func() { g.repo.Write("nodes/"+name+".cue", decl.CUE()) })
}

// writeFile writes a file of the work clone; WORKSPACE in it stands for
// the scenario's workspace.
func (g *gitSteps) writeFile(rel string, doc *godog.DocString) error {
	return g.do(func() { g.repo.Write(rel, strings.ReplaceAll(doc.Content, "WORKSPACE", g.w.workspace)) })
}

func (g *gitSteps) removeFile(rel string) error {
	return g.do(func() { g.repo.Remove(rel) })
}

func (g *gitSteps) commit(how, name string) error {
	if _, ok := g.commits[name]; ok {
		return fmt.Errorf("the scenario has a commit %q already", name)
	}
	return g.do(func() {
		g.commits[name] = g.repo.Commit()
		if how == "force-push" {
			g.repo.ForcePush()
		} else {
			g.repo.Push()
		}
	})
}

// hash returns the hash of the commit the scenario named.
func (g *gitSteps) hash(name string) (string, error) {
	h, ok := g.commits[name]
	if !ok {
		return "", fmt.Errorf("the scenario made no commit %q", name)
	}
	return h, nil
}

func (g *gitSteps) reset(name string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.do(func() { g.repo.Reset(h) })
}

func (g *gitSteps) hide() error   { return g.do(func() { g.repo.Hide() }) }
func (g *gitSteps) unhide() error { return g.do(func() { g.repo.Unhide() }) }

// startDaemon starts the daemon of the default node on the repository
// ("--config=" undoes the daemon steps' --config CONFIG).
func (g *gitSteps) startDaemon(every, extra string) error {
	if g.repo == nil {
		return errors.New("no Git repository")
	}
	return g.w.launchDaemon(applyNode, g.w.stateDir(), g.w.simDir(), nil,
		fmt.Sprintf("--config= --git %s --git-interval %s %s", g.repo.Path(), every, extra))
}

// awaitConfig waits until GET /v1/config satisfies check.
func (g *gitSteps) awaitConfig(what string, check func(api.Config) error) error {
	return g.w.eventually(what, func() error {
		c, err := g.w.daemonConfig()
		if err != nil {
			return err
		}
		if err := check(c); err != nil {
			return fmt.Errorf("%w (applied %q, attempted %q, valid %v, errors %v, heldBack %+v, git %+v)", err,
				c.LastAppliedRevision.String(), c.LastAttemptedRevision.String(), c.Valid, c.Errors, c.HeldBack, c.Git)
		}
		return nil
	})
}

func (g *gitSteps) applied(name string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.awaitConfig("commit "+name+" applied", func(c api.Config) error {
		if rev := c.LastAppliedRevision; rev == nil || rev.Commit != h || rev.Ref != gitrepo.Branch {
			return fmt.Errorf("lastAppliedRevision is not %s (%s)", h, gitrepo.Branch)
		}
		return nil
	})
}

func (g *gitSteps) stillApplied(name string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	c, err := g.w.daemonConfig()
	if err != nil {
		return err
	}
	if rev := c.LastAppliedRevision; rev == nil || rev.Commit != h {
		return fmt.Errorf("lastAppliedRevision is %q, want still %s (commit %s)", rev.String(), h, name)
	}
	return nil
}

// attempted checks that commit h was the last attempted.
func attempted(c api.Config, h string) error {
	if rev := c.LastAttemptedRevision; rev == nil || rev.Commit != h {
		return fmt.Errorf("lastAttemptedRevision is not %s", h)
	}
	return nil
}

func (g *gitSteps) refused(name, text string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.awaitConfig("commit "+name+" refused", func(c api.Config) error {
		if err := attempted(c, h); err != nil {
			return err
		}
		if c.Valid {
			return errors.New("the config is valid")
		}
		for _, d := range c.Errors {
			if strings.Contains(d.String(), text) {
				return nil
			}
		}
		return fmt.Errorf("no error contains %q", text)
	})
}

func (g *gitSteps) heldBack(name, text string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.awaitConfig("commit "+name+" held back", func(c api.Config) error {
		if err := attempted(c, h); err != nil {
			return err
		}
		if c.HeldBack == nil || !strings.Contains(c.HeldBack.Reason, text) {
			return fmt.Errorf("not held back for a reason containing %q", text)
		}
		return nil
	})
}

// loggedFor waits for a log event whose message starts with message and
// whose revision is the commit's.
func (g *gitSteps) loggedFor(message, name string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.w.eventually(fmt.Sprintf("a %q event for commit %s", message, name), func() error {
		events, err := g.w.logEvents()
		if err != nil {
			return err
		}
		for _, e := range events {
			if m, _ := e["@message"].(string); strings.HasPrefix(m, message) && e["revision"] == h {
				return nil
			}
		}
		return errors.New("none yet")
	})
}

func (g *gitSteps) revisionMetric(name string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.w.metricCompare(fmt.Sprintf(`pool_managerd_config_revision_info{revision="%s",source="%s"}`, h, g.repo.Path()), "=", "1")
}

// failing waits until the daemon reports n failed fetches in a row, noting
// on the way how long it waits after each before the next.
func (g *gitSteps) failing(n int, text string) error {
	return g.awaitConfig(fmt.Sprintf("%d failed fetches", n), func(c api.Config) error {
		s := c.Git
		if s == nil {
			return errors.New("no git state")
		}
		if s.Failures > 0 {
			g.gaps[s.Failures] = s.NextFetch.Sub(s.LastFetch)
		}
		switch {
		case s.Failures < n:
			return fmt.Errorf("%d failures", s.Failures)
		case !strings.Contains(s.Error, text):
			return fmt.Errorf("the error does not contain %q", text)
		}
		return nil
	})
}

// backsOff checks the waits failing noted: each is more than 1.5 times the
// one before (the backoff doubles, with a jitter of ±10 %), up to 3.
func (g *gitSteps) backsOff() error {
	if len(g.gaps) < 3 {
		return fmt.Errorf("the waits after %d failures were noted, want 3: %v", len(g.gaps), g.gaps)
	}
	for k := 1; k < 3; k++ {
		if g.gaps[k] == 0 || float64(g.gaps[k+1]) < 1.5*float64(g.gaps[k]) {
			return fmt.Errorf("the wait after %d failures is %v, after %d %v: the retries do not back off (%v)", k, g.gaps[k], k+1, g.gaps[k+1], g.gaps)
		}
	}
	return nil
}

func (g *gitSteps) statusNames(name string) error {
	h, err := g.hash(name)
	if err != nil {
		return err
	}
	return g.w.stdoutContains(fmt.Sprintf("Config revision applied: %s (%s) from %s", h, gitrepo.Branch, g.repo.Path()))
}
