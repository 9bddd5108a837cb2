"""Initial schema: messages, replies, delivery reports, opt-outs, nonces.

Revision ID: 0001
Revises: 
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('uuid', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('from_number', sa.String(length=32), nullable=False),
    sa.Column('to_number', sa.String(length=32), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('intent', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('compliance', sa.String(length=16), nullable=True),
    sa.Column('possible_optout', sa.Boolean(), nullable=False),
    sa.Column('held', sa.JSON(), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('answer_status', sa.Integer(), nullable=False),
    sa.Column('answer_type', sa.String(length=64), nullable=False),
    sa.Column('answer_body', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('uuid', name=op.f('uq_messages_uuid'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_from_number_received_at', ['from_number', 'received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_messages_received_at'), ['received_at'], unique=False)

    op.create_table('nonces',
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('message_uuid', sa.String(length=64), nullable=False),
    sa.Column('seen_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_nonces'))
    )
    with op.batch_alter_table('nonces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nonces_seen_at'), ['seen_at'], unique=False)

    op.create_table('optouts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('to_number', sa.String(length=32), nullable=False),
    sa.Column('since', sa.DateTime(), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_optouts')),
    sa.UniqueConstraint('number', 'to_number', name=op.f('uq_optouts_number_to_number'))
    )
    op.create_table('replies',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('rule', sa.Text(), nullable=True),
    sa.Column('src', sa.String(length=32), nullable=False),
    sa.Column('dst', sa.Text(), nullable=False),
    sa.Column('sender', sa.String(length=32), nullable=False),
    sa.Column('limited', sa.Boolean(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('via', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('status_key', sa.String(length=64), nullable=True),
    sa.Column('status_at', sa.DateTime(), nullable=True),
    sa.Column('plivo_uuid', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_replies_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replies')),
    sa.UniqueConstraint('message_id', 'position', name=op.f('uq_replies_message_id_position'))
    )
    with op.batch_alter_table('replies', schema=None) as batch_op:
        batch_op.create_index('ix_replies_plivo_uuid', ['plivo_uuid'], unique=False)
        batch_op.create_index('ix_replies_sender_created_at', ['sender', 'created_at'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('message_uuid', sa.String(length=64), nullable=False),
    sa.Column('parent_uuid', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sequence', sa.String(length=32), nullable=False),
    sa.Column('part', sa.String(length=32), nullable=False),
    sa.Column('error_code', sa.String(length=16), nullable=True),
    sa.Column('reply_id', sa.Integer(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['reply_id'], ['replies.id'], name=op.f('fk_reports_reply_id_replies'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
    sa.UniqueConstraint('message_uuid', 'status', 'sequence', 'part', name=op.f('uq_reports_message_uuid_status_sequence_part'))
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_reply_id'), ['reply_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_reply_id'))
        batch_op.drop_index(batch_op.f('ix_reports_received_at'))

    op.drop_table('reports')
    with op.batch_alter_table('replies', schema=None) as batch_op:
        batch_op.drop_index('ix_replies_sender_created_at')
        batch_op.drop_index('ix_replies_plivo_uuid')

    op.drop_table('replies')
    op.drop_table('optouts')
    with op.batch_alter_table('nonces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nonces_seen_at'))

    op.drop_table('nonces')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_received_at'))
        batch_op.drop_index('ix_messages_from_number_received_at')

    op.drop_table('messages')
