"""Print how to authenticate: the generated API token, or where the tokens come from."""

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Show the API token (generated on first start when BUILDER_API_TOKENS is unset)."

    def handle(self, *args, **options):
        if settings.API_TOKEN_GENERATED:
            self.stdout.write(f"API token (stored in {settings.DATA_DIR / 'api-token'}): {settings.API_TOKENS[0]}")
        else:
            self.stdout.write(f"API tokens come from BUILDER_API_TOKENS ({len(settings.API_TOKENS)} configured)")
