"""Seeds a grid's seed policy added to rows whose comparison with the baseline was undecided.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'added_seeds',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('grid_id', sa.Integer(), nullable=False),
        sa.Column('row_name', sa.String(length=500), nullable=False),
        sa.Column('seed', sa.Integer(), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('grid_id', 'row_name', 'seed', name='uq_added_seeds_grid_row_seed'),
    )
    op.create_index('ix_added_seeds_grid_id', 'added_seeds', ['grid_id'])


def downgrade() -> None:
    op.drop_index('ix_added_seeds_grid_id', table_name='added_seeds')
    op.drop_table('added_seeds')
