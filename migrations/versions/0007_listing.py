"""listing: a destination's listing of its users, and ids known to be missing there

The `listing` table keeps how many users a destination's listing (User.com's GET users/)
last counted and where a listing cut short goes on. `remote_id.remote_id` may now be NULL: a
user a complete listing did not find, so the next runs do not list again for it. Existing
rows keep their ids; nothing else changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 02:07:01.030717
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import syncd.state.tables


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('listing',
    sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('users', sa.Integer(), nullable=True),
    sa.Column('listed', sa.Integer(), nullable=False),
    sa.Column('cursor', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('started_at', syncd.state.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', syncd.state.tables.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('destination')
    )
    with op.batch_alter_table('remote_id', schema=None) as batch_op:
        batch_op.alter_column('remote_id', existing_type=sa.BigInteger(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM remote_id WHERE remote_id IS NULL")
    with op.batch_alter_table('remote_id', schema=None) as batch_op:
        batch_op.alter_column('remote_id', existing_type=sa.BigInteger(), nullable=False)
    op.drop_table('listing')
