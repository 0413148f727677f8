"""User-facing errors: one clear paragraph on the terminal, a non-zero exit code, never a bare traceback."""

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger("medgpt")


class UserError(ValueError):
    """Bad input a user can fix (flag, data file, model path). The message names what, where and the fix."""


class Interrupted(Exception):
    """A run stopped on a signal after saving a checkpoint; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(main: Callable[[], object], training: bool = False) -> None:
    """Run a script's main(); a UserError becomes a one-paragraph message on stderr and exit code 2. Training
    scripts first restart with tcmalloc where it is installed (medgpt.allocator: much less memory on the CPU)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if training:
        from medgpt.allocator import restart_with_tcmalloc

        restart_with_tcmalloc()
    try:
        main()
    except UserError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        print(f"\nstopped: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
