"""Indexes that cost every message but serve nobody, gone: the reply limit counts through the
messages' (from_number, received_at) index, so replies' (sender, created_at) goes; Plivo's uuid
of a reply is unknown when the reply is written, so its index keeps only the rows that have one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_replies_sender_created_at', table_name='replies')
    op.drop_index('ix_replies_plivo_uuid', table_name='replies')
    op.create_index('ix_replies_plivo_uuid', 'replies', ['plivo_uuid'], unique=False,
                    sqlite_where=sa.text('plivo_uuid IS NOT NULL'),
                    postgresql_where=sa.text('plivo_uuid IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_replies_plivo_uuid', table_name='replies')
    op.create_index('ix_replies_plivo_uuid', 'replies', ['plivo_uuid'], unique=False)
    op.create_index('ix_replies_sender_created_at', 'replies', ['sender', 'created_at'], unique=False)
