"""Subscriber imports: csvfile (reading and checking a CSV), statements (the batch writes),
importer (batches into a newsletter), jobs (queued uploads, the worker's runner)."""
