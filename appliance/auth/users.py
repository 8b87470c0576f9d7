"""People and their bearer tokens.

Passwords are stored as scrypt hashes (werkzeug.security). Tokens are random,
handed out once, and stored only as their SHA-256, with an expiry.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from appliance.store.models import Token, User
from appliance.util.names import dns1123_label

AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"  # bound to cluster-admin
NODES = "system:nodes"  # host agents
ADMINS = "pacific:administrators"  # people who manage namespaces in the dashboard

TOKEN_PREFIX = "plab-"
MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return MASTERS in self.groups or ADMINS in self.groups


class UserError(ValueError):
    """Bad input for a user operation (name taken, weak password, ...)."""


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def validate_username(name: str) -> None:
    if name.startswith("system:"):
        if not name[len("system:"):]:
            raise UserError("user name must not be empty")
        return
    errors = dns1123_label(name)
    if errors:
        raise UserError(f"invalid user name {name!r}: {errors[0]}")


def create_user(session: Session, name: str, password: str, groups: list[str] | None = None) -> None:
    validate_username(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if session.get(User, name) is not None:
        raise UserError(f"user {name!r} already exists")
    session.add(User(name=name, password_hash=generate_password_hash(password),
                     groups=list(groups or []), disabled=False, created_at=_now()))
    session.flush()


def set_password(session: Session, name: str, password: str) -> None:
    user = session.get(User, name)
    if user is None:
        raise UserError(f"user {name!r} does not exist")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = generate_password_hash(password)
    revoke_tokens(session, name)


def set_groups(session: Session, name: str, groups: list[str]) -> None:
    user = session.get(User, name)
    if user is None:
        raise UserError(f"user {name!r} does not exist")
    user.groups = list(groups)


def delete_user(session: Session, name: str) -> None:
    user = session.get(User, name)
    if user is None:
        raise UserError(f"user {name!r} does not exist")
    session.delete(user)
    revoke_tokens(session, name)


def list_users(session: Session) -> list[User]:
    return list(session.execute(select(User).order_by(User.name)).scalars())


def user_exists(session: Session, name: str) -> bool:
    return session.get(User, name) is not None


def authenticate(session: Session, name: str, password: str) -> UserInfo | None:
    user = session.get(User, name)
    if user is None or user.disabled or not check_password_hash(user.password_hash, password):
        return None
    return UserInfo(user.name, (*user.groups, AUTHENTICATED))


def issue_token(session: Session, name: str, ttl_seconds: int) -> tuple[str, datetime]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = _now()
    expires = now + timedelta(seconds=ttl_seconds)
    session.add(Token(token_hash=_hash_token(token), user=name, created_at=now, expires_at=expires))
    session.flush()
    return token, expires


# Every API request resolves its token: one prebuilt statement, not two ORM lookups.
_TOKENS, _USERS = Token.__table__, User.__table__
_RESOLVE = (select(_USERS.c.name, _USERS.c.groups, _USERS.c.disabled, _TOKENS.c.expires_at)
            .select_from(_TOKENS.join(_USERS, _USERS.c.name == _TOKENS.c.user))
            .where(_TOKENS.c.token_hash == bindparam("token_hash")))


def resolve_token(db: Session | Connection, token: str) -> UserInfo | None:
    """Who holds ``token``, if it is valid: ``db`` is a transaction's connection (what a
    request uses: no ORM session is made) or a session (its pending tokens count)."""
    if isinstance(db, Session):
        db.flush()
        db = db.connection()
    row = db.execute(_RESOLVE, {"token_hash": _hash_token(token)}).first()
    if row is None or row.disabled or _aware(row.expires_at) <= _now():
        return None
    return UserInfo(row.name, (*row.groups, AUTHENTICATED))


def revoke_tokens(session: Session, name: str) -> None:
    session.execute(delete(Token).where(Token.user == name))


def revoke_token(session: Session, token: str) -> None:
    session.execute(delete(Token).where(Token.token_hash == _hash_token(token)))


def purge_expired_tokens(session: Session) -> int:
    result = session.execute(delete(Token).where(Token.expires_at <= _now()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
