"""`python -m vmemtrace` and the `vmemtrace` script. Ctrl-C or SIGTERM can come while the rest of
vmemtrace is still being imported, before the commands' own handling (cli.one_line_errors) is
in place: it exits 130 with one line here too, never a traceback nor a silent death."""

# Until main() is inside its try, a stop is only noted: raised anywhere before it (the imports
# below, main's very call) nothing would catch it. The C module, at once: signal.py imports
# enum first.
try:
    import _signal

    _noted = []
    _signal.signal(_signal.SIGINT, lambda signum, frame: _noted.append(signum))
    _signal.signal(_signal.SIGTERM, lambda signum, frame: _noted.append(signum))
except KeyboardInterrupt:  # it came before the note-taking handler was in place
    import _signal

    _noted = [_signal.SIGINT]
import sys  # noqa: E402

# Stops whose KeyboardInterrupt Python could not raise where the program was: the signal came
# while it ran a callback (an import lock's weakref callback, a finaliser), where an exception
# is "ignored" and printed. Kept here instead, and the run ends as interrupted.
_swallowed = []


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _keep_stops(default):
    def hook(unraisable):
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _swallowed.append(unraisable.exc_type)
        else:
            default(unraisable)
    return hook


def main():
    sys.unraisablehook = _keep_stops(sys.unraisablehook)
    try:
        # SIGTERM as Ctrl-C from here on, as errors.terminate_on_sigterm() has it once a
        # command runs: nothing has been opened yet that could be left behind.
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        _signal.signal(_signal.SIGTERM, _interrupt)
        if _noted:
            raise KeyboardInterrupt
        from vmemtrace.cli import main as run

        run()
    except KeyboardInterrupt:
        from vmemtrace.errors import interrupted

        interrupted()
    except SystemExit:
        if _swallowed:
            from vmemtrace.errors import interrupted

            interrupted()
        raise
    finally:
        # The work is done and said: a signal now would only turn the exit code into -SIGINT.
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)


if __name__ == "__main__":
    main()
