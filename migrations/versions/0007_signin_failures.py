"""Failed sign-ins to the operator page, shared by every worker and host for the limits of §11.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signin_failures',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signin_failures')),
    )
    op.create_index('ix_signin_failures_name_at', 'signin_failures', ['name', 'at'], unique=False)
    op.create_index('ix_signin_failures_address_at', 'signin_failures', ['address', 'at'], unique=False)
    op.create_index('ix_signin_failures_at', 'signin_failures', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_signin_failures_at', table_name='signin_failures')
    op.drop_index('ix_signin_failures_address_at', table_name='signin_failures')
    op.drop_index('ix_signin_failures_name_at', table_name='signin_failures')
    op.drop_table('signin_failures')
