package watch

import "strings"

// hidden reports whether a name is hidden from the config loader: a name
// starting with "." (.git, .x.cue.swp, the emacs lock .#x.cue).
func hidden(name string) bool {
	return strings.HasPrefix(name, ".")
}

// relevantFile reports whether a change to a file with this base name can
// change the loaded config: the loader reads exactly the non-hidden *.cue
// files. Everything else an editor or tool leaves behind (vim's
// .x.cue.swp and 4913 probe, emacs's #x.cue# and .#x.cue, backups x.cue~,
// x.cue.tmp, notes.txt) is ignored.
func relevantFile(name string) bool {
	return !hidden(name) && strings.HasSuffix(name, ".cue")
}

// relevantDir reports whether a directory with this base name belongs to
// the config tree: the loader skips hidden directories and cue.mod.
func relevantDir(name string) bool {
	return name != "" && !hidden(name) && name != "cue.mod"
}
