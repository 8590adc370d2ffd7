"""The README's first five minutes, followed as a newcomer would, against a fresh `make run`.

Every command block of that section runs as written, in order, and must exit 0; the steps a
newcomer does in the browser (sign up in a box, confirm from the development mailbox) are done
here over HTTP, as the browser would.
"""

from __future__ import annotations

import re
from pathlib import Path

from dev_instance import first_five_minutes, mail_with, mails, make_run, request, text_of, wait

READER = "you@example.org"


def test_the_first_five_minutes_work_as_written(tmp_path: Path) -> None:
    blocks = first_five_minutes()
    assert blocks[0] == "make run" and len(blocks) == 3
    with make_run(tmp_path) as demo:
        base, outbox = demo.base, demo.outbox

        # 1. A reader signs up in the Daily Briefing box.
        status, page = request(f"{base}/subscribe", {"email": READER, "newsletter": "daily"})
        assert status == 200, page

        # 2. The confirmation mail, its link, the button.
        confirmation = wait("the confirmation", lambda: mail_with(outbox, "confirm"))
        link = re.search(rf"{re.escape(base)}/confirm/\S+", text_of(confirmation))
        assert link is not None
        status, page = request(link.group(0))
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
        form = {"csrf_token": token.group(1)} if token else {}
        status, page = request(link.group(0), form)
        assert status == 200 and "Subscription confirmed" in page
        wait("the welcome mail", lambda: mail_with(outbox, "Welcome"))

        # 3. An admin account: the command asks for the password twice.
        created = demo.run(blocks[1], input="correct horse battery staple\n" * 2, timeout=60)
        assert created.returncode == 0, created.stdout + created.stderr
        assert "Account you@example.org created (admin)." in created.stdout

        # 4. A digest to every confirmed reader, the newcomer among them.
        sent = demo.run(blocks[2], timeout=180)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        digests = [
            m
            for m in mails(outbox)
            if m["List-Unsubscribe-Post"] and "Welcome" not in str(m["Subject"])
        ]
        assert [str(m["To"]) for m in digests] == [READER]
