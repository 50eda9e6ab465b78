"""The last step of an upgrade from a release before secret_values (README, Upgrading)."""

from django.core.management.base import BaseCommand

from builds.services.jobs import jobs_seal_plain_secrets


class Command(BaseCommand):
    help = ("Move secret values that a release before v0.2 stored in plain text into encrypted storage. "
            "Run after the last process of that release has stopped; a second run does nothing.")

    def handle(self, *args, **options):
        self.stdout.write(f"sealed the secret values of {jobs_seal_plain_secrets()} jobs")
