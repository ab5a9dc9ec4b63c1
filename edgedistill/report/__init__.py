"""Reports: tables, plots, HTML."""

from edgedistill.report.render import render_html, render_markdown, render_plot, summary_table

__all__ = ["render_html", "render_markdown", "render_plot", "summary_table"]
