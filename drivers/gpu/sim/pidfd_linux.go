package sim

import (
	"errors"

	"golang.org/x/sys/unix"
)

// pidfdOpen returns a pidfd of process pid; gone is true when there is no
// such process.
func pidfdOpen(pid int) (fd int, gone bool, err error) {
	fd, err = unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, true, err
	}
	return fd, false, err
}

// pidfdsExited reports, with one poll(2) that never blocks, which of the
// processes of some pidfds have exited (a zombie has): a pidfd is then
// readable. bad[i] is true when fds[i] is not a pidfd one can poll.
func pidfdsExited(fds []int) (exited, bad []bool, err error) {
	pfds := make([]unix.PollFd, len(fds))
	for i, fd := range fds {
		pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	for {
		_, err = unix.Poll(pfds, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	exited, bad = make([]bool, len(fds)), make([]bool, len(fds))
	for i, p := range pfds {
		bad[i] = p.Revents&(unix.POLLNVAL|unix.POLLERR) != 0
		exited[i] = !bad[i] && p.Revents&(unix.POLLIN|unix.POLLHUP) != 0
	}
	return exited, bad, nil
}

func closeFd(fd int) { _ = unix.Close(fd) }
