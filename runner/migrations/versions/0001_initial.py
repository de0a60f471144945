"""Initial schema: grids, grid rows, runs, metrics, per-step training records, artifacts.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'grids',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('path', sa.String(length=1000), nullable=True),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('axes', sa.JSON(), nullable=False),
        sa.Column('seeds', sa.JSON(), nullable=False),
        sa.Column('stages', sa.String(length=100), nullable=False),
        sa.Column('reference', sa.String(length=500), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name')
    )
    op.create_table(
        'grid_rows',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('grid_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=500), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('overrides', sa.JSON(), nullable=False),
        sa.Column('variant_hash', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('grid_id', 'name', name='uq_grid_rows_grid_name')
    )
    op.create_index('ix_grid_rows_grid_id', 'grid_rows', ['grid_id'])
    op.create_index('ix_grid_rows_variant_hash', 'grid_rows', ['variant_hash'])
    op.create_table(
        'runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('grid_id', sa.Integer(), nullable=False),
        sa.Column('row_name', sa.String(length=500), nullable=False),
        sa.Column('overrides', sa.JSON(), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('config_hash', sa.String(length=16), nullable=False),
        sa.Column('variant_hash', sa.String(length=16), nullable=False),
        sa.Column('seed', sa.Integer(), nullable=False),
        sa.Column('stages', sa.String(length=100), nullable=False),
        sa.Column('stage_options', sa.JSON(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.Column('gpus', sa.Integer(), nullable=False),
        sa.Column('run_key', sa.String(length=32), nullable=False),
        sa.Column('generation', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('max_attempts', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=200), nullable=True),
        sa.Column('claim_token', sa.String(length=32), nullable=True),
        sa.Column('device', sa.String(length=200), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('git_commit', sa.String(length=64), nullable=True),
        sa.Column('packages', sa.JSON(), nullable=True),
        sa.Column('run_dir', sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_key', 'generation', name='uq_runs_key_generation')
    )
    op.create_index('ix_runs_claim', 'runs', ['status', 'priority', 'id'])
    op.create_index('ix_runs_config_hash', 'runs', ['config_hash'])
    op.create_index('ix_runs_grid_id', 'runs', ['grid_id'])
    op.create_index('ix_runs_variant', 'runs', ['variant_hash', 'seed'])
    op.create_table(
        'artifacts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=50), nullable=False),
        sa.Column('path', sa.String(length=1000), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_artifacts_run_id', 'artifacts', ['run_id'])
    op.create_table(
        'metrics',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('AP', sa.Float(), nullable=True),
        sa.Column('AP50', sa.Float(), nullable=True),
        sa.Column('AP75', sa.Float(), nullable=True),
        sa.Column('AP_S', sa.Float(), nullable=True),
        sa.Column('AP_M', sa.Float(), nullable=True),
        sa.Column('AP_L', sa.Float(), nullable=True),
        sa.Column('AR100', sa.Float(), nullable=True),
        sa.Column('params', sa.BigInteger(), nullable=True),
        sa.Column('gflops', sa.Float(), nullable=True),
        sa.Column('fps', sa.Float(), nullable=True),
        sa.Column('fps_device', sa.String(length=200), nullable=True),
        sa.Column('fps_dtype', sa.String(length=32), nullable=True),
        sa.Column('extra', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id')
    )
    op.create_table(
        'train_records',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('time', sa.Float(), nullable=True),
        sa.Column('lr', sa.Float(), nullable=True),
        sa.Column('loss', sa.Float(), nullable=True),
        sa.Column('losses', sa.JSON(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_train_records_run_step', 'train_records', ['run_id', 'step'])


def downgrade() -> None:
    op.drop_index('ix_train_records_run_step', table_name='train_records')
    op.drop_table('train_records')
    op.drop_table('metrics')
    op.drop_index('ix_artifacts_run_id', table_name='artifacts')
    op.drop_table('artifacts')
    op.drop_index('ix_runs_variant', table_name='runs')
    op.drop_index('ix_runs_grid_id', table_name='runs')
    op.drop_index('ix_runs_config_hash', table_name='runs')
    op.drop_index('ix_runs_claim', table_name='runs')
    op.drop_table('runs')
    op.drop_index('ix_grid_rows_variant_hash', table_name='grid_rows')
    op.drop_index('ix_grid_rows_grid_id', table_name='grid_rows')
    op.drop_table('grid_rows')
    op.drop_table('grids')
