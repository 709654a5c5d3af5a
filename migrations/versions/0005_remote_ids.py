"""remote ids: a destination's own id per user, learned from its answers (User.com)

Users whose User.com id is known can go in mass updates. The table starts empty: ids are
learned from the next answers of users/update_or_create/, so an upgraded state syncs on
one call per user until then.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 22:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import syncd.state.tables


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('remote_id',
    sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('remote_id', sa.BigInteger(), nullable=False),
    sa.Column('learned_at', syncd.state.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('destination', 'subject')
    )


def downgrade() -> None:
    op.drop_table('remote_id')
