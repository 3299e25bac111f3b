"""Self-contained HTML pages (the evaluation report, the telemetry report, the demo page): one style and
one way to embed a picture, so every page reads offline and looks the same."""

from __future__ import annotations

import base64
import html
from pathlib import Path

__all__ = ["page", "png_data_uri"]

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
         "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}figure{display:inline-block;margin:8px}"
         "img{max-width:100%}.big{font-size:1.3em}")


def png_data_uri(png: bytes | Path) -> str:
    """A PNG (its bytes or its file) as a data: URI for an <img src>."""
    data = png.read_bytes() if isinstance(png, Path) else png
    return "data:image/png;base64," + base64.b64encode(data).decode()


def page(title: str, body: str) -> str:
    """A whole page: `body` is trusted HTML; the title is escaped here."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")
