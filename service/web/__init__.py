"""The dashboard: server-rendered pages (Jinja2) and inline SVG charts."""
