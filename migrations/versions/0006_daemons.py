"""daemons: each `syncd run` and when it starts its next run

`status` and the status page show the next scheduled run from any process. The table starts
empty: a daemon adds its row when it starts (after upgrading, restart the daemons).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 03:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import syncd.state.tables


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('daemon',
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', syncd.state.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('next_run_at', syncd.state.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('seen_at', syncd.state.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('holder')
    )


def downgrade() -> None:
    op.drop_table('daemon')
