"""Settings variants of the web process, for measuring a proposed change without editing the
service (bench/webvariants.py starts gunicorn with them)."""
