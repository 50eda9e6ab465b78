"""`python -m hubfly.worker ARGS` is `celery -A hubfly worker ARGS`, less ~16 MB a process.

celery's command line imports all of its subcommands, and `celery amqp` (an interactive shell
the worker never opens) brings click_repl and prompt_toolkit with it. They are left out here;
everything else is celery's own entry point.
"""

import sys
import types


def main(argv: list[str] | None = None) -> int:
    if "click_repl" not in sys.modules:
        stub = types.ModuleType("click_repl")
        stub.register_repl = lambda group, name="repl": None  # only `celery amqp` calls it
        sys.modules["click_repl"] = stub
    # After the stub is in place: celery.bin imports click_repl.
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "hubfly", "worker", *(sys.argv[1:] if argv is None else argv)]
    return celery_main()


if __name__ == "__main__":
    sys.exit(main())
