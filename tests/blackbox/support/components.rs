//! Components built by `wallex-sandbox`'s build script (the bundled ones and the test
//! fixtures), and a projections directory holding some of them.

/// The bytes of a component built beside the bundled ones (`wallex_projection_*.wasm`).
pub fn wasm(file: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{file}", wallex_sandbox::bundled::WASM_DIR))
        .expect("component built by build.rs")
}

/// A temporary projections directory holding the given fixture files.
pub struct ComponentDir(pub std::path::PathBuf);

impl ComponentDir {
    /// A new directory under the system's temporary one, holding copies of `files`.
    pub fn new(files: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("wallex-fault-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        for file in files {
            std::fs::write(dir.join(file), wasm(file)).expect("copy component");
        }
        Self(dir)
    }

    /// The directory, as `WALLEX_PROJECTIONS_DIR` takes it.
    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ComponentDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
