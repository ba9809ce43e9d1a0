"""The lease machinery every pipeline uses: a row is worked on by one worker at a time, and a row whose worker died
is worked on again by another.

A worker claims a row with one conditional UPDATE (claims.claim) that writes a lease (its name and an expiry) into
the row, renews the lease while it works (keeper.LeaseKeeper, on a thread), checks and locks it in every write that
must be its alone (claims.holds), and releases it when it records the outcome (claims.finish) or hands the row back
at shutdown without counting the attempt (claims.hand_back). The reaper (reaper.py) requeues rows whose lease
expired, fails those out of attempts, and sends again the messages of rows that waited too long.

What differs between pipelines (which table, which rows wait and which are claimed, what a claim writes, how a row
out of attempts fails) is a LeasedKind (kind.py): the training jobs' in worker.training.jobs, the dataset ingests'
in worker.ingest.datasets.
"""
