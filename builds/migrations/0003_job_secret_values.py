"""Secret values move out of build_config into secret_values, encrypted with SECRETS_KEY.

Rows written by earlier versions hold them in plain text in build_config's env, and their
request fingerprint hashes them too: both are rewritten here as builds.services.jobs writes
new rows (the code is repeated, not imported, so this migration keeps meaning what it meant).
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
        public = {**config, "env": {k: v for k, v in env.items() if k not in keys}}
        Job.objects.filter(pk=job.pk).update(
            build_config=public, secret_values=cipher.encrypt(_canonical(secrets)).decode(),
            request_fingerprint=_fingerprint(job, public),
        )


def decrypt_secrets(apps, schema_editor):
    """Back to plain text in build_config, for the code before this migration."""
    cipher = _cipher()
    Job = apps.get_model("builds", "Job")
    for job in list(Job.objects.exclude(secret_values="")):
        config = {**job.build_config, "env": {**(job.build_config.get("env") or {}),
                                              **json.loads(cipher.decrypt(job.secret_values.encode()))}}
        Job.objects.filter(pk=job.pk).update(build_config=config, secret_values="",
                                             request_fingerprint=_fingerprint(job, config))


class Migration(migrations.Migration):

    dependencies = [
        ('builds', '0002_service_counter'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='secret_values',
            field=models.TextField(blank=True, default='', editable=False),
        ),
        migrations.RunPython(encrypt_plain_secrets, decrypt_secrets),
    ]
