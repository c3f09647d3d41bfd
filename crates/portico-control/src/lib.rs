//! The control plane: what the AWS APIs change while portico serves.
//!
//! A change made through an API (`aws lambda update-function-code`, …) is a set of
//! [`Edit`]s to the configuration's TOML. Laid over the file's table with every change
//! before it ([`Overlay`]), they give a new configuration, decoded and validated as the file
//! is (a refusal names the key paths, as `portico validate` does), then moved to as a
//! reload moves ([`Apply`]: everything made first, switched only if all of it could be),
//! then recorded in a [`Store`], so that `portico up` starts from the file plus the changes,
//! and `portico export` prints the two together. A reload of the file keeps the changes
//! over it.
//!
//! One change at a time: each sees the one before it.
//!
//! Layout:
//! - [`overlay`](crate::overlay): edits and how they are laid over the file;
//! - [`store`](crate::store): where they are kept;
//! - [`lambda`](crate::lambda): the Lambda API's operations as edits.

pub mod lambda;
pub mod overlay;
pub mod store;

pub use overlay::{Edit, Overlay};
pub use store::{DirStore, MemoryStore, Store, StoreError};

use portico_config::{Config, LoadError};
use portico_invoke::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

/// Moves what runs to a configuration, in place: made first, switched only if all of it
/// could be (the binary's reload).
pub trait Apply: Send + Sync {
    /// Moves to `config`; the reason when it could not (and nothing changed).
    fn apply(&self, config: Config) -> BoxFuture<'_, Result<(), String>>;
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The configuration it would make is not valid: the key paths and what is wrong.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// It is valid but could not be moved to (a port taken, a package that does not unzip…).
    #[error("{0}")]
    Refused(String),
    /// It was made but could not be recorded (it is undone).
    #[error("recording the change: {0}")]
    Store(#[from] StoreError),
    /// portico is still starting: nothing can be changed yet.
    #[error("portico is starting; try again")]
    Starting,
}

impl ChangeError {
    /// Whether the change itself was refused (invalid, or not possible on this node), as
    /// opposed to the control plane failing: an API answers the first as the caller's error.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::Refused(_))
    }

    /// What to tell the caller: every configuration error with its key path, or the reason.
    pub fn reason(&self) -> String {
        match self {
            Self::Invalid(LoadError::Invalid { errors, .. }) => errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        }
    }
}

/// The file and the changes over it.
struct State {
    /// The file's table as last read (at start or reload): changes are laid over it.
    file: toml::Table,
    overlay: Overlay,
}

/// The control plane of one node.
pub struct Control {
    /// The configuration file; `None` for the embedded demo configuration.
    file: Option<PathBuf>,
    /// How errors name the configuration.
    origin: String,
    store: Box<dyn Store>,
    state: tokio::sync::Mutex<State>,
    current: RwLock<Arc<Config>>,
    apply: OnceLock<Arc<dyn Apply>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("file", &self.file)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// The control plane of `file` (or, without one, of `default_text`, the embedded
    /// configuration), its recorded changes read from `store`: and the configuration they
    /// make together, to start with.
    pub fn open(
        file: Option<&Path>,
        default_text: &str,
        store: Box<dyn Store>,
    ) -> Result<(Self, Config), ChangeError> {
        let (table, origin) = match file {
            Some(path) => (
                portico_config::load_table(path)?,
                path.display().to_string(),
            ),
            None => (
                default_text.parse::<toml::Table>().map_err(|e| {
                    ChangeError::Refused(format!("the embedded configuration: {e}"))
                })?,
                "the embedded configuration".to_owned(),
            ),
        };
        let overlay = store.load()?;
        let config = decode(&table, &overlay, &origin)?;
        if !overlay.edits.is_empty() {
            tracing::info!(
                changes = overlay.edits.len(),
                store = store.describe(),
                "changes made through the APIs are laid over the file"
            );
        }
        let control = Self {
            file: file.map(Path::to_path_buf),
            origin,
            store,
            state: tokio::sync::Mutex::new(State {
                file: table,
                overlay,
            }),
            current: RwLock::new(Arc::new(config.clone())),
            apply: OnceLock::new(),
        };
        Ok((control, config))
    }

    /// What moves the node once it runs; changes are refused as [`ChangeError::Starting`]
    /// until it is set.
    pub fn set_apply(&self, apply: Arc<dyn Apply>) {
        let _ = self.apply.set(apply);
    }

    /// The configuration that runs now.
    pub fn config(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where changes are kept.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Reads the file again and moves to it, with the changes over it (SIGHUP).
    pub async fn reload(&self) -> Result<Arc<Config>, ChangeError> {
        let Some(path) = &self.file else {
            return Err(ChangeError::Refused(
                "the embedded configuration has no file to read again".into(),
            ));
        };
        let mut state = self.state.lock().await;
        // An empty file is one being written (truncated, not yet filled) far more often than
        // a node meant to serve nothing: taken, it would stop everything.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(ChangeError::Refused(format!(
                "{} is empty (being written?); write it whole, then send SIGHUP",
                path.display()
            )));
        }
        let table = portico_config::load_table(path)?;
        let config = decode(&table, &state.overlay, &self.origin)?;
        self.move_to(config.clone()).await?;
        state.file = table;
        Ok(self.set_current(config))
    }

    /// Makes the change `edits`: moves to the configuration it makes and records it.
    pub async fn change(&self, edits: Vec<Edit>) -> Result<Arc<Config>, ChangeError> {
        let mut state = self.state.lock().await;
        let overlay = state.overlay.with(edits);
        let config = decode(&state.file, &overlay, &self.origin)?;
        let before = self.config();
        self.move_to(config.clone()).await?;
        if let Err(error) = self.store.save(&overlay) {
            // Not kept, so not made: back to what ran.
            tracing::error!(%error, "a change could not be recorded; undoing it");
            if let Err(undo) = self.move_to(Config::clone(&before)).await {
                tracing::error!(error = %undo, "undoing an unrecorded change failed");
            }
            return Err(error.into());
        }
        state.overlay = overlay;
        Ok(self.set_current(config))
    }

    /// The configuration's TOML as it runs: the file with the changes over it.
    pub async fn table(&self) -> toml::Table {
        let state = self.state.lock().await;
        let mut table = state.file.clone();
        state.overlay.apply(&mut table);
        table
    }

    /// The directory relative paths are resolved against: the configuration file's.
    pub fn base(&self) -> PathBuf {
        self.file
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    async fn move_to(&self, config: Config) -> Result<(), ChangeError> {
        let apply = self.apply.get().ok_or(ChangeError::Starting)?;
        apply.apply(config).await.map_err(ChangeError::Refused)
    }

    fn set_current(&self, config: Config) -> Arc<Config> {
        let config = Arc::new(config);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config.clone();
        config
    }
}

/// The configuration `file` and `overlay` make together.
fn decode(file: &toml::Table, overlay: &Overlay, origin: &str) -> Result<Config, LoadError> {
    let mut table = file.clone();
    overlay.apply(&mut table);
    portico_config::from_table(table, origin)
}

/// The file and its recorded changes as TOML, without starting anything (`portico export`
/// of a node that is not running).
pub fn export(file: &Path, store: &dyn Store) -> Result<String, ChangeError> {
    let mut table = portico_config::load_table(file)?;
    store.load()?.apply(&mut table);
    // Checked as `portico up` would check it.
    portico_config::from_table(table.clone(), &file.display().to_string())?;
    toml::to_string_pretty(&table).map_err(|e| ChangeError::Refused(e.to_string()))
}
