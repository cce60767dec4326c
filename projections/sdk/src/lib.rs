//! Write wallex projections in Rust: typed events in, typed mutations out, no wit-bindgen.
//!
//! A projection is a WebAssembly component that the wallex host loads and feeds batches of
//! events; it answers with mutations of tables it declares itself (never SQL). This crate hides
//! the component-model bindings: implement [`Projection`] on a type of your own and call
//! [`export!`] once. The contract itself (limits, validation, replay rules) is described in
//! `wit/README.md` of the wallex repository.
//!
//! # Example
//!
//! A projection of wallets by currency that also says which rows each wallet stream owns, so
//! that the host can repair one wallet's rows (the 0.2.0 world):
//!
//! ```no_run
//! use wallex_projection_sdk::ColumnType::*;
//! use wallex_projection_sdk::{
//!     DomainEvent, Event, Mutation, Projection, ProjectionInfo, Result, StreamOwner, Table,
//!     Upsert, WalletCreated,
//! };
//!
//! struct Currencies;
//!
//! impl Projection for Currencies {
//!     fn describe() -> ProjectionInfo {
//!         ProjectionInfo::new("currencies", 1)
//!             .subscribe(WalletCreated::TYPE)
//!             .table(
//!                 Table::new("wallet_currencies")
//!                     .column("wallet_id", Text)
//!                     .column("currency", Text)
//!                     .column("opening_balance", Decimal)
//!                     .column("version", S64)
//!                     .nullable_column("correlation_id", Text)
//!                     .primary_key(["wallet_id"])
//!                     .index("wallet_currencies_by_currency", ["currency"]),
//!             )
//!     }
//!
//!     fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>> {
//!         let mut mutations = Vec::new();
//!         for event in &batch {
//!             // `?` keeps the event's position: the host learns which event failed.
//!             let DomainEvent::WalletCreated(wallet) = event.decode()? else {
//!                 continue; // not subscribed: never delivered
//!             };
//!             let metadata = event.decode_metadata()?;
//!             mutations.push(
//!                 Upsert::into("wallet_currencies")
//!                     .set("wallet_id", wallet.wallet_id()?)
//!                     .set("currency", wallet.currency()?)
//!                     .set("opening_balance", wallet.initial_balance()?)
//!                     .set("version", event.stream_version)
//!                     .set("correlation_id", metadata.correlation_id())
//!                     // A row at this stream version or later already has this event.
//!                     .guard(["version"])
//!                     .into(),
//!             );
//!         }
//!         Ok(mutations)
//!     }
//!
//!     fn stream_owners() -> Vec<StreamOwner> {
//!         vec![StreamOwner::new("wallet_currencies", "wallet_id", "wallet-")]
//!     }
//! }
//!
//! wallex_projection_sdk::export!(Currencies, world = "0.2.0");
//! ```
//!
//! Its `Cargo.toml` needs nothing but this crate, and must build a `cdylib`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wallex-projection-sdk = { path = "path/to/wallex/projections/sdk" }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the `.wasm` file is the
//! component. The same type is unit-testable on the build machine, without the host, by calling
//! `Currencies::handle(vec![Event::new(…)…])` and comparing the mutations.
//!
//! # Worlds
//!
//! [`export!`] picks the WIT world the component targets:
//!
//! - `export!(T)` (or `export!(T, world = "0.1.0")`): `wallex:projection@0.1.0` — `describe`
//!   and `handle`. [`Projection::stream_owners`] is not exported.
//! - `export!(T, world = "0.2.0")`: `wallex:projection@0.2.0` — the same, plus `stream-owners`
//!   from [`Projection::stream_owners`]. Use it only when every mutation of every owned table
//!   names its owner column with the stream's value (see the trait method).
//!
//! Each component carries exactly its world: a 0.1.0 one does not export `stream-owners`.
//!
//! # Layout
//!
//! - [`Projection`] and [`export!`] (this page): what an author implements and calls.
//! - [`event`]: the raw [`Event`] and its typed views — [`DomainEvent`] (one variant per known
//!   event type: [`WalletCreated`]) and [`Metadata`].
//! - [`schema`]: the declaration — [`ProjectionInfo`], [`Table`], [`Column`], [`ColumnType`],
//!   [`Index`], [`StreamOwner`].
//! - [`mutation`]: [`Mutation`] and its builders [`Insert`], [`Upsert`], [`Update`], [`Delete`].
//! - [`value`]: [`Value`] and the text-encoded kinds ([`value::Decimal`], [`value::Timestamp`],
//!   [`value::Uuid`], [`value::Json`]) that say which WIT case a string is written as.
//! - [`error`]: [`Error`] (message and event position), [`Result`], [`ForEvent`].
//! - [`log`]: the host's log.
//! - `__private` (hidden, `src/export.rs`): the wit-bindgen bindings of both worlds and the
//!   conversions the macro uses. Nothing in it is part of the API. The bindings are generated by
//!   `build.rs` from the repository's `wit/` (`../../wit`), with wit-bindgen's generator: the
//!   same code `wit_bindgen::generate!` would give, less the custom section it would put in this
//!   library (it would add the 0.2.0 world's `stream-owner` type to every component).
//!
//! Adding an event type later is not a breaking change: [`DomainEvent`] is `#[non_exhaustive]`,
//! and each type's data is its own struct, checked field by field when read.
//!
//! Everything an author needs is re-exported here, at the crate root, except the value kinds
//! (they would clash with [`ColumnType`]'s variants under `use ColumnType::*`), and
//! [`serde_json`] is re-exported for reading raw data.

#![deny(missing_docs)]

pub mod error;
pub mod event;
mod export;
pub mod log;
pub mod mutation;
pub mod schema;
pub mod value;

pub use error::{Error, ForEvent, Result};
pub use event::{DomainEvent, Event, LogOrder, Metadata, MoneyMoved, WalletCreated};
pub use mutation::{Change, Delete, Insert, Mutation, Update, Upsert};
pub use schema::{Column, ColumnType, Index, ProjectionInfo, StreamOwner, Table, ALL_EVENT_TYPES};
pub use serde_json;
pub use value::Value;

/// What [`export!`] uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::*;
}

/// A projection: implement it on a type of your own and pass that type to [`export!`].
///
/// The functions are called on a fresh instance for every call, so keep no state between
/// calls, and make `handle` deterministic (depend on the batch only: no clock, no randomness;
/// use [`Event::recorded_at`]) and idempotent under replay (upserts keyed by something from the
/// event, guards on anything that accumulates).
pub trait Projection {
    /// The declaration: name, schema version, subscriptions and tables. Called once, when the
    /// host loads the component.
    fn describe() -> ProjectionInfo;

    /// The mutations for one batch of subscribed events, in the order they must apply, or an
    /// [`Error`] that rejects the whole batch (give the failing event's position: every SDK
    /// decoding error does).
    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>>;

    /// Which rows each stream owns, one entry per table the projection can say this of
    /// (`wallex:projection@0.2.0` only: exported by `export!(T, world = "0.2.0")`, ignored
    /// otherwise). Called once, when the host loads the component.
    ///
    /// An entry `StreamOwner::new(table, column, prefix)` means that the rows of `table` whose
    /// `column` holds `v` belong to the stream `prefix + v`. Then `handle`, called with one
    /// stream's events alone, must give exactly that stream's rows of the table. A table that
    /// aggregates several streams cannot be owned: leave it out.
    ///
    /// The default is none.
    fn stream_owners() -> Vec<StreamOwner> {
        Vec::new()
    }
}

/// Exports a [`Projection`] as the component's implementation of a WIT world.
///
/// Call it once, at the root of the component's crate:
///
/// ```ignore
/// wallex_projection_sdk::export!(Ledger);                        // wallex:projection@0.1.0
/// wallex_projection_sdk::export!(Ledger, world = "0.1.0");       // the same
/// wallex_projection_sdk::export!(ReadModel, world = "0.2.0");    // + stream-owners
/// ```
///
/// It expands to the component's exported functions and the description of the world they
/// implement (and nothing else: the crate's namespace is untouched).
#[macro_export]
macro_rules! export {
    ($projection:ty, world = "0.1.0" $(,)?) => {
        const _: () = {
            $crate::__assert_projection!($projection);
            type __WallexProjectionExport = $crate::__private::Exported<$projection>;
            $crate::__private::v0_1_0::export_v0_1_0!(
                __WallexProjectionExport with_types_in $crate::__private::v0_1_0
            );
        };
    };
    ($projection:ty, world = "0.2.0" $(,)?) => {
        const _: () = {
            $crate::__assert_projection!($projection);
            type __WallexProjectionExport = $crate::__private::Exported<$projection>;
            $crate::__private::v0_2_0::export_v0_2_0!(
                __WallexProjectionExport with_types_in $crate::__private::v0_2_0
            );
        };
    };
    ($projection:ty, world = $other:literal $(,)?) => {
        ::core::compile_error!(::core::concat!(
            "wallex_projection_sdk::export!: unknown world version ",
            $other,
            "; this SDK supports \"0.1.0\" and \"0.2.0\""
        ));
    };
    ($projection:ty $(,)?) => {
        $crate::export!($projection, world = "0.1.0");
    };
}

/// Fails to compile, with a clear message, unless the type implements [`Projection`].
#[doc(hidden)]
#[macro_export]
macro_rules! __assert_projection {
    ($projection:ty) => {
        const _: fn() = || {
            fn is_a_projection<T: $crate::Projection>() {}
            is_a_projection::<$projection>();
        };
    };
}
