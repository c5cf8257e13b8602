"""The demo's self-contained HTML report: one section per domain, figures embedded."""

from .html import Section, figure_to_html, pre, render_html, render_report, table_html

__all__ = ["Section", "figure_to_html", "pre", "render_html", "render_report", "table_html"]
