"""wallets-py: the Rust read-model projection, written in Python.

One table `wallets` (one row per wallet) and one guarded upsert per `WalletCreated` event: the
row is only rewritten when the stored `version` (the stream version) is lower than the event's,
so replaying an event changes nothing. It targets the `projection` world of
wallex:projection@0.1.0 (wit/projection.wit). Build it with ../build.sh (see README.md): the
`wit_world` bindings it imports are generated at build time.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import (
    Column,
    ColumnType,
    ColumnValue,
    Event,
    Index,
    Mutation,
    Mutation_Upsert,
    ProjectionError,
    ProjectionInfo,
    Table,
    UpsertOp,
    Value_S64,
    Value_Text,
    Value_Decimal,
    Value_Timestamp,
)

WALLET_CREATED = "WalletCreated"


class WitWorld(wit_world.WitWorld):
    def describe(self) -> ProjectionInfo:
        return ProjectionInfo(
            name="wallets-py",
            schema_version=1,
            subscribes_to=[WALLET_CREATED],
            tables=[
                Table(
                    name="wallets",
                    columns=[
                        Column("id", ColumnType.TEXT, False),
                        Column("owner", ColumnType.TEXT, False),
                        Column("balance", ColumnType.DECIMAL, False),
                        Column("currency", ColumnType.TEXT, False),
                        Column("version", ColumnType.S64, False),
                        Column("created_at", ColumnType.TIMESTAMP, False),
                        Column("updated_at", ColumnType.TIMESTAMP, False),
                    ],
                    primary_key=["id"],
                    indexes=[Index("wallets_by_owner", ["owner"], False)],
                )
            ],
        )

    def handle(self, batch: list[Event]) -> list[Mutation]:
        # Raising Err(ProjectionError) returns the WIT `err` case: the batch is rejected.
        return [wallet_created(event) for event in batch]


def wallet_created(event: Event) -> Mutation:
    try:
        data = json.loads(event.data)
    except ValueError as e:
        raise error(event, str(e)) from None

    def text(field: str) -> str:
        value = data.get(field) if isinstance(data, dict) else None
        if not isinstance(value, str):
            raise error(event, f"{field} is missing or not a string")
        return value

    # Same order of checks as the Rust read-model, so the same field is named in the error.
    created_at = text("createdAt")
    values = [
        ColumnValue("id", Value_Text(text("walletId"))),
        ColumnValue("owner", Value_Text(text("ownerId"))),
        ColumnValue("balance", Value_Decimal(text("initialBalance"))),
        ColumnValue("currency", Value_Text(text("currency"))),
        ColumnValue("version", Value_S64(event.stream_version)),
        ColumnValue("created_at", Value_Timestamp(created_at)),
        ColumnValue("updated_at", Value_Timestamp(created_at)),
    ]
    return Mutation_Upsert(
        UpsertOp(
            table="wallets",
            values=values,
            accumulate=[],
            # A row at this version or later already includes this event.
            guard=["version"],
        )
    )


def error(event: Event, message: str) -> Err:
    return Err(
        ProjectionError(
            message=f"{event.event_type} {event.event_id}: {message}",
            global_position=event.global_position,
        )
    )
