"""The outbox and the Message API's shared request schedule.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.Column('position', sa.Integer(), nullable=True),
    sa.Column('rule', sa.Text(), nullable=True),
    sa.Column('src', sa.String(length=32), nullable=True),
    sa.Column('dst', sa.Text(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('media', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('due_at', sa.DateTime(), nullable=False),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('attempted_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('message_uuid', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_outbox_message_id_messages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        open_messages = sa.text("kind = 'message' AND status IN ('pending', 'sending', 'unknown')")
        batch_op.create_index('ix_outbox_open_dst_src', ['dst', 'src', 'id'], unique=False,
                              sqlite_where=open_messages, postgresql_where=open_messages)
        batch_op.create_index('ix_outbox_message_uuid', ['message_uuid'], unique=False,
                              sqlite_where=sa.text('message_uuid IS NOT NULL'),
                              postgresql_where=sa.text('message_uuid IS NOT NULL'))
        batch_op.create_index('ix_outbox_status_due_at', ['status', 'due_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_message_id'), ['message_id'], unique=False)

    op.create_table('api_slots',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('next_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_api_slots'))
    )


def downgrade() -> None:
    op.drop_table('api_slots')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_message_id'))
        batch_op.drop_index('ix_outbox_status_due_at')
        batch_op.drop_index('ix_outbox_message_uuid')
        batch_op.drop_index('ix_outbox_open_dst_src')

    op.drop_table('outbox')
