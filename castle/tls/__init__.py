"""TLS: which certificates a plan needs, and the CA that makes them."""
