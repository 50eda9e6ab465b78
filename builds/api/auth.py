"""Bearer-token authentication for /api/ and /dev/ (tokens from BUILDER_API_TOKENS)."""

import hmac

from django.conf import settings
from rest_framework import authentication, exceptions


class ApiClient:
    """The caller behind a valid token: the platform's backend."""

    is_authenticated = True
    is_active = True
    is_staff = False
    pk = None

    def __str__(self):
        return "api-client"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise exceptions.AuthenticationFailed("use 'Authorization: Bearer <token>'")
        if not any(hmac.compare_digest(token.encode(), known.encode()) for known in settings.API_TOKENS):
            raise exceptions.AuthenticationFailed("invalid token")
        return ApiClient(), token

    def authenticate_header(self, request):
        return self.keyword
