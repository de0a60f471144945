"""The measurement phase: a ``measure_jobs`` queue and the host each run's job runs on.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('host', sa.String(length=200), nullable=True))
    op.create_index('ix_runs_host', 'runs', ['host', 'status'])
    op.create_table(
        'measure_jobs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('device_type', sa.String(length=16), nullable=False),
        sa.Column('dtype', sa.String(length=32), nullable=False),
        sa.Column('backend', sa.String(length=32), nullable=False),
        sa.Column('images', sa.Integer(), nullable=False),
        sa.Column('warmup', sa.Integer(), nullable=False),
        sa.Column('repeats', sa.Integer(), nullable=False),
        sa.Column('weights', sa.String(length=1000), nullable=True),
        sa.Column('source', sa.String(length=32), nullable=False),
        sa.Column('owner', sa.String(length=200), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('max_attempts', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=200), nullable=True),
        sa.Column('host', sa.String(length=200), nullable=True),
        sa.Column('claim_token', sa.String(length=32), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('speed_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['speed_id'], ['speed.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_measure_jobs_claim', 'measure_jobs', ['status', 'priority', 'id'])
    op.create_index('ix_measure_jobs_host', 'measure_jobs', ['host', 'status'])
    op.create_index('ix_measure_jobs_run_id', 'measure_jobs', ['run_id'])


def downgrade() -> None:
    op.drop_table('measure_jobs')
    op.drop_index('ix_runs_host', table_name='runs')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('host')
