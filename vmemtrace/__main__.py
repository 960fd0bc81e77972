"""`python -m vmemtrace` and the `vmemtrace` script. Ctrl-C can come while the rest of vmemtrace
is still being imported, before the commands' own handling (cli.one_line_errors) is in place:
it exits 130 with one line here too, never a traceback."""

import signal
import sys


def main():
    try:
        from vmemtrace.cli import main as run

        run()
    except KeyboardInterrupt:
        sys.stderr.write("vmemtrace: interrupted\n")
        sys.exit(130)
    finally:
        # The work is done and said: a Ctrl-C now would only turn the exit code into -SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
