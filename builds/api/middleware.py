"""Refuse request bodies over MAX_REQUEST_BODY_BYTES with 413 before anything reads them."""

from django.conf import settings
from django.http import JsonResponse


class BodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"error": "BAD_REQUEST", "message": "invalid Content-Length"}, status=400)
        if not length and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            # Django reads a body by its Content-Length only; without one it would see none.
            return JsonResponse(
                {"error": "LENGTH_REQUIRED", "message": "send the request body with a Content-Length header"},
                status=411,
            )
        if length > settings.MAX_REQUEST_BODY_BYTES:
            return JsonResponse(
                {"error": "PAYLOAD_TOO_LARGE", "message": f"request bodies are limited to {settings.MAX_REQUEST_BODY_BYTES} bytes"},
                status=413,
            )
        return self.get_response(request)
