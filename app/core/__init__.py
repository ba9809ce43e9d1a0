"""The lower tier the API and the workers share: settings, the database (engine, tables, migrations, fast reads), Redis
(its client, keys, the loss stream, liveness), the job queue, the shared disk's names, image decoding, domain errors,
paging."""
