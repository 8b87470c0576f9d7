"""SQLAlchemy 2.0 models: every table the supervisor keeps.

- ``resources``: one row per API object, in its storage version, keyed by
  (group, resource, namespace, name). Cluster-scoped objects use ``""`` as
  their namespace.
- ``watch_events``: the watch log; one row per write, ``rv`` is the global
  resourceVersion that write produced.
- ``counters``: the global revision counter. Every write transaction starts
  by bumping it, which serialises writers (a row lock on PostgreSQL, the
  database write lock on SQLite), so commit order is revision order and a
  watcher reading ``rv > N`` can never miss an event.
- ``users`` and ``tokens``: people and their bearer tokens (hashed).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class ResourceRow(Base):
    __tablename__ = "resources"
    __table_args__ = (
        Index("ix_resources_key", "api_group", "resource", "namespace", "name", unique=True),
        Index("ix_resources_ns", "namespace"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_group: Mapped[str] = mapped_column(String(253), nullable=False)
    resource: Mapped[str] = mapped_column(String(253), nullable=False)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)
    name: Mapped[str] = mapped_column(String(253), nullable=False)
    uid: Mapped[str] = mapped_column(String(36), nullable=False)
    resource_version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    body: Mapped[dict] = mapped_column(JSON, nullable=False)


class WatchEvent(Base):
    __tablename__ = "watch_events"
    __table_args__ = (Index("ix_watch_events_kind", "api_group", "resource", "rv"),)

    rv: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    api_group: Mapped[str] = mapped_column(String(253), nullable=False)
    resource: Mapped[str] = mapped_column(String(253), nullable=False)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)
    name: Mapped[str] = mapped_column(String(253), nullable=False)
    body: Mapped[dict] = mapped_column(JSON, nullable=False)


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    groups: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Token(Base):
    __tablename__ = "tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
