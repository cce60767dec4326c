//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/postgres` at compile time, and cargo does not otherwise watch that directory.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/postgres");
}
