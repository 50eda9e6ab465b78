"""BodySizeLimitMiddleware as one that runs in either mode, so an ASGI request does not hop to
a thread and back just for it (Django adapts every sync-only middleware with sync_to_async /
async_to_sync)."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import JsonResponse


def _refusal(request):
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return JsonResponse({"error": "BAD_REQUEST", "message": "invalid Content-Length"}, status=400)
    if length > settings.MAX_REQUEST_BODY_BYTES:
        return JsonResponse({"error": "PAYLOAD_TOO_LARGE",
                             "message": f"request bodies are limited to {settings.MAX_REQUEST_BODY_BYTES} bytes"},
                            status=413)
    return None


class BodySizeLimitMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return _refusal(request) or self.get_response(request)

    async def _acall(self, request):
        return _refusal(request) or await self.get_response(request)
