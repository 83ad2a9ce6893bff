"""The web playground and usage dashboard: static pages served by chatforge."""
