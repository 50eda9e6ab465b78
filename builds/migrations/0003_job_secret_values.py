"""Secret values move out of build_config into secret_values, encrypted with SECRETS_KEY.

This is the expand half, safe while the release before it still serves (README, Upgrading):
the column has a database default, so that release's inserts work, and rows it wrote keep
their plain values in build_config, which its workers read, beside the encrypted copy made
here. `manage.py seal_secrets` (builds.services.jobs.jobs_seal_plain_secrets) removes the
plain values once no process of that release is left. The code is repeated, not imported, so
this migration keeps meaning what it meant.
"""

import base64
import hashlib
import json

from django.conf import settings
from django.db import migrations, models


def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _cipher():
    from cryptography.fernet import Fernet, MultiFernet

    return MultiFernet([Fernet(base64.urlsafe_b64encode(base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))))
                        for k in settings.SECRETS_KEYS])


def _fingerprint(job, build_config: dict) -> str:
    request = {"id": job.id, "projectId": job.project_id, "userId": job.user_id, "sourceType": job.source_type,
               "sourceInfo": job.source_info, "buildConfig": build_config}
    return hashlib.sha256(_canonical(request)).hexdigest()


def encrypt_plain_secrets(apps, schema_editor):
    cipher = _cipher()
    Job = apps.get_model("builds", "Job")
    for job in list(Job.objects.filter(secret_values="", build_config__has_key="secrets")):
        config = job.build_config or {}
        keys = set(config.get("secrets") or [])
        env = config.get("env") or {}
        secrets = {k: v for k, v in env.items() if k in keys}
        if not secrets:
            continue
        Job.objects.filter(pk=job.pk).update(secret_values=cipher.encrypt(_canonical(secrets)).decode())


def decrypt_secrets(apps, schema_editor):
    """Back to plain text in build_config, for the code before this migration."""
    cipher = _cipher()
    Job = apps.get_model("builds", "Job")
    for job in list(Job.objects.exclude(secret_values="")):
        config = {**job.build_config, "env": {**(job.build_config.get("env") or {}),
                                              **json.loads(cipher.decrypt(job.secret_values.encode()))}}
        if config != job.build_config:  # sealed: the plain values go back where that release reads them
            Job.objects.filter(pk=job.pk).update(build_config=config, request_fingerprint=_fingerprint(job, config))
        Job.objects.filter(pk=job.pk).update(secret_values="")


class Migration(migrations.Migration):

    dependencies = [
        ('builds', '0002_service_counter'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='secret_values',
            field=models.TextField(blank=True, default='', db_default='', editable=False),
        ),
        migrations.RunPython(encrypt_plain_secrets, decrypt_secrets),
    ]
