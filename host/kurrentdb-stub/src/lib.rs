//! An in-memory server of the part of KurrentDB's gRPC protocol that the official Rust client
//! (`kurrentdb` 1.2) uses to append to and read streams, with KurrentDB's semantics.
//!
//! It exists because no KurrentDB server can be installed where wallex's tests and benchmarks
//! run: the tests start a [`StubServer`] in-process (as a library) and point the real client at
//! [`StubServer::connection_string`]; the benchmarks run the `wallex-kurrentdb-stub` binary. It
//! keeps everything in memory and forgets it when the process ends: it is **not durable** and is
//! for tests and benchmarks only.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let address = std::net::SocketAddr::from(([127, 0, 0, 1], 0)); // port 0: any free port
//! let mut server = wallex_kurrentdb_stub::StubServer::start(address).await?;
//! let connection_string = server.connection_string(); // kurrentdb://127.0.0.1:PORT?tls=false
//! // … use the `kurrentdb` client against it …
//! server.stop().await; // the client now sees the server as down
//! server.restart().await?; // same address, same events
//! # Ok(())
//! # }
//! ```
//!
//! # What it implements and what not
//!
//! Implemented, as KurrentDB answers them (service `event_store.client.streams.Streams`):
//!
//! - `Append`: expected stream state (`any`, `no_stream`, `stream_exists`, a revision) and
//!   KurrentDB's idempotency by event id (an append whose ids are already where it expects them
//!   succeeds without writing, with the original revision and position; a partial match is a
//!   wrong expected version); the 1 MiB maximum append size ([`MAX_APPEND_SIZE`]); the required
//!   `type` and `content-type` metadata. An append of zero events checks the expected state like
//!   any other, writes no event and answers the stream's current revision (or `no_stream`) with
//!   the position of the empty record KurrentDB writes for it.
//! - `Read` of a stream (forwards or backwards, from a revision, the start or the end, with a
//!   count) and of `$all` (forwards or backwards, from a position, the start or the end, with a
//!   count, optionally filtered by stream-name or event-type prefixes). A stream that does not
//!   exist is answered with `stream_not_found`. Reading `$all` forwards from a position includes
//!   the event at that position (events at `>= position`); backwards it excludes it (events at
//!   `< position`), as in KurrentDB.
//! - Positions in `$all` model KurrentDB's log positions: each event's commit and prepare
//!   positions are equal, are the byte offset of its record in a simulated log (the previous
//!   record's position plus its size), strictly increase, and are never 0. An append answers the
//!   position of its last event. Events read from a stream carry their positions too, as
//!   KurrentDB's do, and every read event carries `type`, `content-type` and `created` (100 ns
//!   ticks since the Unix epoch) metadata.
//!
//! Known differences from KurrentDB, besides what is not implemented: `$all` holds no system
//! events; positions are not KurrentDB's actual byte offsets (only their properties are kept); a
//! `$all` read from a position that is not an event's starts at the next event (KurrentDB may
//! answer "invalid position"); idempotency with `any`/`stream_exists` looks at the whole stream
//! (KurrentDB only at a bounded cache of recent event ids, so a very old repeat may be appended
//! again there); a stream read never sends `first_stream_position` (only `last_stream_position`,
//! when asked with `compatibility` ≥ 1); requests KurrentDB fails with an internal error (no
//! options, a nil event id, an empty event type) are answered `INVALID_ARGUMENT`.
//!
//! Not implemented: subscriptions (`Read` with `subscription`, answered `UNIMPLEMENTED`), regular
//! expression filters other than the client's `exclude_system_events()` (`UNIMPLEMENTED`),
//! `Delete`, `Tombstone` and `BatchAppend` (`UNIMPLEMENTED`), every other KurrentDB service
//! (`ServerFeatures`, persistent subscriptions, projections, operations, users, gossip: tonic
//! answers `UNIMPLEMENTED` for an unknown service; for `ServerFeatures.GetSupportedMethods`,
//! which the client calls when it connects, that makes the client use its defaults — no batch
//! append, unknown server version), links (`resolve_links` is accepted and has no effect,
//! there are no links), stream metadata and system streams (`$`-prefixed names are ordinary
//! streams here, and `$all` holds only what clients appended), authentication and ACLs (every
//! call is allowed), TLS (connect with `tls=false`), clustering (the stub is a single leader).
//!
//! # Layout
//!
//! - [`StubServer`] (`server.rs`): binds the listener, serves tonic on it, and tracks the accepted
//!   connections so that [`StubServer::stop`] can close them at once; [`StubServer::restart`]
//!   serves the same store again.
//! - `service.rs`: the gRPC `Streams` service — decodes and validates requests, maps them onto the
//!   store, and encodes answers (and errors as KurrentDB's statuses).
//! - `store.rs`: the in-memory store (one mutex): streams by name, the `$all` log in order, the
//!   append rules (expected state, idempotency) and paged reads; [`StoredEvent`] is what it keeps.
//! - `proto`: code generated by `build.rs` from `proto/*.proto` (copied unchanged from the
//!   client crate).
//! - `main.rs`: the `wallex-kurrentdb-stub` binary.

#![deny(missing_docs)]

// The generated code names `tonic::` and `prost::`; this crate depends on them under other names
// (one of each is built, at the versions the `kurrentdb` client uses, beside wallex's prost 0.14).
extern crate prost_kdb as prost;
extern crate tonic_kdb as tonic;

mod server;
mod service;
mod store;

pub use server::{StubOptions, StubServer};
pub use store::StoredEvent;

/// Largest total size of the events of one append, in bytes, as KurrentDB counts it (data + custom
/// metadata + twice the UTF-16 length of the event type). KurrentDB's default `MaxAppendSize`; a
/// bigger append is refused with `INVALID_ARGUMENT` and `exception: maximum-append-size-exceeded`,
/// as KurrentDB does.
pub const MAX_APPEND_SIZE: usize = 1024 * 1024;

/// Largest gRPC message the stub decodes, in bytes (one `AppendReq` message carries one event).
/// KurrentDB accepts messages up to its maximum log record size (16 MiB); a message above
/// [`MAX_APPEND_SIZE`] but below this is refused by the append-size rule rather than by the
/// transport, as KurrentDB refuses it.
pub const MAX_GRPC_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Code generated by `build.rs` from `proto/`.
#[allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::nursery
)]
mod proto {
    pub mod event_store {
        pub mod client {
            include!(concat!(env!("OUT_DIR"), "/event_store.client.rs"));
            pub mod streams {
                include!(concat!(env!("OUT_DIR"), "/event_store.client.streams.rs"));
            }
        }
    }
    pub mod google {
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
        pub mod protobuf {
            include!(concat!(env!("OUT_DIR"), "/google.protobuf.rs"));
        }
    }
}
