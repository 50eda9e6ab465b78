"""Every API error is JSON: {"error": CODE, "message": one line[, "fields": {...}]}."""

import logging

from django.db import DatabaseError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from builds.services.operations import dbfaults

log = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    def __init__(self, status_code: int, code: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.error_code = code
        self.message = message


_CODES = {
    exceptions.ParseError: "INVALID_JSON",
    exceptions.NotAuthenticated: "UNAUTHORIZED",
    exceptions.AuthenticationFailed: "UNAUTHORIZED",
    exceptions.PermissionDenied: "FORBIDDEN",
    exceptions.NotFound: "NOT_FOUND",
    exceptions.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    exceptions.UnsupportedMediaType: "UNSUPPORTED_MEDIA_TYPE",
    exceptions.NotAcceptable: "NOT_ACCEPTABLE",
    exceptions.Throttled: "THROTTLED",
}


def first_message(detail) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = first_message(value)
            return inner if key in ("non_field_errors", "detail") else f"{key}: {inner}"
    if isinstance(detail, list) and detail:
        return first_message(detail[0])
    return str(detail)


def _plain(detail):
    if isinstance(detail, dict):
        return {k: _plain(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_plain(v) for v in detail]
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return Response({"error": exc.error_code, "message": exc.message}, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, exceptions.ValidationError):
        return Response(
            {"error": "VALIDATION_ERROR", "message": first_message(exc.detail), "fields": _plain(exc.detail)},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "ERROR")
        message = first_message(exc.detail)
        if isinstance(exc, exceptions.ParseError):
            message = "the request body is not valid JSON"
        response = Response({"error": code, "message": message}, status=exc.status_code)
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            response["WWW-Authenticate"] = "Bearer"
            response.status_code = status.HTTP_401_UNAUTHORIZED
        return response
    if isinstance(exc, DatabaseError) and dbfaults.is_transient(exc):
        # Locked, unreachable or out of disk: the service's state, not a bug; the client retries.
        log.warning("database unavailable in %s: %s", type(context.get("view")).__name__, exc)
        dbfaults.recover()
        response = Response({"error": "SERVICE_UNAVAILABLE", "message": "the database is unavailable; try again later"},
                            status=status.HTTP_503_SERVICE_UNAVAILABLE)
        response["Retry-After"] = "5"
        # The request is worth another try once the outage is over (DatabaseOutageMiddleware).
        response.database_outage = dbfaults.is_outage(exc)
        return response
    log.exception("unhandled error in %s", context.get("view"))
    return Response({"error": "INTERNAL_ERROR", "message": "internal error"}, status=500)


def json_404(request, exception=None):
    return JsonResponse({"error": "NOT_FOUND", "message": "no such endpoint"}, status=404)


def json_500(request):
    return JsonResponse({"error": "INTERNAL_ERROR", "message": "internal error"}, status=500)


def json_400(request, exception=None):
    return JsonResponse({"error": "BAD_REQUEST", "message": "bad request"}, status=400)
