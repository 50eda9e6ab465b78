"""The service's settings with persistent database connections (CONN_MAX_AGE): no connect,
PRAGMAs and SQL function registration on every request."""

from hubfly.settings import *  # noqa: F401,F403
from hubfly.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 600
