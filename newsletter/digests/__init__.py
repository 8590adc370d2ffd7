"""Digests: news items composed into mails, snapshotted into a ledger, sent by workers.

items (the material), cadence (when automatic digests are due), compose (render once,
personalise cheaply), ledger (the named statements of the delivery ledger), sender (the
worker's runner that works the ledger off), states (draft → sent, the editor's actions),
progress (where a digest stands).
"""
