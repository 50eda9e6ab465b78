"""A container healthcheck for the Celery processes (docker-compose.yml): exits 0 when the
named readiness checks pass from this process's configuration, 1 naming the first that fails.
With `--wait SECONDS`, checks again every two seconds until they pass or the time is up (the
compose `migrate` service waits so for PostgreSQL and RabbitMQ in the scale profile).

    python -m hubfly.healthcheck database broker buildkitd buildNetwork
    python -m hubfly.healthcheck --wait 120 database broker
"""

import argparse
import os
import sys
import time


def failing(names: list[str]) -> str | None:
    # Django is set up by main(), after the command line is read; these need it.
    from django.db import connection

    from builds.services.operations import health

    results = health.checks()
    connection.close()
    for name in names:
        if results.get(name) != "ok":
            return f"{name}: {results.get(name, 'not checked')}"
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubfly.healthcheck")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS")
    parser.add_argument("checks", nargs="*", default=["database", "broker"])
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
    # After the settings module is named, which the command line may change.
    import django

    django.setup()
    deadline = time.monotonic() + args.wait
    while (problem := failing(args.checks)) is not None and time.monotonic() < deadline:
        time.sleep(2)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
