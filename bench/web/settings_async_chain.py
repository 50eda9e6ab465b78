"""The service's settings with an all-async middleware chain: the body-size check in either
mode, and WhiteNoise (sync only) left out."""

from hubfly.settings import *  # noqa: F401,F403
from hubfly.settings import MIDDLEWARE

MIDDLEWARE = ["bench.web.middleware.BodySizeLimitMiddleware"] + [
    m for m in MIDDLEWARE if m not in ("builds.api.middleware.BodySizeLimitMiddleware", "whitenoise.middleware.WhiteNoiseMiddleware")
]
