"""The report's HTML helpers: everything escaped, figures embedded, nothing left open."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from refinekit.report import Section, render_html, render_report
from refinekit.report.html import figure_to_html, table_html


def test_figure_to_html_embeds_a_png_and_escapes_the_alt_text():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    img = figure_to_html(fig, 'a "quoted" <alt> & more')
    assert img.startswith('<img alt="a &quot;quoted&quot; &lt;alt&gt; &amp; more"')
    assert 'src="data:image/png;base64,iVBORw0KGgo' in img and not plt.fignum_exists(fig.number)


def test_figure_to_html_closes_a_figure_that_fails_to_render(monkeypatch):
    fig = plt.figure()

    def broken(*args, **kwargs):
        raise ValueError("cannot render")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(ValueError, match="cannot render"):
        figure_to_html(fig, "broken")
    assert not plt.fignum_exists(fig.number)  # pyplot would keep it (and its memory) for ever


def test_render_html_escapes_titles_and_summaries(tmp_path):
    sections = [Section("a <b> & 'c'", 'says "<script>"', table_html(["x<y"], [["<td>", 1.5, None]]), ok=False)]
    page = render_html(sections, title="t <&>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt;b&gt; &amp;" in page
    assert "<th>x&lt;y</th>" in page and "<td>&lt;td&gt;</td><td>1.5</td><td>-</td>" in page
    assert page.count("<html") == page.count("<body") == page.count("<head>") == 1
    render_report(sections, tmp_path / "r.html", title="t <&>")
    assert (tmp_path / "r.html").read_text(encoding="utf-8")[:200] == page[:200]
