"""Replay protection kept for REPLAY_DAYS: table `seen` replaces `nonces`.

Each used signature nonce is kept with a digest of the request it came with (a reused
nonce is accepted only for the very same request), and each inbound MessageUUID is kept
too, so a message pruned after RETENTION_DAYS is still never decided again. Keys are 16
bytes of SHA-256 (`app.store.seen_key`), days are UTC days since 1970-01-01.

Carried over: every recorded message's MessageUUID, and every nonce `nonces` kept as it
came (not those it kept only as a hash, "sha256:...": their key cannot be made again),
without a digest (such a nonce is refused if it ever comes again). The keys are made by
the very function the service uses (SQLite: as a SQL function; PostgreSQL: its SHA-256,
the same bytes), in one statement per table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from app.store import seen_key

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('seen',
    sa.Column('key', sa.LargeBinary(), nullable=False),
    sa.Column('digest', sa.LargeBinary(), nullable=True),
    sa.Column('day', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_seen')),
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('seen', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_seen_day'), ['day'], unique=False)

    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        def key(kind, column):
            return f"substring(sha256(convert_to('{kind}:' || {column}, 'UTF8')) from 1 for 16)"

        def day(column):
            return f"({column}::date - DATE '1970-01-01')"
    else:
        bind.connection.driver_connection.create_function(
            'responder_seen_key', 2, lambda kind, value: seen_key(kind, value), deterministic=True)

        def key(kind, column):
            return f"responder_seen_key('{kind}', {column})"

        def day(column):  # the stored text's date: its Julian day number is x.5
            return f"CAST(julianday(substr({column}, 1, 10)) - 2440587.5 AS INTEGER)"
    op.execute(f"INSERT INTO seen (key, digest, day) SELECT {key('uuid', 'uuid')}, NULL, {day('received_at')} "
               "FROM messages")
    op.execute(f"INSERT INTO seen (key, digest, day) SELECT {key('nonce', 'nonce')}, NULL, {day('seen_at')} "
               "FROM nonces WHERE nonce NOT LIKE 'sha256:%' ON CONFLICT (key) DO NOTHING")

    with op.batch_alter_table('nonces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nonces_seen_at'))
    op.drop_table('nonces')


def downgrade() -> None:
    # The nonces cannot be had back from their hashes: `nonces` starts empty again.
    op.create_table('nonces',
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('message_uuid', sa.String(length=64), nullable=False),
    sa.Column('seen_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_nonces'))
    )
    with op.batch_alter_table('nonces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nonces_seen_at'), ['seen_at'], unique=False)

    with op.batch_alter_table('seen', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_seen_day'))
    op.drop_table('seen')
