"""Running the service: readiness checks (health), Prometheus metrics (metrics), periodic
clean-up (housekeeping), and riding out database errors that pass by themselves (dbfaults)."""
