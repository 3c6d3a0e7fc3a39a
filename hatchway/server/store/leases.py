"""Leases and claims on PostgreSQL: what runs once across the brokers, and who holds what.

Three small tables, created on first use (``CREATE TABLE IF NOT EXISTS``; they hold nothing a
backup needs: every row is rebuilt by the brokers within seconds of a start):

* ``hw_leases`` (name, holder, expires): a row with an expiry per lease. A broker holds a lease
  while its row names it and has not expired; it renews it well before then. Taking one is a
  single ``INSERT … ON CONFLICT … DO UPDATE … WHERE`` (the row is free, expired, or already
  ours), timed by the database's clock, so brokers' clocks need not agree. Every broker holds
  its own ``broker/<id>`` lease (its heartbeat); ``duties`` is held by one broker at a time.
* ``hw_claims`` (kind, key, broker_id): which broker holds a node's control channel
  (``node``) and a session's data-channel relay (``relay``). A claim is taken when the channel
  opens here and dropped, only if still ours, when it closes here.
* ``hw_messages``: bodies of broker-to-broker messages too large for a ``NOTIFY`` payload
  (hatchway.server.process.cluster), deleted after a minute.

SQLite is one broker: nothing here is used there.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

LEASES = "hw_leases"
CLAIMS = "hw_claims"
MESSAGES = "hw_messages"

_DDL = (
    f"CREATE TABLE IF NOT EXISTS {LEASES} (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires TIMESTAMPTZ NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {CLAIMS} (kind TEXT NOT NULL, key TEXT NOT NULL, "
    "broker_id TEXT NOT NULL, since TIMESTAMPTZ NOT NULL DEFAULT now(), "
    "PRIMARY KEY (kind, key))",
    f"CREATE TABLE IF NOT EXISTS {MESSAGES} (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, "
    "created TIMESTAMPTZ NOT NULL DEFAULT now())",
)

_TAKE = text(
    f"INSERT INTO {LEASES} (name, holder, expires) "
    "VALUES (:name, :holder, now() + make_interval(secs => :ttl)) "
    "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires "
    f"WHERE {LEASES}.holder = EXCLUDED.holder OR {LEASES}.expires < now() "
    "RETURNING holder"
)


class Leases:
    """Leases and claims of one broker (``broker_id``) on the database behind ``engine``."""

    def __init__(self, engine: Engine, broker_id: str) -> None:
        self.engine = engine
        self.broker_id = broker_id

    def create_tables(self) -> None:
        with self.engine.begin() as conn:
            # Brokers starting together must not race on the catalog.
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            for ddl in _DDL:
                conn.execute(text(ddl))

    # -- leases ---------------------------------------------------------------------------

    def take(self, name: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; False: another broker holds
        it and it has not expired."""
        with self.engine.begin() as conn:
            row = conn.execute(
                _TAKE, {"name": name, "holder": self.broker_id, "ttl": float(ttl)}
            ).first()
        return row is not None

    def release(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(f"DELETE FROM {LEASES} WHERE name = :name AND holder = :holder"),
                {"name": name, "holder": self.broker_id},
            )

    def holder(self, name: str) -> str | None:
        """Who holds ``name`` now (None: nobody, or it expired)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT holder FROM {LEASES} WHERE name = :name AND expires >= now()"),
                {"name": name},
            ).first()
        return None if row is None else str(row[0])

    def live_brokers(self) -> set[str]:
        """The brokers whose heartbeat lease (``broker/<id>``) has not expired."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT substr(name, 8) FROM {LEASES} "
                    "WHERE name LIKE 'broker/%' AND expires >= now()"
                )
            ).all()
        return {str(r[0]) for r in rows}

    def dead_brokers(self, older_than: float = 0.0) -> dict[str, float]:
        """Brokers whose heartbeat expired: id -> seconds since it expired (at least
        ``older_than``)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT substr(name, 8), extract(epoch FROM now() - expires) FROM {LEASES} "
                    "WHERE name LIKE 'broker/%' AND expires < now() - make_interval(secs => :s)"
                ),
                {"s": float(older_than)},
            ).all()
        return {str(r[0]): float(r[1]) for r in rows}

    def forget_broker(self, broker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(f"DELETE FROM {LEASES} WHERE name = :name AND expires < now()"),
                {"name": f"broker/{broker_id}"},
            )

    # -- claims ---------------------------------------------------------------------------

    def claim(self, kind: str, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {CLAIMS} (kind, key, broker_id) VALUES (:kind, :key, :me) "
                    "ON CONFLICT (kind, key) DO UPDATE SET broker_id = EXCLUDED.broker_id, "
                    "since = now()"
                ),
                {"kind": kind, "key": key, "me": self.broker_id},
            )

    def unclaim(self, kind: str, key: str, broker_id: str | None = None) -> None:
        """Drop the claim if ``broker_id`` (default: this broker) still holds it."""
        with self.engine.begin() as conn:
            conn.execute(
                text(f"DELETE FROM {CLAIMS} WHERE kind = :kind AND key = :key AND broker_id = :b"),
                {"kind": kind, "key": key, "b": broker_id or self.broker_id},
            )

    def unclaim_all(self) -> None:
        """This broker holds nothing any more (it stops)."""
        with self.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {CLAIMS} WHERE broker_id = :b"), {"b": self.broker_id})

    def claimant(self, kind: str, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT broker_id FROM {CLAIMS} WHERE kind = :kind AND key = :key"),
                {"kind": kind, "key": key},
            ).first()
        return None if row is None else str(row[0])

    def claims_of(self, broker_id: str, kind: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(f"SELECT key FROM {CLAIMS} WHERE kind = :kind AND broker_id = :b"),
                {"kind": kind, "b": broker_id},
            ).all()
        return [str(r[0]) for r in rows]

    # -- message bodies -------------------------------------------------------------------

    def put_message(self, body: str) -> int:
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    text(f"INSERT INTO {MESSAGES} (body) VALUES (:body) RETURNING id"),
                    {"body": body},
                ).scalar_one()
            )

    def get_message(self, message_id: int) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT body FROM {MESSAGES} WHERE id = :id"), {"id": message_id}
            ).first()
        return None if row is None else str(row[0])

    def prune_messages(self, older_than: float = 60.0) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(f"DELETE FROM {MESSAGES} WHERE created < now() - make_interval(secs => :s)"),
                {"s": float(older_than)},
            )
