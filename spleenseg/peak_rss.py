"""Run a command as a child of this small process and write its exit status and peak RSS to a file.

Why: Linux carries a process's memory high-water mark across ``exec``, so a command started directly from a
large process (a test session holding torch models, a benchmark that built a study) reports that process's
memory as its own peak. Forked from this interpreter instead (started with ``-S -I``, a few MB), the command's
``wait4`` peak is its own. Only ``os`` and ``sys``: importing more would raise the baseline again.

    python -S -I peak_rss.py RESULT_FILE COMMAND [ARGS...]
"""

import os
import sys


def main(argv: list[str]) -> int:
    result, command = argv[0], argv[1:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(result, "w") as fh:
        fh.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
