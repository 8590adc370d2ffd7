"""Charts drawn on the server as inline SVG: no JavaScript, readable by screen readers."""

from __future__ import annotations

import hashlib
from datetime import date

from babel.numbers import format_decimal as _format_decimal
from flask import has_app_context
from flask_babel import format_number
from flask_babel import gettext as _
from markupsafe import Markup

# Room around the plot for the value labels (left) and the date labels (below).
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 8, 10, 22


def format_decimal(value: int) -> str:
    """A count as the page's table beside the chart writes it: Flask-Babel's format_number,
    the `numberformat` filter (English outside an app)."""
    if has_app_context():
        return format_number(value)
    return _format_decimal(value, locale="en")


def growth_svg(
    points: list[tuple[date, int]], *, title: str, width: int = 640, height: int = 200
) -> Markup:
    """An area chart of one count per day, labelled with its first and last day, low and high."""
    # Unique per chart and stable between renders, so two charts on a page keep their labels.
    uid = "chart-" + hashlib.blake2s(f"{title}{points}".encode(), digest_size=4).hexdigest()
    if points:
        (first, start), (last, end) = points[0], points[-1]
        low, high = min(v for _, v in points), max(v for _, v in points)
        n = format_decimal
        desc = (
            f"{first.isoformat()}: {n(start)}."
            if len(points) == 1
            else _(
                "From %(first)s (%(start)s) to %(last)s (%(end)s); lowest %(low)s, "
                "highest %(high)s.",
                first=first.isoformat(),
                start=n(start),
                last=last.isoformat(),
                end=n(end),
                low=n(low),
                high=n(high),
            )
        )
    else:
        desc = _("No data yet.")
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%"'
            ' role="img" aria-labelledby="{id}-title {id}-desc" class="growth-chart"'
            ' font-size="12" fill="currentColor">'
        ).format(w=width, h=height, id=uid),
        Markup('<title id="{}-title">{}</title>').format(uid, title),
        Markup('<desc id="{}-desc">{}</desc>').format(uid, desc),
    ]
    if not points:
        parts.append(
            Markup('<text x="{}" y="{}" text-anchor="middle">{}</text>').format(
                width / 2, height / 2, _("No data yet")
            )
        )
    else:
        parts.extend(_plot(points, width, height))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _plot(points: list[tuple[date, int]], width: int, height: int) -> list[Markup]:
    values = [v for _, v in points]
    low, high = min(values), max(values)
    span = high - low or 1  # a flat series lies on the bottom line
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    bottom = _TOP + plot_h
    if len(points) > 1:
        xs = [_LEFT + i * plot_w / (len(points) - 1) for i in range(len(points))]
    else:
        xs = [_LEFT + plot_w / 2]
    ys = [bottom - (v - low) / span * plot_h for v in values]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    area = f"{xs[0]:.1f},{bottom:.1f} {line} {xs[-1]:.1f},{bottom:.1f}"
    first, last = points[0][0].isoformat(), points[-1][0].isoformat()
    labels = [
        Markup('<text x="{}" y="{}" text-anchor="end">{}</text>').format(
            _LEFT - 6, bottom, format_decimal(low)
        ),
        Markup('<text x="{}" y="{}">{}</text>').format(_LEFT, height - 4, first),
    ]
    if high != low:
        labels.append(
            Markup('<text x="{}" y="{}" text-anchor="end" dy="0.7em">{}</text>').format(
                _LEFT - 6, _TOP, format_decimal(high)
            )
        )
    if last != first:
        labels.append(
            Markup('<text x="{}" y="{}" text-anchor="end">{}</text>').format(
                _LEFT + plot_w, height - 4, last
            )
        )
    return [
        Markup('<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="currentColor" />').format(
            l=_LEFT, r=_LEFT + plot_w, b=bottom
        ),
        Markup('<polygon points="{}" fill-opacity="0.15" />').format(area),
        Markup(
            '<polyline points="{}" fill="none" stroke="currentColor" stroke-width="2" />'
        ).format(line),
        Markup('<circle cx="{:.1f}" cy="{:.1f}" r="3" />').format(xs[-1], ys[-1]),
        *labels,
    ]
