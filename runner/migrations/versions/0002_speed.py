"""Speed measurements as their own table (any number per run); old FPS metrics copied into it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'speed',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('device_type', sa.String(length=16), nullable=False),
        sa.Column('device', sa.String(length=200), nullable=False),
        sa.Column('dtype', sa.String(length=32), nullable=False),
        sa.Column('backend', sa.String(length=32), nullable=False),
        sa.Column('fps', sa.Float(), nullable=False),
        sa.Column('fps_min', sa.Float(), nullable=False),
        sa.Column('fps_max', sa.Float(), nullable=False),
        sa.Column('latency_ms', sa.JSON(), nullable=False),
        sa.Column('repeats', sa.Integer(), nullable=False),
        sa.Column('images', sa.Integer(), nullable=False),
        sa.Column('warmup', sa.Integer(), nullable=False),
        sa.Column('threads', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=200), nullable=False),
        sa.Column('packages', sa.JSON(), nullable=False),
        sa.Column('concurrent', sa.JSON(), nullable=False),
        sa.Column('source', sa.String(length=32), nullable=False),
        sa.Column('extra', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_speed_run_device', 'speed', ['run_id', 'device_type', 'dtype', 'backend'])
    # Schema 0001 kept one FPS per run in ``metrics`` (one repeat, no spread): carry it over, marked
    # as such, so old databases keep their figures.
    op.execute(sa.text(
        "INSERT INTO speed (run_id, device_type, device, dtype, backend, fps, fps_min, fps_max, latency_ms, "
        "repeats, images, warmup, threads, host, packages, concurrent, source, extra, created_at) "
        "SELECT m.run_id, CASE WHEN m.fps_device LIKE 'cpu%' OR r.device = 'cpu' THEN 'cpu' ELSE 'cuda' END, "
        "COALESCE(m.fps_device, 'unknown'), COALESCE(m.fps_dtype, 'float32'), 'eager', m.fps, m.fps, m.fps, "
        "'{}', 1, 0, 0, 0, '', '{}', '[]', 'schema-0001', '{}', COALESCE(r.finished_at, r.created_at) "
        "FROM metrics m JOIN runs r ON r.id = m.run_id WHERE m.fps IS NOT NULL"))


def downgrade() -> None:
    op.drop_index('ix_speed_run_device', table_name='speed')
    op.drop_table('speed')
