"""The admin key `taas up` prints: made once per state folder, kept in it (app.core.storage.KEY_FILE) readable by
this user only."""

import os
from pathlib import Path

from sqlalchemy.orm import Session

from app.accounts import keys
from app.core.config import Settings
from app.core.db import make_engine


def local_key(settings: Settings, path: Path) -> str:
    """The admin key of this state folder: the one kept in `path` if the database still knows it, else a new
    one for the local owner, written there readable by this user only (mode 0600)."""
    engine = make_engine(settings.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            if path.is_file():
                key = path.read_text().strip()
                if key and keys.key_is_valid(session=session, key=key):
                    return key
            _, key = keys.create_key(session=session, owner=settings.owner, admin=True, name="taas up")
    finally:
        engine.dispose()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key
