"""identity: ledger rows per destination-side identifier (ident), and a nonce per row

Nat keys contacts by email: its ledger rows become per (subject, email). Existing rows get
ident "" here (the migration does not know which destinations key by email); the first
process that opens the state with its config gives the rows of such destinations their
email (syncd.ledger.adopt_idents). Existing rows get nonce "": their messageIds keep the
material they had, so a change pending across the upgrade is re-sent with the same id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 20:40:00.000000
"""
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
import sqlmodel
from alembic import op
from alembic.operations import BatchOperations

import syncd.state.tables


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with _quiet(), op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ident', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        _drop_primary_key(batch_op)
        batch_op.create_primary_key('ledger_pkey', ['audience_key', 'destination', 'ident', 'subject'])


@contextmanager
def _quiet() -> Iterator[None]:
    # SQLite's batch rebuild warns that the copied table's key differs from the new one:
    # that is the point of the rebuild.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Table .* specifies columns', sa.exc.SAWarning)
        yield


def _drop_primary_key(batch_op: BatchOperations) -> None:
    # SQLite's key has no name: the batch rebuild of the table replaces it with the new one.
    if op.get_bind().dialect.name != 'sqlite':
        batch_op.drop_constraint('ledger_pkey', type_='primary')


def downgrade() -> None:
    # One row per subject again: the rows of other emails go (what they hold is forgotten).
    op.execute("DELETE FROM ledger WHERE EXISTS (SELECT 1 FROM ledger o WHERE "
               "o.audience_key = ledger.audience_key AND o.destination = ledger.destination AND "
               "o.subject = ledger.subject AND o.ident > ledger.ident)")
    with _quiet(), op.batch_alter_table('ledger', schema=None) as batch_op:
        _drop_primary_key(batch_op)
        batch_op.create_primary_key('ledger_pkey', ['audience_key', 'destination', 'subject'])
        batch_op.drop_column('nonce')
        batch_op.drop_column('ident')
