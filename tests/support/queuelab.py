"""The fair queue against a database of its own: `python -m tests.support.queuelab` with
DATA_DIR set to an empty directory reads steps (JSON lines) on stdin, runs each through the
real services (job_create, job_claim_next, job_finish, job_retry_later, TenantLimit rows) and
prints, per step, the job it claimed (if any) and every pending job's queue place.

Its own database, because the pick is global: jobs other tests left pending in the shared
test database would take part. The broker is kombu's in-memory one (no worker listens), so
publishing costs nothing and is checked by no one here.
"""

import json
import os
import sys


def setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
    os.environ["CELERY_BROKER_URL"] = "memory://"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def submit(job_id: str, user: str, project: str, **build_config) -> None:
    from builds.services import jobs

    source = {"gitRepository": "https://git.example.invalid/app.git"}
    for key in ("ref", "workingDir"):
        if key in build_config:
            source[key] = build_config.pop(key)
    jobs.job_create(data={"id": job_id, "projectId": project, "userId": user, "sourceType": "git",
                          "sourceInfo": source, "buildConfig": build_config})


def step(spec: dict, leases: dict) -> dict:
    from builds.models import Job, Status, TenantLimit
    from builds.services.state import lifecycle, queue

    result = {}
    if "submit" in spec:
        submit(spec["submit"], spec["user"], spec["project"], **spec.get("buildConfig", {}))
    elif "claim" in spec:
        claimed = lifecycle.job_claim_next(worker="queuelab:1")
        if claimed:
            leases[claimed[0]] = claimed[1]
        result["claimed"] = claimed[0] if claimed else None
    elif "finish" in spec:
        lifecycle.job_finish(job_id=spec["finish"], lease=leases.pop(spec["finish"]), status=Status.SUCCESS)
    elif "retry" in spec:
        lifecycle.job_retry_later(job_id=spec["retry"], lease=leases.pop(spec["retry"]), error_code="X", error="x",
                                  delay_seconds=spec.get("delay", 3600))
    elif "limit" in spec:
        kind, name, value = spec["limit"]
        TenantLimit.objects.update_or_create(kind=kind, name=name, defaults={"max_builds": value})
    places = queue.places()
    result["places"] = {job_id: [p["position"], p["reason"]] for job_id, p in places.items()}
    # One job's place (what its JSON shows) is its place among all.
    result["each_alone_same"] = all(queue.places(job_id) == {job_id: place} for job_id, place in places.items())
    result["status"] = {pk: [status, code, error] for pk, status, code, error in
                        Job.objects.values_list("pk", "status", "error_code", "error")}
    return result


def main() -> None:
    setup()
    leases = {}
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(step(json.loads(line), leases)), flush=True)


if __name__ == "__main__":
    main()
