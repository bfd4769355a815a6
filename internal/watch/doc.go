// Package watch watches a config directory tree and reports settled changes
// to the daemon, which then reloads the whole config.
//
// # What is watched
//
// Directories, not files: editors save by writing a temporary file and
// renaming it over the original (vim, emacs, VS Code, sed -i, atomic
// writers), and a watch on the old file would die with its inode. A watch
// on the directory sees the rename as a new entry of the same name. The
// root and every directory below it is watched, each with its own fsnotify
// (inotify) watch; fsnotify does not watch recursively.
//
// The tree is the one the config loader (package schema) reads: hidden
// files and directories (a name starting with ".") and cue.mod are
// skipped, so the .git directory of a config repository, which churns on
// every pull, is never watched; only *.cue files are read; symbolic links
// to directories and files are followed. A linked directory is watched
// through the link (root/link/x.cue is reported as "link/x.cue"). Each real
// directory is watched once, by the first path that reaches it: a second
// link to it, or a link back to an ancestor (a loop), is not followed again,
// so a loop cannot make the walk recurse forever. Changes in such a
// directory are reported under the path that watches it. When that path
// goes away while the directory is still reachable by another, the tree is
// walked again and the other path is watched.
//
// Directories created later, or moved in, are watched as soon as their
// event is read, and then listed, so the .cue files already in them (mkdir
// -p a/b && cp x.cue a/b/ races with adding the watch) are reported as
// changed too. Directories removed or renamed away are dropped from the
// watch set (a new one at the same path is watched again).
//
// # Which events count
//
// An event counts when it names a non-hidden *.cue file, or a non-hidden
// directory other than cue.mod, in the tree (see relevantFile and
// relevantDir): a file created, written, removed or renamed; a directory
// created, removed or renamed. Editor and tool droppings never end in .cue
// or are hidden (.x.cue.swp, .#x.cue, #x.cue#, x.cue~, 4913, x.cue.tmp),
// so they are ignored by the same rule the loader uses to skip them.
//
// A Chmod event (inotify IN_ATTRIB) counts only when the file's or
// directory's permission bits or owner differ from the ones last seen:
// chmod 000 x.cue makes the file unreadable and must reload (the load then
// fails and says so), and chmod back must reload again, but touch, which
// changes only times, and the link-count change of a removal, which comes
// with its own Remove event, do not.
//
// # Debounce
//
// After the first event that counts, Run waits until Options.Debounce has
// passed without another, then sends one Change with every path seen,
// sorted and relative to the root. A stream of events cannot postpone the
// Change by more than Options.MaxDelay after the burst's first event. When
// the consumer is slow, Run keeps reading events and merges them into the
// Change it is waiting to send: paths are never dropped, and Overflow stays
// set until a Change carrying it has been delivered.
//
// # Errors and lost events
//
// An error from fsnotify (ErrEventOverflow when the kernel queue
// overflowed, or any other) is logged as a warning and reported as a Change
// with Overflow set, so the daemon reloads everything; the watch set is
// then checked against the tree again, since events that would have added
// or dropped watches may have been lost. A directory that cannot be
// watched (permissions, or the inotify watch limit: fs.inotify.max_user_watches)
// is logged as a warning and skipped; the daemon's periodic resync still
// reads it.
//
// # The root
//
// Besides the tree, the directory that holds the root is watched for
// entries with the root's name only, so that removing or renaming the root
// is seen even when the root is a symbolic link whose target the tree
// watches, and so that a root that reappears (mkdir again, mv new config
// into place, or an atomic symlink swap such as ln -s v2 current.tmp && mv
// -T current.tmp current) is watched again, without polling. Removing or
// renaming the root logs a warning and sends a Change with the path "."; the
// daemon's reload then fails with a clear error and keeps the last good
// config. When the root reappears, the new tree is watched and a Change
// with "." and all its .cue files is sent. A root that is a link to a
// sibling directory (current -> v1) is also watched again when that target
// is renamed away and back, since the target's events reach the parent's
// watch too. A root whose link target lies elsewhere and comes back, or a
// root whose parent directory cannot be watched, is not watched again:
// SIGHUP or the daemon's periodic resync still reloads the config, but
// changes are not seen until the daemon restarts. Nothing polls.
//
// # Limits
//
// A symbolic link to a .cue file outside the tree is reported when the link
// itself changes, not when its target is edited in place: the target's
// directory is not watched. The same holds for a linked directory whose
// target is removed and created again. The periodic resync covers both.
//
// Events are processed by the one goroutine that runs Run; the Watcher
// holds no package-level state.
package watch
