"""A container healthcheck for the Celery processes (docker-compose.yml): exits 0 when the
named readiness checks pass from this process's configuration, 1 naming the first that fails.

    python -m hubfly.healthcheck database broker buildkitd buildNetwork
"""

import os
import sys


def main(names: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
    import django

    django.setup()
    from builds.services import health

    results = health.checks()
    for name in names or ["database", "broker"]:
        if results.get(name) != "ok":
            print(f"{name}: {results.get(name, 'not checked')}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
