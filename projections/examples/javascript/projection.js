// wallets-js: the Rust read-model projection, written in JavaScript.
//
// One table `wallets` (one row per wallet) and one guarded upsert per `WalletCreated` event: the
// row is only rewritten when the stored `version` (the stream version) is lower than the event's,
// so replaying an event changes nothing. It targets the `projection` world of
// wallex:projection@0.1.0 (wit/projection.wit). Build it with ../build.sh (see README.md).
//
// WIT to JavaScript (jco / componentize-js): records are objects with camelCase fields, enums
// are strings, variants are `{ tag, val }`, s64 is a BigInt, and a `result` export returns its
// `ok` value or throws its `err` value.

const WALLET_CREATED = "WalletCreated";

const column = (name, type, nullable) => ({ name, type, nullable });

export function describe() {
  return {
    name: "wallets-js",
    schemaVersion: 1,
    subscribesTo: [WALLET_CREATED],
    tables: [
      {
        name: "wallets",
        columns: [
          column("id", "text", false),
          column("owner", "text", false),
          column("balance", "decimal", false),
          column("currency", "text", false),
          column("version", "s64", false),
          column("created_at", "timestamp", false),
          column("updated_at", "timestamp", false),
        ],
        primaryKey: ["id"],
        indexes: [{ name: "wallets_by_owner", columns: ["owner"], unique: false }],
      },
    ],
  };
}

export function handle(batch) {
  // Throwing a projection-error returns the WIT `err` case: the batch is rejected.
  return batch.map(walletCreated);
}

function walletCreated(event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch (e) {
    throw error(event, e.message);
  }
  const text = (field) => {
    const value = data !== null && typeof data === "object" && !Array.isArray(data)
      ? data[field]
      : undefined;
    if (typeof value !== "string") {
      throw error(event, `${field} is missing or not a string`);
    }
    return value;
  };
  // Same order of checks as the Rust read-model, so the same field is named in the error.
  const createdAt = text("createdAt");
  const value = (column, tag, val) => ({ column, value: { tag, val } });
  return {
    tag: "upsert",
    val: {
      table: "wallets",
      values: [
        value("id", "text", text("walletId")),
        value("owner", "text", text("ownerId")),
        value("balance", "decimal", text("initialBalance")),
        value("currency", "text", text("currency")),
        value("version", "s64", event.streamVersion),
        value("created_at", "timestamp", createdAt),
        value("updated_at", "timestamp", createdAt),
      ],
      accumulate: [],
      // A row at this version or later already includes this event.
      guard: ["version"],
    },
  };
}

function error(event, message) {
  return {
    message: `${event.eventType} ${event.eventId}: ${message}`,
    globalPosition: event.globalPosition,
  };
}
