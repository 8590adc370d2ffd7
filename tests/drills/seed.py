"""Add confirmed readers to a list, fast: `python seed.py SLUG COUNT` with the drill's env.

Readers are reader0@readers.example … reader{COUNT-1}@readers.example, confirmed on SLUG.
"""

from __future__ import annotations

import secrets
import sys

from sqlalchemy import insert, select

from newsletter import create_app
from newsletter.extensions import db
from newsletter.models import Newsletter, Subscriber, Subscription, utcnow

STEP = 5000


def main() -> None:
    slug, count = sys.argv[1], int(sys.argv[2])
    app = create_app()
    with app.app_context():
        newsletter_id = db.session.scalar(select(Newsletter.id).where(Newsletter.slug == slug))
        assert newsletter_id is not None, f"no newsletter {slug}"
        now = utcnow()
        for first in range(0, count, STEP):
            emails = [f"reader{n}@readers.example" for n in range(first, min(first + STEP, count))]
            ids = db.session.scalars(
                insert(Subscriber).returning(Subscriber.id),
                [
                    {
                        "email": email,
                        "email_key": email,
                        "token_key": secrets.token_urlsafe(12),
                        "created_at": now,
                    }
                    for email in emails
                ],
            ).all()
            db.session.execute(
                insert(Subscription),
                [
                    {
                        "subscriber_id": i,
                        "newsletter_id": newsletter_id,
                        "status": "confirmed",
                        "nonce": secrets.token_hex(8),
                        "subscribed_at": now,
                        "confirmed_at": now,
                    }
                    for i in ids
                ],
            )
            db.session.commit()
        db.engine.dispose()
    print(f"{count} readers on {slug}")


if __name__ == "__main__":
    main()
