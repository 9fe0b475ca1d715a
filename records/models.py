"""SQLAlchemy models of the measurement log: one table per concept, constraints in the schema.

Table names carry a `tuner_` prefix so the log can live in a shared database. Rows never leave
the package: `records.store` turns them into frozen dataclasses. Any change to these tables,
including a new `ErrorKind` (the check constraint lists them), is a new SCHEMA_VERSION: a
database made by another version is refused with a message, never half-used.
"""

from __future__ import annotations

from sqlalchemy import (CheckConstraint, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tuner.measure.result import ErrorKind

SCHEMA_VERSION = 3  # stored in tuner_meta under "schema_version"
# what opening a log of an older version adds to it (tables only: nothing existing changes)
UPGRADES = {1: "tuner_claims: schedules being measured, so that processes sharing the log "
               "measure disjoint schedules",
            2: "tuner_record_machines: the cluster worker that measured a record"}
ERROR_KINDS = tuple(k.value for k in ErrorKind)


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "tuner_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class TaskRow(Base):
    __tablename__ = "tuner_tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True, nullable=False)
    op: Mapped[str] = mapped_column(String(64), nullable=False)
    shape_json: Mapped[str] = mapped_column(Text, nullable=False)  # [int, ...]
    attrs_json: Mapped[str] = mapped_column(Text, nullable=False)  # {name: int or bool}
    dtype: Mapped[str] = mapped_column(String(16), nullable=False)


class TargetRow(Base):
    __tablename__ = "tuner_targets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True, nullable=False)
    triple: Mapped[str] = mapped_column(String(128), nullable=False)
    cpu: Mapped[str] = mapped_column(String(128), nullable=False)
    features: Mapped[str] = mapped_column(Text, nullable=False)
    threads: Mapped[int] = mapped_column(Integer, CheckConstraint("threads >= 1"),
                                         nullable=False)


class RecordRow(Base):
    __tablename__ = "tuner_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tuner_tasks.id"), nullable=False)
    target_id: Mapped[int] = mapped_column(ForeignKey("tuner_targets.id"), nullable=False)
    trial: Mapped[int] = mapped_column(Integer, nullable=False)
    schedule_json: Mapped[str] = mapped_column(Text, nullable=False)
    schedule_hash: Mapped[str] = mapped_column(String(40), nullable=False)
    error_kind: Mapped[str] = mapped_column(String(32), nullable=False)
    error_detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    costs_json: Mapped[str] = mapped_column(Text, nullable=False)  # [seconds per call, ...]
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    # median and min are columns (derived from costs) so that SQL can rank; NULL on failure
    median_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    compile_s: Mapped[float] = mapped_column(Float, nullable=False)
    flops: Mapped[float] = mapped_column(Float, nullable=False)
    # derived from flops and median_s, kept for ad-hoc SQL over the log; 0 on failure
    gflops: Mapped[float] = mapped_column(Float, nullable=False)
    predicted: Mapped[float | None] = mapped_column(Float, nullable=True)
    strategy: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tuner_version: Mapped[str] = mapped_column(String(32), nullable=False)
    timestamp: Mapped[float] = mapped_column(Float, nullable=False)

    __table_args__ = (
        CheckConstraint("error_kind IN (%s)" % ", ".join(f"'{k}'" for k in ERROR_KINDS),
                        name="ck_tuner_records_error_kind"),
        CheckConstraint("(error_kind = 'none') = (median_s IS NOT NULL)",
                        name="ck_tuner_records_timed_iff_ok"),
        Index("ix_tuner_records_task_target", "task_id", "target_id", "trial"),
        Index("ix_tuner_records_schedule", "task_id", "target_id", "schedule_hash"),
    )


class ClaimRow(Base):
    """A schedule some process is measuring now (records/claims.py): at most one claim per
    schedule of a (task, target) pair; it lapses at `expires` or when its owner is gone."""
    __tablename__ = "tuner_claims"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tuner_tasks.id"), nullable=False)
    target_id: Mapped[int] = mapped_column(ForeignKey("tuner_targets.id"), nullable=False)
    schedule_hash: Mapped[str] = mapped_column(String(40), nullable=False)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    expires: Mapped[float] = mapped_column(Float, nullable=False)  # seconds since the epoch

    __table_args__ = (
        UniqueConstraint("task_id", "target_id", "schedule_hash", name="uq_tuner_claims"),
    )


class MachineRow(Base):
    """The cluster worker (`tune worker --name`) that measured a record; records measured by
    the tuner's own processes have no row."""
    __tablename__ = "tuner_record_machines"
    record_id: Mapped[int] = mapped_column(ForeignKey("tuner_records.id"), primary_key=True)
    machine: Mapped[str] = mapped_column(String(128), nullable=False)
