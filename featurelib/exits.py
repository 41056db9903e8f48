"""Exit codes and the one place that turns featurelib's errors into them.

Shared by ``featurize``, ``python -m pipelines.extract_features`` and the Spark
job, so every entry point answers the same mistake with the same code and message:
0 done; 2 the user's mistake (spec, arguments, input, output); 3 failed by
policy (error budget); 130 interrupted (Ctrl-C); 1 anything else.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from featurelib.errors import PolicyError, UserError

EXIT_OK, EXIT_ERROR, EXIT_USER, EXIT_POLICY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: stdout closed by its reader (``featurize inspect OUT | head``): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141


RESUME_HINT = "run again with --resume to continue"


def with_exit_codes(action: Callable[[], int | None], *, interrupted: str = RESUME_HINT) -> int:
    """Run `action`, turning featurelib's errors into the contract's exit codes and one message.

    A user's mistake or a policy failure is one line; anything else (a bug, a
    broken extractor, a failed task) prints its traceback, then one line.
    `interrupted` follows ``featurize: interrupted;`` on Ctrl-C (what the user can do next).
    """
    try:
        return action() or EXIT_OK
    except UserError as exc:
        print(f"featurize: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except PolicyError as exc:
        print(f"featurize: failed by policy: {exc}", file=sys.stderr)
        return EXIT_POLICY
    except BrokenPipeError:
        # The reader of stdout went away: nothing left to tell it. Point stdout at /dev/null so
        # the interpreter's final flush does not raise the same error again at exit.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"featurize: interrupted; {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        print(f"featurize: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
