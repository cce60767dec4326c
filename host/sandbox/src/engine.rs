//! The WebAssembly side of projections: one wasmtime [`Engine`], components compiled once, a
//! pre-linked `ProjectionPre` per component and a fresh [`Store`] for every call.
//!
//! Why it exists: projection code is written by other teams and must not be able to hurt the
//! host. Each call runs in a new store (no state survives a batch, so replays are deterministic)
//! with a memory cap, an epoch deadline, no filesystem, network, environment or arguments, and
//! bounded in-memory stdout/stderr that end up in the host log.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::guest_text::{clip, MAX_ERROR_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_BYTES};

// Generated from `wit/projection.wit` by wasmtime's `bindgen!`; the contract is documented there
// (and in `wit/README.md`), and the generated `Host` trait and `add_to_linker` carry no docs.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "projection",
        path: "../../wit",
        // The host `log` import may trap: a guest flooding the log fails its batch.
        imports: { default: trappable },
    });
}

pub use bindings::wallex::projection::types as wit;
use bindings::{Projection, ProjectionPre};

/// The export a component of the `wallex:projection@0.2.0` world adds to the 0.1.0 world: which
/// column of each table holds the stream that owns its rows. Components of 0.1.0 lack it and
/// work as before (they cannot be repaired one stream at a time).
pub const STREAM_OWNERS_EXPORT: &str = "stream-owners";
/// Most `stream-owners` entries the host reads (one per table at most: the schema's
/// `MAX_TABLES` is checked to be this, since the sandbox does not know the schema).
pub const MAX_STREAM_OWNERS: usize = 32;

/// One entry of `stream-owners` (`wit/v0.2.0/projection.wit`): the rows of `table` whose
/// `column` holds `v` belong to the stream `stream-prefix ++ v`.
#[derive(
    Debug, Clone, PartialEq, Eq, wasmtime::component::ComponentType, wasmtime::component::Lift,
)]
#[component(record)]
pub struct StreamOwner {
    /// A declared table.
    pub table: String,
    /// Its column holding the owning stream's id, without `stream_prefix`.
    pub column: String,
    /// What precedes the column's value in the stream id (`wallet-` for `wallet-{id}`).
    #[component(name = "stream-prefix")]
    pub stream_prefix: String,
}

/// How often the engine's epoch advances; the unit of [`RuntimeLimits::call_timeout`].
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default cap on a component's linear memory per call.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 64 << 20;
/// Default highest memory cap any projection may be given (the engine's ceiling).
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 256 << 20;
/// Default wall-clock budget of one `describe` or `handle` call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Default WebAssembly stack of a call (deeper recursion traps).
pub const DEFAULT_MAX_STACK_BYTES: usize = 512 << 10;
/// Default most mutations one `handle` call may return.
pub const DEFAULT_MAX_MUTATIONS: usize = 100_000;
/// Default most bytes (names and values) of the mutations of one `handle` call.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 << 20;
/// Default host `log` calls honoured per call; one more fails the batch.
pub const DEFAULT_LOG_LINES: u32 = 1_000;
/// Default bytes of host `log` messages per call; more fails the batch.
pub const DEFAULT_LOG_BYTES: usize = 1 << 20;
/// Tables (and their elements) a component instance may create per call.
pub const MAX_TABLES_PER_CALL: usize = 16;
/// Elements each of those tables may hold.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Bytes of stdout and of stderr kept per call; a guest writing more traps.
pub const STDIO_CAPACITY_BYTES: usize = 64 << 10;
/// Component instances that can exist at once in a process (one per running call: a worker's
/// batch, a load's `describe`). Instances come from a pre-allocated pool, which makes the fresh
/// instance of every batch cheap.
pub const POOL_COMPONENT_INSTANCES: u32 = 32;
/// Linear memories (and tables) of one component: a Rust component has one of each in its main
/// module; the rest is headroom.
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// Linear memory each pool slot keeps mapped between instances (fewer page faults per batch).
pub const POOL_KEEP_RESIDENT_BYTES: usize = 8 << 20;
/// `tracing` target of everything a guest logs or prints.
pub const GUEST_LOG_TARGET: &str = "wallex::projection::guest";
/// Core module instances a component may create per call (a Rust component has a handful: its
/// own module plus the WASI adapter's).
pub const MAX_CORE_INSTANCES: usize = 32;
/// Longest message the host `log` import and forwarded stdout/stderr lines keep (longer ones are
/// cut with a marker; control characters are escaped).
pub const LOG_MESSAGE_MAX_BYTES: usize = 4 << 10;

/// Resource limits of a projection's guest calls (defaults, overridden per projection and per
/// deploy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Linear memory per call (at most the engine's [`EngineLimits::max_memory_bytes`]).
    pub memory_bytes: usize,
    /// Wall clock per call (epoch interruption).
    pub call_timeout: Duration,
    /// Fuel per call, for a deterministic budget; `None`: not metered (needs
    /// [`EngineLimits::fuel`] to take effect).
    pub fuel: Option<u64>,
    /// Mutations one `handle` call may return.
    pub max_mutations: usize,
    /// Bytes of the mutations of one `handle` call.
    pub max_batch_bytes: usize,
    /// Host `log` calls per call.
    pub log_lines: u32,
    /// Bytes of host `log` messages per call.
    pub log_bytes: usize,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            fuel: None,
            max_mutations: DEFAULT_MAX_MUTATIONS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            log_lines: DEFAULT_LOG_LINES,
            log_bytes: DEFAULT_LOG_BYTES,
        }
    }
}

/// Limits fixed for the whole engine (every projection of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Largest linear memory any call may have (the pooling allocator's slot size).
    pub max_memory_bytes: usize,
    /// WebAssembly stack per call.
    pub max_stack_bytes: usize,
    /// Whether fuel is metered (a small cost on every call when on).
    pub fuel: bool,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_stack_bytes: DEFAULT_MAX_STACK_BYTES,
            fuel: false,
        }
    }
}

/// A trap's one-line reason (the trap code, or the host's error), without the wasm backtrace,
/// bounded (a host error can quote the guest).
fn concise(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => clip(&error.root_cause().to_string(), MAX_MESSAGE_BYTES),
    }
}

/// A load error's text, bounded: wasmtime's messages quote names from the binary.
fn bounded(error: &wasmtime::Error) -> String {
    clip(&format!("{error:#}"), MAX_ERROR_BYTES)
}

/// Errors of loading or calling a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The engine, its linker or its epoch thread could not be set up.
    #[error("could not set up the WebAssembly engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The bytes (named by their origin) do not compile as a component.
    #[error("{} is not a valid WebAssembly component: {}", .0, bounded(.1))]
    Invalid(String, wasmtime::Error),
    /// The component (named by its origin) does not import and export what the world says.
    #[error("{} does not implement the wallex:projection world: {}", .0, bounded(.1))]
    World(String, wasmtime::Error),
    /// A call hit one of its limits: call timeout, stack, fuel or memory.
    #[error("projection {projection} {limit} in {function}")]
    Limit {
        /// The projection's declared name (its origin until `describe` returned).
        projection: String,
        /// The call: `describe` or `handle`.
        function: &'static str,
        /// Which limit, in words (e.g. `exceeded its call timeout of 2000 ms`).
        limit: String,
    },
    /// A call failed for another reason: a trap (a panic, `unreachable`) or a host error such
    /// as the log limit.
    #[error("projection {projection} trapped in {function}: {}", concise(error))]
    Trap {
        /// The projection's declared name (its origin until `describe` returned).
        projection: String,
        /// The call: `describe` or `handle`.
        function: &'static str,
        /// wasmtime's error, with the trap.
        error: wasmtime::Error,
    },
    /// `handle` returned a `projection-error`: the component refused the batch.
    #[error("projection {projection} rejected the batch{}: {message}", position.map(|p| format!(" at position {p}")).unwrap_or_default())]
    Rejected {
        /// The projection's declared name.
        projection: String,
        /// The component's own text, clipped to [`MAX_MESSAGE_BYTES`].
        message: String,
        /// Global position of the event it could not handle, if it said.
        position: Option<i64>,
    },
    /// The call gave no result: its thread or task was lost, or the component has no
    /// description.
    #[error("the projection call was cancelled: {0}")]
    Join(String),
}

/// The process's WebAssembly runtime: one engine and linker shared by every component.
#[derive(Clone)]
pub struct ProjectionRuntime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    engine_limits: EngineLimits,
    /// Limits of `describe` calls at load.
    limits: RuntimeLimits,
}

impl std::fmt::Debug for ProjectionRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRuntime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ProjectionRuntime {
    /// Creates the engine and starts its epoch ticker (a thread that ends with the engine).
    pub fn new(limits: RuntimeLimits) -> Result<Self, ComponentError> {
        Self::with_engine_limits(
            limits,
            EngineLimits {
                max_memory_bytes: limits.memory_bytes,
                fuel: limits.fuel.is_some(),
                ..EngineLimits::default()
            },
        )
    }

    /// Like [`ProjectionRuntime::new`] with explicit engine-wide limits.
    pub fn with_engine_limits(
        limits: RuntimeLimits,
        engine_limits: EngineLimits,
    ) -> Result<Self, ComponentError> {
        let limits = RuntimeLimits {
            memory_bytes: limits.memory_bytes.min(engine_limits.max_memory_bytes),
            ..limits
        };
        let mut pooling = PoolingAllocationConfig::new();
        let core_instances = POOL_COMPONENT_INSTANCES * MAX_CORE_INSTANCES as u32;
        pooling
            .total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(core_instances)
            .total_memories(POOL_COMPONENT_INSTANCES * MAX_MEMORIES_PER_COMPONENT)
            .total_tables(POOL_COMPONENT_INSTANCES * MAX_MEMORIES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_core_instances_per_component(MAX_CORE_INSTANCES as u32)
            .max_memory_size(engine_limits.max_memory_bytes)
            .linear_memory_keep_resident(POOL_KEEP_RESIDENT_BYTES);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(engine_limits.max_stack_bytes)
            .consume_fuel(engine_limits.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(ComponentError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(ComponentError::Engine)?;
        Projection::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(ComponentError::Engine)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .map_err(|e| ComponentError::Engine(e.into()))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            engine_limits,
            limits,
        })
    }

    /// The engine-wide limits.
    pub fn engine_limits(&self) -> EngineLimits {
        self.engine_limits
    }

    /// Compiles a component, checks its imports and exports against the `projection` world and
    /// asks it to describe itself. `origin` names it in errors (a file name).
    pub fn load(&self, origin: &str, wasm: &[u8]) -> Result<LoadedComponent, ComponentError> {
        let compiled = self.compile(origin, wasm)?;
        self.link(origin, compiled)
    }

    /// The key of this engine's compiled artifacts: hex SHA-256 of wasmtime's
    /// precompile-compatibility hash (its version and every setting that changes the code). An
    /// artifact stored under another key may not be loaded by this engine.
    pub fn engine_key(&self) -> String {
        use std::hash::Hash;
        let mut hasher = Sha256Hasher(Sha256::new());
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hex::encode(hasher.0.finalize())
    }

    /// Compiles a component's bytes with Cranelift (the expensive step: seconds for a large
    /// component). `origin` names it in errors.
    pub fn compile(&self, origin: &str, wasm: &[u8]) -> Result<Compiled, ComponentError> {
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| ComponentError::Invalid(origin.to_owned(), e))?;
        Ok(Compiled { component })
    }

    /// Loads an artifact that [`Compiled::serialize`] produced with an engine of the same
    /// [`ProjectionRuntime::engine_key`], without compiling.
    ///
    /// The artifact is native code: only artifacts this host wrote itself (the
    /// `projection_artifacts` table, next to the component bytes they were compiled from) may
    /// be given here. wasmtime checks the artifact's header and engine compatibility and refuses
    /// a mismatch; it cannot check that the code is what the component compiles to.
    pub fn deserialize(&self, origin: &str, artifact: &[u8]) -> Result<Compiled, ComponentError> {
        // SAFETY: wasmtime requires the bytes to come from `Component::serialize` of a
        // compatible engine and to be unmodified. The only caller passes an artifact this host
        // stored under the component's SHA-256 and this engine's key (see above); an
        // incompatible one is refused by wasmtime's own header checks.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(|e| ComponentError::Invalid(origin.to_owned(), e))?;
        Ok(Compiled { component })
    }

    /// Links a compiled component against the `projection` world and asks it to describe
    /// itself (and, for `wallex:projection@0.2.0`, which streams own its rows).
    pub fn link(
        &self,
        origin: &str,
        compiled: Compiled,
    ) -> Result<LoadedComponent, ComponentError> {
        let component = compiled.component;
        let world = |e| ComponentError::World(origin.to_owned(), e);
        let instance_pre = self.linker.instantiate_pre(&component).map_err(world)?;
        let pre = ProjectionPre::new(instance_pre).map_err(world)?;
        let image = component.image_range();
        let compiled_bytes = (image.end as usize).saturating_sub(image.start as usize);
        let mut loaded = LoadedComponent {
            origin: origin.to_owned(),
            name: origin.to_owned(),
            pre,
            engine: self.engine.clone(),
            engine_limits: self.engine_limits,
            info: None,
            stream_owners: None,
            compiled_bytes,
        };
        let info = loaded.call("describe", &self.limits, |projection, _, store| {
            projection.call_describe(store)
        })?;
        // Until the declaration is validated the name is only text for messages: bounded.
        loaded.name = clip(&info.name, MAX_NAME_BYTES);
        tracing::debug!(origin = %loaded.origin, projection = %loaded.name, "component described");
        loaded.info = Some(info);
        let exports_owners = component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| name == STREAM_OWNERS_EXPORT);
        if exports_owners {
            let owners =
                loaded.call(STREAM_OWNERS_EXPORT, &self.limits, |_, instance, store| {
                    let func = instance.get_typed_func::<(), (Vec<StreamOwner>,)>(
                        &mut *store,
                        STREAM_OWNERS_EXPORT,
                    )?;
                    let (owners,) = func.call(&mut *store, ())?;
                    Ok(owners)
                })?;
            if owners.len() > MAX_STREAM_OWNERS {
                return Err(ComponentError::World(
                    origin.to_owned(),
                    wasmtime::Error::msg(format!(
                        "{STREAM_OWNERS_EXPORT} returned {} entries (at most {MAX_STREAM_OWNERS})",
                        owners.len()
                    )),
                ));
            }
            loaded.stream_owners = Some(owners);
        }
        Ok(loaded)
    }
}

/// A component compiled by this process's engine, not yet linked or described.
pub struct Compiled {
    component: Component,
}

impl Compiled {
    /// The artifact to store so that another load skips compiling (see
    /// [`ProjectionRuntime::deserialize`]).
    pub fn serialize(&self) -> Result<Vec<u8>, ComponentError> {
        self.component.serialize().map_err(ComponentError::Engine)
    }
}

/// Feeds a [`std::hash::Hash`] into SHA-256, for a key that is the same in every process with
/// the same engine settings (std's hashers promise no stability).
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Only `write` is used: the key is the finalized digest, not this value.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A component (layer 1 after the `\0asm` preamble).
    Component,
    /// A core WebAssembly module (version 1, layer 0).
    CoreModule,
    /// Not WebAssembly: no `\0asm` preamble.
    NotWasm,
}

/// Looks at the preamble: `\0asm`, then version 1 layer 0 (a core module) or layer 1 (a
/// component). Cheap, and gives uploads a precise reason before anything is compiled.
pub fn binary_kind(bytes: &[u8]) -> BinaryKind {
    match bytes {
        [0x00, 0x61, 0x73, 0x6d, _, _, 0x01, 0x00, ..] => BinaryKind::Component,
        [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ..] => BinaryKind::CoreModule,
        _ => BinaryKind::NotWasm,
    }
}

/// A compiled, linked component, ready to be instantiated for each call.
pub struct LoadedComponent {
    origin: String,
    name: String,
    pre: ProjectionPre<GuestState>,
    engine: Engine,
    engine_limits: EngineLimits,
    /// What `describe` returned when the component was loaded.
    info: Option<wit::ProjectionInfo>,
    /// What `stream-owners` returned (`None`: a 0.1.0 component, which does not export it).
    stream_owners: Option<Vec<StreamOwner>>,
    /// Bytes of the compiled code and data this component keeps mapped (its share of the
    /// process's memory, apart from the linear memory of running calls).
    compiled_bytes: usize,
}

impl LoadedComponent {
    /// What the component declared when it was loaded.
    pub fn info(&self) -> Option<&wit::ProjectionInfo> {
        self.info.as_ref()
    }

    /// Which column of each table holds the owning stream, if the component says
    /// (`wallex:projection@0.2.0`).
    pub fn stream_owners(&self) -> Option<&[StreamOwner]> {
        self.stream_owners.as_deref()
    }

    /// Bytes of compiled code and data the component keeps mapped while it is loaded.
    pub fn compiled_bytes(&self) -> usize {
        self.compiled_bytes
    }

    /// Where the component came from (file name or `bundled:<name>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Calls `describe` again (cheap; used by load and tests).
    pub fn describe(&self) -> Result<wit::ProjectionInfo, ComponentError> {
        self.call(
            "describe",
            &RuntimeLimits::default(),
            |projection, _, store| projection.call_describe(store),
        )
    }

    /// Calls `handle` with a batch in a fresh store under `limits`.
    pub fn handle(
        &self,
        batch: &[wit::Event],
        limits: &RuntimeLimits,
    ) -> Result<Vec<wit::Mutation>, ComponentError> {
        match self.call("handle", limits, |projection, _, store| {
            projection.call_handle(store, batch)
        })? {
            Ok(mutations) => Ok(mutations),
            Err(error) => Err(ComponentError::Rejected {
                projection: self.name.clone(),
                message: clip(&error.message, MAX_MESSAGE_BYTES),
                position: error.global_position,
            }),
        }
    }

    fn call<R>(
        &self,
        function: &'static str,
        limits: &RuntimeLimits,
        f: impl FnOnce(
            &Projection,
            &wasmtime::component::Instance,
            &mut Store<GuestState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, ComponentError> {
        let _span = tracing::debug_span!("guest_call", projection = %self.name, function).entered();
        let memory_limit = limits.memory_bytes.min(self.engine_limits.max_memory_bytes);
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY_BYTES);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY_BYTES);
        // Nothing is inherited: no preopened directories, environment, arguments or sockets.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limits: GuestLimiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(memory_limit)
                    .instances(MAX_CORE_INSTANCES)
                    .tables(MAX_TABLES_PER_CALL)
                    .table_elements(MAX_TABLE_ELEMENTS)
                    .build(),
                memory_limit,
                memory_refused: false,
            },
            projection: self.name.clone(),
            log_lines: 0,
            log_bytes: 0,
            max_log_lines: limits.log_lines,
            max_log_bytes: limits.log_bytes,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let ticks = (limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        if self.engine_limits.fuel {
            // Without a budget, metering still runs: give it the most fuel there is.
            let fuel = limits.fuel.unwrap_or(u64::MAX);
            store.set_fuel(fuel).map_err(ComponentError::Engine)?;
        }
        let result = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .and_then(|instance| {
                let projection = Projection::new(&mut store, &instance)?;
                f(&projection, &instance, &mut store)
            });
        let memory_refused = store.data().limits.memory_refused;
        drop(store);
        let result = result.map_err(|error| {
            let limit = match error.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => Some(format!(
                    "exceeded its call timeout of {} ms",
                    limits.call_timeout.as_millis()
                )),
                Some(wasmtime::Trap::StackOverflow) => Some(format!(
                    "overflowed its stack of {} KiB",
                    self.engine_limits.max_stack_bytes >> 10
                )),
                Some(wasmtime::Trap::OutOfFuel) => Some(format!(
                    "ran out of fuel ({} units)",
                    limits.fuel.unwrap_or(u64::MAX)
                )),
                _ if memory_refused => Some(format!(
                    "exceeded its memory limit of {} MiB",
                    memory_limit >> 20
                )),
                _ => None,
            };
            match limit {
                Some(limit) => ComponentError::Limit {
                    projection: self.name.clone(),
                    function,
                    limit,
                },
                None => ComponentError::Trap {
                    projection: self.name.clone(),
                    function,
                    error,
                },
            }
        });
        forward_stdio(&self.name, "stdout", &stdout);
        forward_stdio(&self.name, "stderr", &stderr);
        result
    }
}

fn forward_stdio(projection: &str, stream: &'static str, pipe: &MemoryOutputPipe) {
    let bytes = pipe.contents();
    if bytes.is_empty() {
        return;
    }
    for line in String::from_utf8_lossy(&bytes).lines() {
        let line = clip(line, LOG_MESSAGE_MAX_BYTES);
        tracing::info!(target: GUEST_LOG_TARGET, projection, stream, "{line}");
    }
}

/// The store's [`ResourceLimiter`]: wasmtime's [`StoreLimits`], remembering whether a memory
/// growth was refused so the trap that follows can be reported as what it is.
struct GuestLimiter {
    inner: StoreLimits,
    memory_limit: usize,
    memory_refused: bool,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed =
            desired <= self.memory_limit && self.inner.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_refused = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Per-call state of a guest.
struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: GuestLimiter,
    projection: String,
    log_lines: u32,
    log_bytes: usize,
    max_log_lines: u32,
    max_log_bytes: usize,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for GuestState {}

impl bindings::wallex::projection::host::Host for GuestState {
    fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
        self.log_lines = self.log_lines.saturating_add(1);
        self.log_bytes = self.log_bytes.saturating_add(message.len());
        if self.log_lines > self.max_log_lines || self.log_bytes > self.max_log_bytes {
            return Err(wasmtime::Error::msg(format!(
                "log limit exceeded: more than {} lines or {} bytes in one call",
                self.max_log_lines, self.max_log_bytes
            )));
        }
        // One line, bounded: control characters (line breaks included) are escaped.
        let message = clip(&message, LOG_MESSAGE_MAX_BYTES);
        let projection = self.projection.as_str();
        match level {
            wit::LogLevel::Trace => {
                tracing::trace!(target: GUEST_LOG_TARGET, projection, "{message}")
            }
            wit::LogLevel::Debug => {
                tracing::debug!(target: GUEST_LOG_TARGET, projection, "{message}")
            }
            wit::LogLevel::Info => {
                tracing::info!(target: GUEST_LOG_TARGET, projection, "{message}")
            }
            wit::LogLevel::Warn => {
                tracing::warn!(target: GUEST_LOG_TARGET, projection, "{message}")
            }
            wit::LogLevel::Error => {
                tracing::error!(target: GUEST_LOG_TARGET, projection, "{message}")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(limits: RuntimeLimits) -> LoadedComponent {
        let bytes = std::fs::read(format!(
            "{}/wallex_projection_bad_mutation.wasm",
            crate::bundled::WASM_DIR
        ))
        .expect("fixture built by build.rs");
        ProjectionRuntime::new(limits)
            .expect("runtime")
            .load("fixture", &bytes)
            .expect("load")
    }

    fn event(wallet: &str) -> wit::Event {
        wit::Event {
            global_position: 1,
            order: wit::LogOrder {
                xact_id: 1,
                position: 1,
            },
            event_id: "00000000-0000-0000-0000-000000000001".into(),
            stream_id: format!("wallet-{wallet}"),
            stream_version: 1,
            event_type: "WalletCreated".into(),
            data: "{}".into(),
            metadata: "{}".into(),
            recorded_at: "2026-11-26T12:00:00Z".into(),
        }
    }

    #[test]
    fn the_preamble_tells_components_from_modules() {
        assert_eq!(binary_kind(b"\0asm\x0d\0\x01\0rest"), BinaryKind::Component);
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0"), BinaryKind::CoreModule);
        assert_eq!(binary_kind(b"\0asm"), BinaryKind::NotWasm);
        assert_eq!(binary_kind(b"MZ\x90\0\x03\0\0\0"), BinaryKind::NotWasm);
        let bundled = crate::bundled::BUNDLED;
        assert!(bundled
            .iter()
            .all(|(_, bytes)| binary_kind(bytes) == BinaryKind::Component));
    }

    #[test]
    fn bundled_components_describe_themselves() {
        let runtime = ProjectionRuntime::new(RuntimeLimits::default()).expect("runtime");
        let names: Vec<String> = crate::bundled::BUNDLED
            .iter()
            .map(|(origin, bytes)| runtime.load(origin, bytes).expect("load").name)
            .collect();
        assert_eq!(names, ["read-model", "ledger", "audit"]);
    }

    #[test]
    fn guest_sees_no_environment_arguments_or_files() {
        let component = fixture(RuntimeLimits::default());
        match component.handle(&[event("probe")], &RuntimeLimits::default()) {
            Err(ComponentError::Rejected { message, .. }) => {
                assert_eq!(message, "env=0 args=0 fs=false")
            }
            other => panic!("expected the probe's report, got {other:?}"),
        }
    }

    #[test]
    fn a_guest_that_never_returns_is_interrupted() {
        let component = fixture(RuntimeLimits {
            call_timeout: Duration::from_millis(200),
            ..RuntimeLimits::default()
        });
        let started = std::time::Instant::now();
        let result = component.handle(
            &[event("spin")],
            &RuntimeLimits {
                call_timeout: Duration::from_millis(200),
                ..RuntimeLimits::default()
            },
        );
        match &result {
            Err(error @ ComponentError::Limit { .. }) => {
                assert!(
                    error.to_string().contains("call timeout of 200 ms"),
                    "{error}"
                )
            }
            other => panic!("expected the timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // The next batch gets a fresh instance and works.
        assert_eq!(
            component
                .handle(&[event("ok")], &RuntimeLimits::default())
                .expect("fresh store")
                .len(),
            1
        );
    }

    #[test]
    fn fuel_gives_a_deterministic_budget() {
        let bytes = std::fs::read(format!(
            "{}/wallex_projection_bad_mutation.wasm",
            crate::bundled::WASM_DIR
        ))
        .expect("fixture built by build.rs");
        let limits = RuntimeLimits {
            fuel: Some(5_000_000),
            ..RuntimeLimits::default()
        };
        let runtime = ProjectionRuntime::with_engine_limits(
            limits,
            EngineLimits {
                fuel: true,
                ..EngineLimits::default()
            },
        )
        .expect("runtime");
        let component = runtime.load("fixture", &bytes).expect("load");
        match component.handle(&[event("spin")], &limits) {
            Err(error @ ComponentError::Limit { .. }) => {
                assert!(
                    error
                        .to_string()
                        .contains("ran out of fuel (5000000 units)"),
                    "{error}"
                )
            }
            other => panic!("expected fuel exhaustion, got {other:?}"),
        }
        // A normal batch fits in the budget.
        assert_eq!(
            component
                .handle(&[event("ok")], &limits)
                .expect("within budget")
                .len(),
            1
        );
    }

    #[test]
    fn the_engine_stack_limit_stops_deep_recursion() {
        let bytes = std::fs::read(format!(
            "{}/wallex_projection_hostile_recursion.wasm",
            crate::bundled::WASM_DIR
        ))
        .expect("fixture built by build.rs");
        let runtime = ProjectionRuntime::with_engine_limits(
            RuntimeLimits::default(),
            EngineLimits {
                max_stack_bytes: 64 << 10,
                ..EngineLimits::default()
            },
        )
        .expect("runtime");
        let component = runtime.load("recursion", &bytes).expect("load");
        let poison = wit::Event {
            data: r#"{"walletId":"poison-deep"}"#.into(),
            ..event("deep")
        };
        match component.handle(&[poison], &RuntimeLimits::default()) {
            Err(error @ ComponentError::Limit { .. }) => {
                assert!(
                    error.to_string().contains("overflowed its stack of 64 KiB"),
                    "{error}"
                )
            }
            other => panic!("expected a stack overflow, got {other:?}"),
        }
    }

    #[test]
    fn memory_and_output_are_bounded() {
        let component = fixture(RuntimeLimits {
            memory_bytes: 64 << 20,
            ..RuntimeLimits::default()
        });
        let hog = component.handle(
            &[event("hog")],
            &RuntimeLimits {
                memory_bytes: 64 << 20,
                ..RuntimeLimits::default()
            },
        );
        match &hog {
            Err(error @ ComponentError::Limit { .. }) => {
                assert!(
                    error.to_string().contains("memory limit of 64 MiB"),
                    "{error}"
                )
            }
            other => panic!("expected the memory limit, got {other:?}"),
        }
        let shout = component.handle(&[event("shout")], &RuntimeLimits::default());
        assert!(
            matches!(shout, Err(ComponentError::Trap { .. })),
            "{shout:?}"
        );
    }
}
