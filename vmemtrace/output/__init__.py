"""What vmemtrace says: tables, JSON, JUnit, KTAP, man pages, and the Prometheus exporter (collector, HTTP server, textfile)."""
