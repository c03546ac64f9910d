"""The namespace lab: a Docker host built from network namespaces, probed with real sockets."""
