"""News items by hand: list, add, change, delete. Editors and admins."""

from __future__ import annotations

from datetime import datetime

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from newsletter import localtime
from newsletter import newsletters as lists
from newsletter.digests import items
from newsletter.extensions import db
from newsletter.models import Item, Newsletter
from newsletter.web.admin.core import bp
from newsletter.web.admin.forms import ItemForm


@bp.get("/items")
def items_list() -> str:
    """Items newest first, a page at a time, of one newsletter when chosen."""
    every = lists.all_newsletters(db.session)
    slug = request.args.get("newsletter", "")
    chosen = next((n for n in every if n.slug == slug), None)
    page = max(request.args.get("page", 1, type=int), 1)
    rows, more = items.items_page(db.session, chosen.id if chosen else None, page)
    return render_template(
        "admin/items.html",
        items=rows,
        newsletters=every,
        chosen=chosen,
        page=page,
        more=more,
    )


def _zone_name(item: Item | None, open_lists: list[Newsletter]) -> str:
    """The zone an item's time is shown in: its first newsletter's, else the first open one's."""
    lists_first = item.newsletters if item is not None and item.newsletters else open_lists
    return lists_first[0].timezone if lists_first else "UTC"


def _form(item: Item | None) -> ItemForm:
    open_lists = [n for n in lists.all_newsletters(db.session) if not n.archived]
    zone_name = _zone_name(item, open_lists)
    if item is None:
        form = ItemForm(zone=zone_name)
    else:
        local = item.published_at.astimezone(localtime.zone(zone_name)).replace(tzinfo=None)
        form = ItemForm(obj=item, newsletters=[n.slug for n in item.newsletters], zone=zone_name)
        if not form.is_submitted():
            # Shown as the clock reads in the zone beside it (the object's value is UTC).
            form.published_at.data = local
    form.newsletters.choices = [(n.slug, n.name) for n in open_lists]
    form.zone.choices = sorted({zone_name, *(n.timezone for n in open_lists)})
    return form


def _published(form: ItemForm) -> datetime | None:
    """The publication time the form gives, as a moment in UTC; None: now."""
    if form.published_at.data is None:
        return None
    return localtime.to_utc(form.published_at.data, form.zone.data)


def _show(form: ItemForm, item: Item | None) -> tuple[str, int]:
    page = render_template("admin/item_form.html", form=form, item=item)
    return page, 422 if form.errors else 200


def _field_error(form: ItemForm, exc: items.ItemError) -> None:
    field = getattr(form, exc.field or "", None) or form.title
    field.errors = [*field.errors, exc.message]


@bp.route("/items/new", methods=["GET", "POST"])
def item_new() -> Response | tuple[str, int]:
    """Add an item by hand."""
    form = _form(None)
    if form.validate_on_submit():
        try:
            item, created = items.add_item(
                db.session,
                title=form.title.data,
                url=form.url.data,
                summary=form.summary.data,
                published_at=_published(form),
                newsletters=form.newsletters.data,
                source="admin",
                pick=form.pick.data,
                alert=bool(form.alert.data),
            )
        except items.ItemError as exc:
            _field_error(form, exc)
        else:
            if created:
                flash(_("Added %(title)s.", title=item.title))
            else:
                flash(
                    _(
                        "An item with this link was there already; it is now on these "
                        "newsletters too."
                    )
                )
            return redirect(url_for("admin.items_list"))
    return _show(form, None)


@bp.route("/items/<int:item_id>/edit", methods=["GET", "POST"])
def item_edit(item_id: int) -> Response | tuple[str, int]:
    """Change an item's title, link, summary, time or newsletters."""
    item = db.get_or_404(Item, item_id)
    form = _form(item)
    if form.validate_on_submit():
        try:
            items.update_item(
                db.session,
                item,
                title=form.title.data,
                url=form.url.data,
                summary=form.summary.data,
                published_at=_published(form) or item.published_at,
                newsletters=form.newsletters.data,
                pick=form.pick.data,
                alert=bool(form.alert.data),
            )
        except items.ItemError as exc:
            _field_error(form, exc)
        else:
            flash(_("Saved %(title)s.", title=item.title))
            return redirect(url_for("admin.items_list"))
    return _show(form, item)


@bp.route("/items/<int:item_id>/delete", methods=["GET", "POST"])
def item_delete(item_id: int) -> str | Response:
    """Ask first, then delete an item; it leaves every newsletter and digest it was in."""
    item = db.get_or_404(Item, item_id)
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template(
            "admin/item_delete.html", item=item, digests=items.unsent_digests_with(db.session, item)
        )
    title = item.title
    items.delete_item(db.session, item)
    flash(_("Deleted %(title)s.", title=title))
    return redirect(url_for("admin.items_list"))
