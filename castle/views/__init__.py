"""Views over a spec or a stack: matrix, explain, diff, draw, audit, import."""
