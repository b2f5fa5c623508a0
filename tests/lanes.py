#!/usr/bin/env python3
"""make test's two lanes: the host tests and, alongside them, the VM lab.

    python3 -m tests.lanes --log FILE --host LABEL COMMAND --lab LABEL COMMAND

COMMAND is one string, split into words as the shell would. The Makefile's
`test` target runs `--host 'make test-host' '$(MAKE) ... test-host' --lab
'make lab-smoke' '$(MAKE) ... lab-smoke'`.

The lanes share the 2 cores: the lab's is niced, so the host tests keep
their pace and the box build and the VM take what is left. The host lane
runs in a mount namespace of its own: libvirt's qemu copies the host's
mounts into the VM's namespace when it starts, and a copy of a test's loop
filesystem or pool would stay busy there after the test unmounted it. The
lab lane's output goes to FILE, which is shown from its start, and followed,
once the host lane has ended, until the lab lane ends.

The lab lane is a session (so a process group) of its own, which the
terminal's Ctrl-C does not reach: on SIGINT or SIGTERM the whole group gets
SIGTERM at once (labs.run then takes its VM down; make alone would not pass
the signal on). The host lane is not signalled here: Ctrl-C reaches it from
the terminal, and a SIGTERM meant for this runner lets it finish, as the
shell recipe this replaces did. Then both are waited for.

Exit status: 0 when both lanes exited 0, else 1; 130 when interrupted.

A script rather than shell in the recipe: the rules above can be read and
tested (tests/unit/test_lanes.py), and the lab lane is reaped as soon as it
ends.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

HOST_LANE = ["unshare", "--mount", "--propagation", "private"]
LAB_LANE = ["nice", "-n", "10"]
INTERRUPTED = 130
FOLLOW_INTERVAL_S = 0.5


def exit_status(host_status, lab_status):
    """make test passes when both lanes passed."""
    return 0 if host_status == 0 and lab_status == 0 else 1


def shell_status(returncode):
    """A returncode as the shell shows it: killed by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class Lanes:
    def __init__(self, host, lab, log, host_label, lab_label):
        self.host, self.lab, self.log = host, lab, log
        self.host_label, self.lab_label = host_label, lab_label
        self.out = sys.stdout
        self.lab_lane = None
        self.interrupted = None  # the signal that ended the run

    def say(self, text):
        self.out.write(text + "\n")
        self.out.flush()

    def take_lab_down(self, signum, _frame):
        if self.interrupted is None:
            self.interrupted = signum
        self.stop_lab_lane()

    def stop_lab_lane(self):
        if self.lab_lane is not None and self.lab_lane.poll() is None:
            try:
                os.killpg(self.lab_lane.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self):
        directory = os.path.dirname(self.log)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Installed first: a signal from here on takes the lab lane down.
        previous = {signum: signal.signal(signum, self.take_lab_down)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self):
        self.say("%s runs alongside the host tests; its output: %s" % (self.lab_label, self.log))
        # close_fds=False: the lanes are makes, which find make's jobserver
        # in the descriptors they inherit (as from the shell recipe before).
        with open(self.log, "wb") as output:
            if self.interrupted is None:
                self.lab_lane = subprocess.Popen(
                    LAB_LANE + self.lab, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=False)
        if self.interrupted is not None:  # came while it started, before it had a name
            self.stop_lab_lane()
        host_status = (subprocess.call(HOST_LANE + self.host, close_fds=False)
                       if self.interrupted is None else None)
        if self.interrupted is None:
            self.say("== %s (started alongside; following %s until it ends)"
                     % (self.lab_label, self.log))
            self.follow()
        lab_status = self.lab_lane.wait() if self.lab_lane else None
        if self.interrupted is not None:
            return INTERRUPTED
        self.say("%s: exit %d; %s: exit %d" % (self.host_label, shell_status(host_status),
                                               self.lab_label, shell_status(lab_status)))
        return exit_status(host_status, lab_status)

    def follow(self):
        """Show the lab lane's log from its start until the lane ends (or
        the run is interrupted)."""
        self.out.flush()  # what say() wrote comes first
        with open(self.log, "rb") as log:
            while self.interrupted is None:
                ended = self.lab_lane.poll() is not None
                data = log.read()
                if data:
                    self.out.buffer.write(data)
                    self.out.buffer.flush()
                if ended:
                    return
                time.sleep(FOLLOW_INTERVAL_S)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m tests.lanes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", required=True, help="the lab lane's output")
    parser.add_argument("--host", nargs=2, required=True, metavar=("LABEL", "COMMAND"))
    parser.add_argument("--lab", nargs=2, required=True, metavar=("LABEL", "COMMAND"))
    args = parser.parse_args(argv)
    lanes = Lanes(host=shlex.split(args.host[1]), lab=shlex.split(args.lab[1]), log=args.log,
                  host_label=args.host[0], lab_label=args.lab[0])
    return lanes.run()


if __name__ == "__main__":
    sys.exit(main())
