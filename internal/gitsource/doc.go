// Package gitsource is the daemon's built-in Git source: it fetches one ref
// of a remote repository with go-git (pure Go; no git binary at run time),
// checks each new commit out into a directory of its own and hands the
// directory to the daemon, which loads the config from it.
//
// # URLs and credentials
//
// A URL is https://, http://, ssh://, scp-like (git@host:path, which is
// ssh), file:///abs/path or a plain absolute path (which is file). Other
// schemes (git://, ftp://, ...) and relative paths are refused by New.
// Credentials must fit the URL, or New refuses them rather than ignore them:
// a token (HTTP basic auth, user "git" unless Auth.Username says otherwise)
// only with http(s), and with plain http only to a loopback host, so that a
// token never crosses a network in clear; a key file and a known_hosts file
// only with ssh, where a key file is required (the daemon does not use an
// ssh-agent). Key and known_hosts files are read again before every fetch,
// so a rotated secret is picked up without a restart; New reads them once to
// refuse a missing, unreadable or malformed file at start.
//
// go-git's file transport runs the git-upload-pack binary; call
// InstallFileTransport once, from main, before any Source fetches: it makes
// file URLs use go-git's in-process server instead.
//
// # Refs
//
// Options.Ref names a branch or a tag ("main" when empty). Each fetch asks
// for the branch first, with a force refspec
// (+refs/heads/R:refs/remotes/origin/R), so a force-pushed branch is
// followed like any other change; when the remote has no such branch, it
// asks for the tag (+refs/tags/R:refs/tags/R). An annotated tag is peeled
// to its commit. Neither: the fetch fails ("no branch or tag").
//
// # Storage
//
// Everything lives under Options.Dir (the daemon passes STATE_DIR/git):
//
//	Dir/<key>/repo/                  bare clone (go-git filesystem storage)
//	Dir/<key>/checkouts/<commit>/    one checked-out tree per commit
//	Dir/<key>/checkouts/.tmp-*       a checkout being written
//
// <key> is a short hash of the URL without its credentials, so a changed URL
// never mixes two repositories in one clone. The clone is a cache: when it
// cannot be opened it is made afresh.
//
// # Atomic switch
//
// A commit is written into a fresh temporary directory under checkouts/
// (files with their modes, symbolic links as links, submodules as empty
// directories, no .git), flushed to disk (syncfs), and renamed into place
// as checkouts/<commit> in one step. A checkouts/<commit> directory is
// therefore complete whenever it exists, even after a crash or a power
// loss; the daemon loads only such directories. A tree entry that could
// escape the directory (a name "..", ".git", one with a slash, a file
// behind a symbolic link of the same name) fails the checkout.
//
// # Fetch timing and backoff
//
// Run fetches at once, then Interval (default 1m) after the end of each
// successful fetch, and at once when FetchNow is called (SIGHUP). Each fetch
// has a time limit of Interval clamped to [30s, 5m]. The limit covers all
// of an HTTP fetch; for SSH it covers the dial and the transfer but not
// the SSH handshake (go-git does not pass the context to it).
//
// A failed attempt (remote unreachable, not a repository, ref missing,
// authentication refused, checkout failed) is retried after
// base·2^(n-1), n the number of consecutive failures, capped at 5·Interval,
// with ±10 % jitter; base is Interval/4, but at least 1s (or Interval, when
// that is shorter: tests). With the default 1m interval: about 15s, 30s,
// 1m, 2m, 4m, then every 5m. A success resets the count. The first failure
// with a given message is logged at Warn, repeats at Debug; Status holds
// the last error, the count and the time of the next attempt.
//
// # Delivery
//
// When a fetch finds a commit other than the one delivered last (any commit
// on the first fetch after New, even the one the daemon already runs), its
// checkout is sent on the Checkouts channel. The channel holds one
// Checkout: one the daemon has not taken yet is replaced by the newer one.
// A path (Options.Path) that is not a directory in the commit is delivered
// with Missing set; the daemon reports it as a load error.
//
// # Cleanup
//
// After each delivery and each InForce call, checkouts are removed except:
// the one in force (InForce), the one delivered last, the last one the
// daemon took from the channel (it may be loading it), and one being
// installed. Until the daemon has called InForce once, nothing is removed,
// so a checkout the daemon starts from after a restart (Checkout) cannot
// vanish before it says so. Temporary directories left by a crash are
// removed when Run starts.
//
// # Work trees
//
// DirRevision reports the commit and dirtiness of a plain config directory
// that lies in a Git work tree. It hashes the work tree's files
// (go-git's Worktree.Status): call it only when the loader saw a change,
// never on an idle resync.
package gitsource
