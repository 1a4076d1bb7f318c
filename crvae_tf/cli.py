"""How every binary ends: errors a user can cause become one message on stderr and a distinct exit status, without
a traceback (`--verbose` or CRVAE_TF_VERBOSE=1 shows it); logs are quiet unless asked for.

    python -m crvae_tf.<binary> ...      exit status:
      0    done
      1    an unexpected error (a bug: the traceback is printed)
      2    command line: a flag missing, malformed or unknown, an unexpected argument
      3    configuration: a gin syntax error, an unknown or wrongly typed binding, a value a builder refuses
      4    data: missing, unreadable or corrupt
      5    paths: no such run directory, checkpoint or file; an export version that exists; permissions
      6    busy: another live process holds the run directory's (or export directory's) lock
      7    a different configuration on an existing run (nothing was written)
      8    training stopped: a non-finite loss
      9    training stopped: the discriminator collapsed
      10   the run's kind is not supported by this binary (an adversarial run's likelihood, an FC latent's prior)
      130  interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM)

The exit statuses and the classes behind them are `EXIT_CODES`; `run(main, parse_flags, logging_options)` replaces
`absl.app.run(main)`. The flags belong to the binaries, `--verbose` included (`VERBOSE_HELP`): this module reads none.
A binary hands over its parser (its `flags.FLAGS`, called on the command line; an error exits 2) and a function that
returns the `LoggingOptions` it read from its parsed flags.
"""

import re
import signal
import sys
import threading
import traceback
from typing import NamedTuple

from absl import app
from absl import logging

from crvae_tf import data
from crvae_tf import locking
from crvae_tf import runs
from crvae_tf import startup
from crvae_tf.training import monitors

# Every binary defines `flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)`.
VERBOSE_HELP = f"Show tracebacks and INFO logs (also {startup.VERBOSE_ENV}=1)."


class LoggingOptions(NamedTuple):
    """What a binary read from its parsed flags that decides the console: `verbose` (--verbose: tracebacks and INFO
    logs; CRVAE_TF_VERBOSE=1 does the same) and `explicit_verbosity` (absl's --verbosity / -v was given: keep it)."""

    verbose: bool = False
    explicit_verbosity: bool = False


EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_PATH = 5
EXIT_BUSY = 6
EXIT_MISMATCH = 7
EXIT_NONFINITE = 8
EXIT_COLLAPSE = 9
EXIT_UNSUPPORTED = 10


class UnsupportedRunError(ValueError):
    """The run is of a kind this binary cannot handle (the message says which binary can)."""


class Terminated(Exception):
    """SIGTERM outside the training loop (which checkpoints first, `monitors.InterruptGuard`)."""


# First match wins: subclasses before their bases.
EXIT_CODES = (
    (app.UsageError, EXIT_USAGE),
    (runs.ConfigMismatchError, EXIT_MISMATCH),
    (runs.ConfigError, EXIT_CONFIG),
    (UnsupportedRunError, EXIT_UNSUPPORTED),
    (locking.LockedError, EXIT_BUSY),
    (data.DataUnavailableError, EXIT_DATA),
    (monitors.NonFiniteLossError, EXIT_NONFINITE),
    (monitors.DiscriminatorCollapseError, EXIT_COLLAPSE),
)
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

_GIN_CALL = re.compile(r"\n\s*In call to configurable '([^']+)' \([^\n]*\)")


def _configurable(error):
    """The name of the gin configurable whose call raised `error` (gin appends it to the message), or None."""
    match = _GIN_CALL.search(str(error))
    return match.group(1) if match else None


def message_and_code(error: BaseException):
    """(message, exit status) for an error a user can cause; None for anything else (a bug)."""
    text = _GIN_CALL.sub("", str(error)).strip()
    if isinstance(error, monitors.TrainingInterrupted):
        return text, 128 + error.signum
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (SIGINT); rerun the same command to continue.", 128 + signal.SIGINT
    if isinstance(error, Terminated):
        return "terminated (SIGTERM); rerun the same command to continue.", 128 + signal.SIGTERM
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return text, code
    if isinstance(error, OSError):
        if not (error.filename or isinstance(error, _PATH_ERRORS)):
            return None
        if error.filename and error.strerror and text.startswith("["):  # "[Errno 2] No such file ...: 'x'"
            text = f"{error.filename}: {error.strerror}"
        return text, EXIT_PATH
    name = _configurable(error)
    if name is not None and isinstance(error, (ValueError, TypeError, KeyError)):
        return f"{text} (raised while building {name}: check the {name}.* bindings)", EXIT_CONFIG
    return None


def _quiet_logs(verbose: bool, explicit_verbosity: bool) -> None:
    """WARNING and above only, unless --verbose or an explicit --verbosity."""
    if verbose or explicit_verbosity:
        return
    logging.set_verbosity(logging.WARNING)
    import logging as logging_std

    logging_std.getLogger("tensorflow").setLevel(logging_std.WARNING)


def _raise_terminated(signum, frame):
    raise Terminated()


def _parse_flags(parse_flags, argv):
    try:
        return parse_flags(argv)
    except Exception as error:  # absl's flags.Error family: unknown, malformed or missing flags
        program = _program(argv)
        sys.stderr.write(f"{program}: error: {error}\n(python -m {program} --help lists the flags)\n")
        sys.exit(EXIT_USAGE)


def _program(argv=None) -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return (argv or sys.argv or ["crvae_tf"])[0]


def guarded(main, logging_options=None):
    """`main` with the error handling of the module docstring (for `absl.app.run`). `logging_options`: the binary's
    `() -> LoggingOptions`, called once its flags are parsed (None: defaults; CRVAE_TF_VERBOSE counts either way)."""

    def wrapped(argv):
        options = logging_options() if logging_options is not None else LoggingOptions()
        verbose = bool(options.verbose) or startup.verbose_requested(argv=[])  # argv=[]: the environment only
        _quiet_logs(verbose, bool(options.explicit_verbosity))
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(argv)
        except Exception as error:
            handled = message_and_code(error)
            if handled is None:
                raise
            message, code = handled
            caught = error
        except KeyboardInterrupt as error:
            message, code = message_and_code(error)
            caught = error
        if verbose:
            traceback.print_exception(type(caught), caught, caught.__traceback__)
        sys.stdout.flush()
        if code == EXIT_USAGE:
            message += f"\n(python -m {_program()} --help lists the flags)"
        sys.stderr.write(f"{_program()}: error: {message}\n" if code < 128 else f"{_program()}: {message}\n")
        sys.stderr.flush()
        sys.exit(code)

    return wrapped


def run(main, parse_flags, logging_options) -> None:
    """`absl.app.run(main)` with the error handling of the module docstring; flag errors exit 2 without the help.

    Args:
      main: the binary's `main(argv)`.
      parse_flags: the binary's parser, `argv -> remaining argv` (its `flags.FLAGS`).
      logging_options: the binary's `() -> LoggingOptions`, read from its flags after `parse_flags`.
    """
    app.run(guarded(main, logging_options), flags_parser=lambda argv: _parse_flags(parse_flags, argv))
