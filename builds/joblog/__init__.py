"""A job's log: written as masked, append-only chunks in the database (writer, masking) and read
by byte offset or followed while it grows (reader). The HTTP route is builds/api/logstream.py."""
