"""The one exit-code contract of every entry point (`agdm` and the training scripts), standard library only so that
`agdm --help` stays free of torch:

- 0: success;
- 1: a sanity check failed (the evaluation's numbers were written, and are not to be trusted);
- 2: anticipated bad input or environment (a bad flag or file, an unwritable folder, a full disk, an unreachable
  Hub, a folder in use by another run): one line naming the cause;
- 3: an unanticipated error (a bug): its traceback, so that it can be reported;
- 130: interrupted (Ctrl-C or SIGTERM): one line saying what was kept.
"""

import errno
import sys
import traceback

EXIT_OK, EXIT_SANITY_FAILED, EXIT_BAD_INPUT, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Network failures of the HTTP clients huggingface_hub uses (requests, httpx), matched by class name so that none of
# them has to be imported here.
_NETWORK_ERRORS = ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError",
                   "TransportError", "ConnectionError", "ProxyError", "SSLError", "OfflineModeIsEnabled",
                   "HfHubHTTPError", "LocalEntryNotFoundError")


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM that was handled: `kept` says what was saved (e.g. the checkpoint to resume from)."""

    def __init__(self, kept: str):
        super().__init__(kept)
        self.kept = kept


def is_network_error(err: BaseException) -> bool:
    return any(cls.__name__ in _NETWORK_ERRORS for cls in type(err).__mro__)


def is_anticipated(err: BaseException) -> bool:
    """Bad input or environment (exit 2), as opposed to a bug (exit 3)."""
    return isinstance(err, (ValueError, OSError, ModuleNotFoundError)) or is_network_error(err)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device ({text})"
    if is_network_error(err) and "offline" not in text.lower():
        return f"cannot reach the Hugging Face Hub ({type(err).__name__}: {text}); check the network and the token."
    return text or type(err).__name__


def exit_status(err: BaseException, prog: str) -> int:
    """Report `err` as the contract says (on stderr) and return the exit status."""
    if isinstance(err, KeyboardInterrupt):
        kept = getattr(err, "kept", None) or "nothing beyond what was already written"
        print(f"{prog}: interrupted; kept: {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if is_anticipated(err):
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    traceback.print_exception(err)
    print(f"{prog}: unexpected error (a bug; please report it with the traceback above): {type(err).__name__}",
          file=sys.stderr)
    return EXIT_UNEXPECTED


def run_main(main, prog: str, argv=None) -> int:
    """Run a script's `main(argv)` under the contract; `SystemExit` (argparse's exit 2) passes through."""
    try:
        main(argv)
    except BaseException as err:  # noqa: BLE001 -- every outcome maps to one exit status
        if isinstance(err, SystemExit):
            raise
        return exit_status(err, prog)
    return EXIT_OK
