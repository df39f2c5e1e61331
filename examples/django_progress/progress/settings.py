"""Settings of the upload-progress example: no database, no Channels, no channel layer.

wsgate holds the WebSockets; this app only answers HTTP and publishes to wsgate over HTTP.
"""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["progress"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "progress.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {}
USE_TZ = True

# Where wsgate is: its HTTP API (for publishing) and its WebSocket base (for the page).
WSGATE_API = os.environ.get("WSGATE_API", "http://127.0.0.1:8080")
WSGATE_WS = os.environ.get("WSGATE_WS", "ws://127.0.0.1:8080")
# The same secret as hooks.secret in wsgate.toml: hook requests are checked with it.
WSGATE_HOOK_SECRET = os.environ.get("WSGATE_HOOK_SECRET", "change-me")
# Seconds of pretend work per row, so the progress can be watched.
PROGRESS_DELAY = float(os.environ.get("PROGRESS_DELAY", "0.05"))
