"""The Django project of `cargo xtask bench` (xtask/src/bench/django.rs):
production settings (DEBUG off), no database, no sessions, templates
from this directory."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "locktrace-bench-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {"context_processors": []},
    }
]
DATABASES = {}
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
WSGI_APPLICATION = "benchsite.wsgi.application"
