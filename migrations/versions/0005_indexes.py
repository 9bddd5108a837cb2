"""A reply's numbers kept as a list (JSON), no longer joined by '<' and parsed back; and
indexes that cost every message but serve nobody, gone: the reply limit counts through the
messages' (from_number, received_at) index, so replies' (sender, created_at) goes; Plivo's uuid
of a reply is unknown when the reply is written, so its index keeps only the rows that have one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import json

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE replies ALTER COLUMN dst TYPE JSON USING to_json(string_to_array(dst, '<'))")
    else:
        bind = op.get_bind()
        # One number (nearly every reply): SQLite's json_array; several (a forward), split here.
        op.execute("UPDATE replies SET dst = json_array(dst) WHERE instr(dst, '<') = 0")
        several = bind.exec_driver_sql("SELECT id, dst FROM replies WHERE instr(dst, '<') > 0").all()
        for id_, dst in several:
            bind.exec_driver_sql("UPDATE replies SET dst = ? WHERE id = ?", (json.dumps(dst.split("<")), id_))
        with op.batch_alter_table('replies', schema=None) as batch_op:
            batch_op.alter_column('dst', existing_type=sa.Text(), type_=sa.JSON(), existing_nullable=False)
    op.drop_index('ix_replies_sender_created_at', table_name='replies')
    op.drop_index('ix_replies_plivo_uuid', table_name='replies')
    op.create_index('ix_replies_plivo_uuid', 'replies', ['plivo_uuid'], unique=False,
                    sqlite_where=sa.text('plivo_uuid IS NOT NULL'),
                    postgresql_where=sa.text('plivo_uuid IS NOT NULL'))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE replies ALTER COLUMN dst TYPE TEXT USING array_to_string(ARRAY(SELECT json_array_elements_text(dst)), '<')")
    else:
        bind = op.get_bind()
        for id_, dst in bind.exec_driver_sql("SELECT id, dst FROM replies").all():
            bind.exec_driver_sql("UPDATE replies SET dst = ? WHERE id = ?", ("<".join(json.loads(dst)), id_))
        with op.batch_alter_table('replies', schema=None) as batch_op:
            batch_op.alter_column('dst', existing_type=sa.JSON(), type_=sa.Text(), existing_nullable=False)
    op.drop_index('ix_replies_plivo_uuid', table_name='replies')
    op.create_index('ix_replies_plivo_uuid', 'replies', ['plivo_uuid'], unique=False)
    op.create_index('ix_replies_sender_created_at', 'replies', ['sender', 'created_at'], unique=False)
